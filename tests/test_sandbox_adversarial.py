"""Programs written to escape lopa.sandbox: each side effect is checked from the host, and none passes.

Every attack runs twice: through the plain API (operating system isolation plus the in-process guard), and
with the guard switched off (`_in_process_guard=False`), so that bwrap alone must contain it. Each program
ends by asserting that its attack worked, so "not passed" also means it failed from the inside. A third
group tries to restore the unguarded originals with the guard on (re-imports, ctypes, class hierarchy,
closures) or to forge the pass token (frames, gc, signal handlers, /proc/self/mem).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lopa.sandbox import run_programs
from tests.helpers import accepted_connection

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
)
MARK = "lopa-adversarial-" + secrets.token_hex(6)  # in the command line of any process an attack leaves


@pytest.fixture(scope="module")
def world():
    """Host-side victims: a directory visible inside the sandbox (under the interpreter's read-only prefix,
    mode 0777 so that only the mount stops writes), a file there, host listeners and a secret variable."""
    visible = Path(tempfile.mkdtemp(prefix=".lopa-victim-", dir=sys.prefix))
    hidden = Path(tempfile.mkdtemp(prefix="lopa-victim-"))
    for directory in (visible, hidden):
        directory.chmod(0o777)
        (directory / "victim.txt").write_text("original")
        (directory / "victim.txt").chmod(0o666)
        os.utime(directory / "victim.txt", (1_000_000_000, 1_000_000_000))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(visible / "host.sock"))
    unix.listen()
    unix.setblocking(False)
    os.environ["LOPA_ADVERSARIAL_SECRET"] = secret = secrets.token_hex(16)
    sleeper = subprocess.Popen(["sleep", "300"])
    yield {
        "visible": visible,
        "hidden": hidden,
        "tcp": tcp,
        "unix": unix,
        "secret": secret,
        "sleeper": sleeper,
    }
    sleeper.kill()
    tcp.close()
    unix.close()
    shutil.rmtree(visible)
    shutil.rmtree(hidden)


def attacks(world) -> dict[str, str]:
    v, h, port = world["visible"], world["hidden"], world["tcp"].getsockname()[1]
    targets = [str(v / "victim.txt"), str(h / "victim.txt")]
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(300)  # {MARK}']"
    return {
        "kill the parent": "import os\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, 9)\n"
        "    except OSError:\n        pass\nassert False, 'still here'\n",
        "setsid child outlives": f"import subprocess, sys\nsubprocess.Popen({sleeper}, start_new_session=True)\n"
        "assert False\n",
        "double fork outlives": f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, {sleeper})\n    os._exit(0)\nassert False\n",
        "shell command": f"import os\nos.system('touch {v}/shell {h}/shell')\nassert os.path.exists('{v}/shell')\n",
        "write with io.FileIO": "import io\n"
        + "".join(f"io.FileIO({t!r}, 'w').write(b'x')\n" for t in targets),
        "write with open": "".join(f"open({t!r}, 'w').write('x')\n" for t in targets),
        "create outside": f"open('{v}/created', 'w').close()\nopen('{h}/created', 'w').close()\n",
        "hard link": f"import os\nos.link({targets[0]!r}, '/tmp/link')\nopen('/tmp/link', 'w').write('x')\n",
        "delete": "import os\n" + "".join(f"os.remove({t!r})\n" for t in targets),
        "touch with os.utime": "import os\n" + "".join(f"os.utime({t!r})\n" for t in targets),
        "sqlite3 create": f"import sqlite3\nsqlite3.connect('{v}/db.sqlite').execute('create table t(x)')\n",
        "read /etc/shadow": "print(open('/etc/shadow').read())\n",
        "read parent environ": "import os\nfound = []\nfor pid in os.listdir('/proc'):\n    try:\n"
        "        found.append(open(f'/proc/{pid}/environ').read())\n    except (OSError, ValueError):\n"
        "        pass\nprint(found)\nassert any('LOPA_ADVERSARIAL_SECRET' in e for e in found)\n",
        "host unix socket": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{v}/host.sock')\n"
        "s.send(b'hello')\n",
        "host tcp listener": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "disk fill": "import os\nblock = b'x' * 2**20\nfor path in ('/tmp/fill', '/dev/shm/fill'):\n"
        "    with open(path, 'wb') as f:\n        for _ in range(1024):\n            f.write(block)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    }


FORGERIES = {
    "token from the runner frame": "import sys\nf = sys._getframe(1)\nprint(f.f_locals.get('token'))\n",
    "token from a traceback": "try:\n    1 / 0\nexcept Exception as e:\n"
    "    print(e.__traceback__.tb_frame.f_back.f_locals.get('token'))\n",
    "token from gc": "import gc\nprint([o for o in gc.get_objects() if isinstance(o, bytes) and len(o) == 32])\n",
    "token from a signal handler": "import signal, os\n"
    "signal.signal(signal.SIGUSR1, lambda n, f: print(f.f_back.f_locals.get('token')))\n"
    "os.kill(os.getpid(), signal.SIGUSR1)\n",
    "token from /proc/self/mem": "import re\nfor line in open('/proc/self/maps'):\n    pass\n",
    "token from /dev/fd/../mem": "open('/dev/fd/../mem', 'rb')\n",
    "ctypes": "import ctypes\nctypes.CDLL(None).system(b'id')\n",
    "ctypes loaded by path": "import importlib.util, glob, sys\n"
    "spec = importlib.util.spec_from_file_location('x._ctypes', glob.glob(sys.base_prefix + "
    "'/lib/python3*/lib-dynload/_ctypes*.so')[0])\nm = importlib.util.module_from_spec(spec)\n",
    "re-imported posix": "import sys\ndel sys.modules['posix']\nimport posix\nposix.system('id')\n",
    "re-imported _posixsubprocess": "import sys\ndel sys.modules['_posixsubprocess']\n"
    "import _posixsubprocess\n",
    "re-created builtin": "import sys, importlib.machinery as m\n"
    "spec = m.BuiltinImporter.find_spec('_signal')\nm.BuiltinImporter.create_module(spec)\n",
    "hand-made bytecode": "f = lambda: 0\nf.__code__ = f.__code__.replace(co_code=b'd\\xff' * 4)\nf()\n",
    "original FileIO from the class hierarchy": "import io\n"
    "real = [c for c in io.FileIO.__mro__ if c.__module__ == '_io' and c.__name__ == 'FileIO'][0]\n"
    "print(real)\nimport sys\nprint(sys._getframe())\n",
    "early os._exit(0) after printing a fake token": "import os\nprint('\\n' + '0' * 32)\nos._exit(0)\n",
}


def alive_with_mark() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if MARK in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(pid)
        except OSError:
            pass
    return found


def test_attacks_are_contained_by_the_os_with_and_without_the_guard(world):
    programs = attacks(world)
    names = list(programs)
    start = time.monotonic()
    guarded = run_programs([programs[n] for n in names], workers=2, timeout_s=5.0)
    bare = run_programs([programs[n] for n in names], workers=2, timeout_s=5.0, _in_process_guard=False)
    elapsed = time.monotonic() - start
    time.sleep(0.2)
    for layer, results in (("guarded", guarded), ("bwrap only", bare)):
        for name, result in zip(names, results, strict=True):
            assert result.status != "passed", (layer, name, result)
            assert result.status != "error", (layer, name, result)
            assert world["secret"] not in result.stdout_tail + result.stderr_tail, (layer, name)
            assert "root:" not in result.stdout_tail, (layer, name)
    assert elapsed < 90, f"the attacks took {elapsed:.0f} s: fork bomb or disk fill not bounded"
    assert alive_with_mark() == [], "a process of a run outlived it"
    assert world["sleeper"].poll() is None, "a host process was killed"
    for directory in (world["visible"], world["hidden"]):
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["victim.txt", "host.sock"][: 1 + (directory == world["visible"])]
        )
        victim = directory / "victim.txt"
        assert victim.read_text() == "original"
        assert victim.stat().st_mtime == 1_000_000_000
    assert not accepted_connection(world["tcp"]), "a program reached the host TCP listener"
    assert not accepted_connection(world["unix"]), "a program reached the host unix socket"


def test_restoring_the_originals_or_forging_the_token_never_passes(world):
    names = list(FORGERIES)
    results = run_programs([FORGERIES[n] for n in names], workers=2, timeout_s=5.0)
    for name, result in zip(names, results, strict=True):
        assert result.status == "failed", (name, result)
        assert "uid=" not in result.stdout_tail, name
    assert alive_with_mark() == []


def test_the_parent_survives_and_a_normal_program_still_passes(world):
    (result,) = run_programs(["import os\nassert os.getuid() == 65534 and os.getppid() != 0\n"], workers=1)
    assert result.status == "passed", result
