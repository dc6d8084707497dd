"""The Makefile installs the environment once: its stamp follows the dependency list, not pyproject.toml's mtime."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def planned(directory) -> str:
    """What `make env` would run (a dry run: nothing is installed)."""
    out = subprocess.run(["make", "-n", "env"], cwd=directory, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_installed_environment_is_not_rebuilt_on_touch_but_is_on_new_dependencies(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    stamp = re.search(r"touch (\S+)", planned(tmp_path)).group(1)  # a fresh clone: everything gets installed
    assert re.fullmatch(r"\.venv/\.installed-[0-9a-f]{16}", stamp)
    (tmp_path / stamp).parent.mkdir()
    (tmp_path / stamp).touch()
    assert "pip install" not in planned(tmp_path)

    later = (tmp_path / stamp).stat().st_mtime + 100
    os.utime(tmp_path / "pyproject.toml", (later, later))  # touched (or edited outside the dependency lists)
    pyproject = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('version = "0.1.0"', 'version = "0.1.1"'))
    assert "pip install" not in planned(tmp_path)

    (tmp_path / "pyproject.toml").write_text(pyproject.replace('"numpy>=1.26",', '"numpy>=1.26",\n    "rich>=13",'))
    assert "pip install" in planned(tmp_path)  # a new dependency: installed once more, into the same .venv
    assert "pip install" in subprocess.run(["make", "-n", "env", "TORCH_SPEC=torch==2.12.0"], cwd=tmp_path,
                                           capture_output=True, text=True).stdout
