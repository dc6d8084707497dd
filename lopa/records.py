"""Result records and weights: written atomically, so a crash never leaves a half-written file."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch loads only where weights are handled: a bad-input error line comes without it
    import torch

from lopa.errors import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"  # a run directory's record
LOCK_FILE = ".lock"  # held (flock) by the run using the directory; its text names the holder
WEIGHTS_FILE = "trained.safetensors"
WEIGHTS_CONFIG_FILE = "trained_config.json"
CHECKPOINT_WEIGHTS_FILE = "trainable.safetensors"  # the same tensors inside a resumable checkpoint (checkpoints/step-N)


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give (mkstemp's files are private: 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, flush it to disk, then rename it into place.

    Readers see either the old file or the complete new one, never a partial write, even after a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, record: dict) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")

    atomic_write(path, write)


def failed_record(cfg: DictConfig, error: str, trace: str) -> dict:
    """What a failed run's results.json holds: the error, and as much of the config as resolves."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that cannot resolve may be the very error
        config = OmegaConf.to_container(cfg, resolve=False)

    def value(key: str):
        return OmegaConf.select(OmegaConf.create(config), key, default=None, throw_on_resolution_failure=False)

    return {"status": "failed", "error": error, "run_name": value("run_name"), "mode": value("mode"), "method": value("method.name"),
            "task": value("task.name"), "model": value("model.name"), "seed": value("seed"), "config": config,
            "traceback": trace}


# Keys that may differ between a completed run and its relaunch without changing what the run computes.
# task.text_fields only declares what the templates may name (checked, never used to compute): records made before
# the key existed stay valid.
RELAUNCH_INDEPENDENT_KEYS = ("data_dir", "skip_completed", "logger", "device", "trainer.resume", "trainer.num_workers",
                             "run_name_prefix", "trainer.push_to_hub", "task.text_fields",
                             "study.")  # the study's plan and report: no run reads it


# Keys added to the configs after records were made, each with the value that reproduces what runs did before it
# existed: a record without the key matches a relaunch that has this value (and no other).
KEYS_ADDED_LATER = {"preset": "none", "trainer.allow_schedule_change": False, "eval.holdout_min_words": None,
                    "method.shared_prompt_lr_scale": 1, "method.head_init_std": 0.02,
                    "trainer.stop_at_step": None, "eval.score_holdout": True}


