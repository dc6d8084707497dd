"""One-line errors for unknown config-group choices, before Hydra prints its multi-line composition error."""

from __future__ import annotations

import sys
from pathlib import Path

CHECKED_GROUPS = ("model", "task", "method", "encoder", "trainer", "logger", "experiment")


def group_options(config_dir: Path, group: str) -> list[str]:
    root = config_dir / group
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def check_group_choices(overrides: list[str], config_dir: Path) -> None:
    """Exit with one line naming the known options if an override picks an unknown one (`method=lopaa`)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in CHECKED_GROUPS or value in ("null", ""):
            continue
        known = group_options(config_dir, key)
        for choice in value.split(","):  # multirun sweeps list several
            if choice not in known:
                print(f"error: unknown {key} {choice!r} (known: {', '.join(known)})", file=sys.stderr)
                sys.exit(2)
