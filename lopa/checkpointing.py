"""Resumable training: checkpoints of everything a run needs to continue exactly, and SIGTERM as "save and stop".

A checkpoint is a directory `<run dir>/checkpoints/step-NNNNNN/` holding the trainable weights (safetensors),
the optimizer and scheduler states, every process's RNG states and `state.json` (data position, losses and
evaluations so far, the config it was made with). It is built under a hidden temporary name and renamed into
place, so a crash never leaves a half-written checkpoint behind a valid name.

Why not Accelerate's `save_state`/`load_state`/`register_for_checkpointing` (accelerate 1.16), which would cover
the optimizer, scheduler, GradScaler and per-process RNG files: each guarantee here would need wrapping it anyway.
- Weights: save_state writes every prepared model's full state dict, the frozen FM included (GBs per checkpoint
  for a 7B FM where a prompt method trains KBs); only a save/load hook replacing them with `trained_state` avoids
  that, i.e. this module's weight code again.
- Atomicity: save_state writes straight into its output directory; a kill mid-save leaves a partial checkpoint
  under a valid name, which `load_state` (and automatic_checkpoint_naming's "latest") would pick up. The staging
  dir + rename would have to wrap it, with a barrier, since every process writes its own files into it.
- RNG of every process in the main process's checkpoint: save_state has each process write random_states_<rank>
  itself, so without a shared filesystem a node's states live on that node only; here they are gathered.
- Rotation and naming: total_limit rotates only automatically named checkpoint_<save count> directories, not
  step-<step> ones, and counts incomplete ones; keep_checkpoints counts completed checkpoints (with state.json).
- Data position: Accelerate's SeedableRandomSampler (use_seedable_sampler) draws seed + epoch like EpochShuffle,
  but the mid-epoch position still needs skip_first_batches and TrainState, and its seed defaults to
  torch.initial_seed() rather than the run's seed. The config check and the recorded schedule stay in state.json.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch.utils.data import Sampler

from lopa.errors import ConfigError
from lopa.records import CHECKPOINT_WEIGHTS_FILE as WEIGHTS_FILE
from lopa.records import trained_state, write_json

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
SCALER_FILE = "scaler.pt"  # fp16's gradient scaler
CHECKPOINT_NAME = re.compile(r"step-(\d+)")
# Config sections a resumed run must share with its checkpoint (length, cadence and logging may change).
MUST_MATCH = ("method", "model", "task", "encoder", "seed")
TRAINER_MAY_CHANGE = {"resume", "checkpoint_every", "keep_checkpoints", "max_steps", "epochs", "eval_every",
                      "log_every", "num_workers", "save_weights", "allow_schedule_change", "push_to_hub",
                      "stop_at_step"}


class EpochShuffle(Sampler[int]):
    """A permutation per epoch drawn from `seed + epoch` alone, so a resumed run replays an interrupted epoch's order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


@dataclass
class TrainState:
    """Where training stands, at an optimiser-step boundary."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # loader (micro-)batches of `epoch` this process has consumed: whole windows
    running_loss: float = 0.0  # this process's summed token loss and target-token count since the last logged loss
    running_count: int = 0
    schedule: dict | None = None  # {"name", "steps", "warmup"} of the learning-rate schedule this run trains under


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match and (path / STATE_FILE).is_file() else None


def completed_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(path), path) for path in root.iterdir()]
    return [path for step, path in sorted((s, p) for s, p in found if s is not None)]


def resume_checkpoint(resume: object, run_dir: Path) -> Path | None:
    """The checkpoint `trainer.resume` asks for: auto (the newest in the run directory, if any), true (it must exist),
    false (none), or a checkpoint directory."""
    root = run_dir / CHECKPOINTS_DIR
    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        found = completed_checkpoints(root)
        if not found and resume is True:
            raise ConfigError(f"trainer.resume=true but {root} holds no checkpoint (pin the run directory with "
                              f"hydra.run.dir=<dir of the interrupted run>, or use trainer.resume=auto)")
        return found[-1] if found else None
    path = Path(str(resume)).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"trainer.resume={str(resume)!r} is not a checkpoint directory (no {STATE_FILE}); "
                          "use true, false, auto or <run dir>/checkpoints/step-NNNNNN")
    return path


def check_resume_config(resume: object) -> None:
    """Fail before anything loads when trainer.resume names a path that is not a checkpoint."""
    if resume in (True, False, None, "auto"):
        return
    resume_checkpoint(resume, Path("."))


def config_mismatches(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between the checkpoint's config and this run's, where they must agree."""

    def flat(node: object, prefix: str) -> dict:
        if isinstance(node, dict):
            return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    keys = [*MUST_MATCH, "trainer", "num_processes"]
    old = flat({k: saved.get(k) for k in keys}, "")
    new = flat({k: current.get(k) for k in keys}, "")
    skip = {f"trainer.{key}" for key in TRAINER_MAY_CHANGE}
    return sorted(key for key in old.keys() | new.keys() if key not in skip and old.get(key) != new.get(key))