def flat_items(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in flat_items(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


class ForeignRecordError(ConfigError):
    """The run directory holds a completed record of another config: it is kept as it is (no failed record over it)."""


def completed_record(run_dir: Path, config: dict) -> dict | None:
    """The completed record in `run_dir` when it was made by this same config, None when there is none (or a failed
    or interrupted one: that run goes again, from its checkpoint). A completed record of another config is an
    error: relaunching a sweep into a directory of different runs must not silently keep their numbers."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written atomically, so only a foreign file can be torn; run again and replace it
    if record.get("status") != "completed":
        return None
    old, new = flat_items(record.get("config") or {}), flat_items(config)
    # only where the relaunch has the key: a method-specific key is absent from other methods' configs
    old = {**{key: value for key, value in KEYS_ADDED_LATER.items() if key not in old and key in new}, **old}
    differing = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key)
                       and not key.startswith(RELAUNCH_INDEPENDENT_KEYS))
    if differing:
        shown = ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in differing[:3])
        raise ForeignRecordError(f"{path} is a completed run of another config ({shown}{', ...' if len(differing) > 3 else ''}); "
                          "use another run directory, or delete it to run again")
    return record


class RunDirInUseError(ForeignRecordError):
    """Another live run holds the run directory: its files are left to it (no failed record over them)."""


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for one run. A second launch into it (a sweep relaunched while its jobs still run, two study
    drivers picking the same cell) stops at once instead of interleaving its checkpoints and record with the first's.
    An flock, so the OS drops it when the holder dies: a killed run leaves nothing to clean up. The file stays (an
    unlinked lock file could be held by two runs at once)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirInUseError(f"{run_dir} is in use by {holder}; wait for that run to end, or use another run "
                               "directory") from None
    except OSError as error:  # a file system without flock (some NFS and Lustre mounts): run, unguarded
        handle.close()
        log.warning("cannot lock %s (%s): a second launch into it would not be stopped", run_dir, error)
        yield
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def run_dir_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir` now (its lock file's text), None when no live run does."""
    path = Path(run_dir) / LOCK_FILE
    try:
        handle = open(path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        except OSError:  # no flock on this file system: nothing is ever held
            return None
    return None


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The commit the code ran at, with `-dirty` when there were uncommitted changes."""
    cwd = repo_dir or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU model and whether it has bf16 instructions: without them bf16 autocast is emulated, several times
    slower (one VM of this project's had AVX512-BF16, the next not), so a record's wall time needs them beside it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"cpu": platform.processor() or None, "cpu_bf16": None}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)  # the last core's, like any other
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"), "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


def machine_info() -> dict:
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        **cpu_info(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    import transformers

    info["transformers"] = transformers.__version__
    return info


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: parameters that require grad plus the method's saved buffers."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    for name in model.method.saved_buffer_names():
        state[f"method.{name}"] = buffers[f"method.{name}"]
    return {name: tensor.contiguous().cpu() for name, tensor in state.items()}


def save_trained(model: torch.nn.Module, directory: Path, config: dict) -> None:
    """Trained weights as safetensors plus a JSON config naming the method, model and task they belong to (the
    `save_pretrained` convention), and whatever else the method exports (LoRA: a PEFT adapter in peft/)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = trained_state(model)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    write_json(directory / WEIGHTS_CONFIG_FILE, config)
    model.method.export(model.fm, directory)


def push_to_hub(directory: Path, repo_id: str, message: str) -> str:
    """Upload a weights directory to a Hugging Face Hub model repository (made if missing); returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, exist_ok=True)
    return upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=message).commit_url


def weights_file(directory: Path) -> Path:
    """The trained weights in a weights directory (`save_trained`'s) or in a checkpoint directory."""
    for name in (WEIGHTS_FILE, CHECKPOINT_WEIGHTS_FILE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise ConfigError(f"checkpoint {str(directory)!r} does not exist or holds no {WEIGHTS_FILE} (nor a checkpoint's "
                      f"{CHECKPOINT_WEIGHTS_FILE})")


def load_trained(model: torch.nn.Module, directory: Path) -> dict:
    """Load weights saved by `save_trained` (or a checkpoint's) into a freshly built model; every saved and expected
    tensor must match. Returns the weights' JSON config ({} for a checkpoint)."""
    directory = Path(directory)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = weights_file(directory)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:  # truncated, overwritten or not safetensors at all
        raise ConfigError(f"checkpoint {str(directory)!r}: {path.name} is not a readable safetensors file ({error}); "
                          "save the weights again") from None
    expected = trained_state(model)
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state))[:3], sorted(set(state) - set(expected))[:3]
        raise ConfigError(f"checkpoint {str(directory)!r} does not fit this method/model (missing {missing}, unexpected {unexpected})")
    wrong_shapes = [f"{name} {tuple(state[name].shape)} vs {tuple(tensor.shape)}" for name, tensor in expected.items()
                    if state[name].shape != tensor.shape]
    if wrong_shapes:
        raise ConfigError(f"checkpoint {str(directory)!r} does not fit this method/model (saved vs expected shapes: "
                          f"{', '.join(wrong_shapes[:3])})")
    model.load_state_dict(state, strict=False)
    config = directory / WEIGHTS_CONFIG_FILE
    if not config.is_file():
        return {}
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"checkpoint {str(directory)!r}: {WEIGHTS_CONFIG_FILE} is not valid JSON ({error})") from None


# Method keys that set how weights were optimised, not what they mean: evaluating them under other values is fine.
OPTIMISATION_KEYS = {"lr", "weight_decay", "warmup_ratio", "warmup_steps", "scheduler", "update_lr", "cache_features",
                     "mode"}


def check_trained_config(saved: dict, expected: dict, directory: Path) -> None:
    """Refuse weights whose trained_config.json says they were trained for another model, task, prompt or method
    setting, even when every tensor has the right shape (a prompt of another task loads without a complaint)."""
    if not saved:
        return  # a checkpoint's weights, or weights saved before trained_config.json existed: nothing to compare
    old, new = flat_items({k: saved.get(k) for k in expected}), flat_items(expected)
    differing = sorted(key for key in old.keys() | new.keys()
                       if old.get(key) != new.get(key) and key.split(".")[-1] not in OPTIMISATION_KEYS)
    if differing:
        shown = ", ".join(f"{key} {old.get(key)!r} (trained) vs {new.get(key)!r} (now)" for key in differing[:3])
        raise ConfigError(f"checkpoint {str(directory)!r} was trained for another setting: {shown}; evaluate it "
                          "with the config it was trained with")
