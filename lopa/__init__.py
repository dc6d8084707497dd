"""LoPA and its peers: soft-prompt adaptation of frozen foundation models."""

import json
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# ${mul:a,b}: a learning rate as a multiple of a method's own (the offline study's grid, configs/experiment/)
OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b), replace=True)


def _hydra_subdir(run_dir: str, skip_completed: bool) -> str | None:
    """Where Hydra saves its copy of the launch (config, overrides): nowhere when `run_dir` holds a completed record
    that this launch will skip or refuse, or a live run that it will refuse, so that the copy there still names the
    command that made (or is making) the record."""
    from lopa.records import run_dir_holder

    if run_dir_holder(Path(run_dir)):
        return None
    record = Path(run_dir) / "results.json"
    if skip_completed and record.is_file():
        try:
            if json.loads(record.read_text()).get("status") == "completed":
                return None
        except (OSError, json.JSONDecodeError, AttributeError):
            pass  # a torn or foreign file: the launch runs and replaces it, with its own copy
    return ".hydra"


# ${hydra_subdir:...}: configs/config.yaml's hydra.output_subdir (Hydra writes it before any of our code runs)
OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, replace=True)