class Checkpointer:
    """Saves and loads checkpoints under `<run dir>/checkpoints`; every process calls it, only the main one writes."""

    def __init__(self, run_dir: Path, every: int | None, keep: int, config: dict, accelerator: Accelerator):
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.every, self.keep, self.accelerator = every, keep, accelerator
        self.config = {**config, "num_processes": accelerator.num_processes}

    def due(self, step: int, last: bool = False) -> bool:
        """A checkpoint every `every` steps and at the last step (none at all when `every` is null)."""
        return bool(self.every) and (step % self.every == 0 or last)

    def clear(self) -> None:
        """Remove earlier checkpoints (a fresh start with trainer.resume=false in a used run directory)."""
        if self.accelerator.is_main_process and self.root.is_dir():
            log.warning("trainer.resume=false: removing the earlier checkpoints in %s", self.root)
            shutil.rmtree(self.root)
        self.accelerator.wait_for_everyone()

    def save(self, model, optimizer, scheduler, state: TrainState, progress: dict) -> Path:
        """Write checkpoint `step-<state.step>` atomically and keep only the newest `keep`; returns its path."""
        rng = gather_object([rng_states()])  # one entry per process, in rank order
        final = self.root / f"step-{state.step:06d}"
        if self.accelerator.is_main_process:
            tmp = self.root / f".tmp-{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(trained_state(self.accelerator.unwrap_model(model)), str(tmp / WEIGHTS_FILE))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if self.accelerator.scaler is not None:  # fp16: the loss scale it has settled on, else resumes restart it
                torch.save(self.accelerator.scaler.state_dict(), tmp / SCALER_FILE)
            torch.save(rng, tmp / "rng.pt")
            write_json(tmp / STATE_FILE, {"train_state": asdict(state), **progress, "config": self.config})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in completed_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old)
            log.info("checkpoint at step %d: %s", state.step, final)
        self.accelerator.wait_for_everyone()
        return final

    def load(self, path: Path, model, optimizer, scheduler) -> tuple[TrainState, dict]:
        """Restore weights, optimizer, scheduler and this process's RNG; returns the train state and progress."""
        saved = json.loads((path / STATE_FILE).read_text())
        mismatches = config_mismatches(saved["config"], self.config)
        if mismatches:
            shown = ", ".join(f"{key}={_select(saved['config'], key)!r}" for key in mismatches[:3])
            raise ConfigError(f"checkpoint {str(path)!r} was made with another config ({shown}); resume with the same "
                              "settings or start afresh with trainer.resume=false")
        weights = load_file(str(path / WEIGHTS_FILE))
        unwrapped = self.accelerator.unwrap_model(model)
        expected = set(trained_state(unwrapped))
        if set(weights) != expected:
            raise ConfigError(f"checkpoint {str(path)!r} does not fit this method/model")
        unwrapped.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
        if self.accelerator.scaler is not None and (path / SCALER_FILE).is_file():
            self.accelerator.scaler.load_state_dict(torch.load(path / SCALER_FILE, weights_only=False))
        set_rng_states(torch.load(path / "rng.pt", weights_only=False)[self.accelerator.process_index])
        progress = {key: value for key, value in saved.items() if key not in ("train_state", "config")}
        return TrainState(**saved["train_state"]), progress


def _select(config: dict, dotted: str) -> object:
    node: object = config
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


class StopOnSigterm:
    """SIGTERM (a scheduler pre-empting the job) becomes a request to save a checkpoint and stop at the next step.

    With several processes the request is shared (any process that got it stops all), so they stop at the same step.
    """

    def __init__(self, accelerator: Accelerator, enabled: bool = True):
        self.accelerator, self.enabled = accelerator, enabled
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __enter__(self) -> StopOnSigterm:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self) -> bool:
        if not self.enabled:
            return False
        if self.accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([float(self.received)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)


def checkpoint_settings(cfg: DictConfig) -> tuple[int | None, int]:
    """trainer.checkpoint_every and trainer.keep_checkpoints, validated."""
    every, keep = cfg.get("checkpoint_every"), cfg.get("keep_checkpoints", 1)
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every <= 0):
        raise ConfigError(f"trainer.checkpoint_every={every!r} must be a positive integer or null")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep <= 0:
        raise ConfigError(f"trainer.keep_checkpoints={keep!r} must be a positive integer")
    return every, keep
