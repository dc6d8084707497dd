"""One-line errors for unknown config-group choices, before Hydra prints its multi-line composition error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHECKED_GROUPS = ("model", "task", "method", "encoder", "trainer", "logger", "experiment", "ablation")


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


def unknown_key(cfg, key: str) -> str | None:
    """None if the dotted `key` exists in cfg, else the deepest existing prefix's known keys (for the message)."""
    from omegaconf import DictConfig

    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return None  # list indices and the like: leave them to Hydra
        known = list(node.keys())
        if part not in known:
            where = f"{'.'.join(path)} has" if path else "known top-level keys:"
            return f"{where} {', '.join(map(str, known))}"
        node, path = node._get_node(part), [*path, part]
    return None


def check_override_keys(overrides: list[str], config_dir: Path) -> None:
    """Exit with one line if `key=value` names a key the config does not have (`method.rnak=2`); Hydra's own
    error is several lines. Checked against the config composed from the chosen groups; sweeps that list several
    choices of a group are left to Hydra (the key may exist for some of them only)."""
    keyed = [o.partition("=")[0] for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra.", "hydra/"))]
    keys = [key for key in keyed if key not in CHECKED_GROUPS]
    groups = [o for o in overrides if o.startswith("~") or o.partition("=")[0].lstrip("+") in CHECKED_GROUPS
              or o.startswith("hydra/")]
    if not keys or any("," in o.partition("=")[2] for o in groups):
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[o for o in groups if not o.startswith("hydra/")])
    except Exception:  # noqa: BLE001 - Hydra reports composition problems itself
        return
    for key in keys:
        known = unknown_key(cfg, key)
        if known is not None:
            print(f"error: unknown config key {key!r} ({known}; prefix it with + to add a new key)", file=sys.stderr)
            sys.exit(2)


def drop_null_groups(overrides: list[str]) -> list[str]:
    """`encoder=null` means "no encoder": Hydra wants `~encoder` for that and fails with a traceback otherwise."""
    rewritten = []
    for override in overrides:
        key, sep, value = override.partition("=")
        rewritten.append(f"~{key}" if sep and key in CHECKED_GROUPS and value == "null" else override)
    return rewritten


FAILED_JOBS: list[str] = []  # run directories of the jobs of this process's sweep that failed
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")  # torchrun, MPI flavours
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")


def process_rank(env: dict | None = None) -> int:
    """This process's rank under torchrun, `accelerate launch` or mpirun (0 when launched alone)."""
    env = os.environ if env is None else env
    return next((int(env[name]) for name in RANK_VARIABLES if name in env), 0)


def is_main_rank() -> bool:
    return process_rank() == 0


def worker_overrides(overrides: list[str], env: dict | None = None) -> list[str]:
    """Hydra overrides for the non-main processes of a multi-process launch: they write nothing of their own.

    No `.hydra/`, no log file, no run directory (their timestamped one could differ from the main one's by a second;
    the runner hands them the main process's), and only warnings on the console.
    """
    if process_rank(env) == 0:
        return overrides
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging="))]
    return [*kept, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout",
            "hydra.job_logging.root.level=WARNING"]


def parent_command_line() -> list[str]:
    try:
        return [arg.decode() for arg in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return []


def single_process_cpu_launch(env: dict) -> bool:
    """`accelerate launch --cpu --num_processes N` (N > 1) without mpirun starts ONE process; it sets MASTER_PORT
    and ACCELERATE_USE_CPU but no world size, which is how we recognise it."""
    return (env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env
            and not any(name in env for name in WORLD_SIZE_VARIABLES))


def requested_processes(launcher_args: list[str]) -> int | None:
    """N of `--num_processes N` (or `=N`) in the launcher's command line, when it asks for one machine."""
    values = {}
    for i, arg in enumerate(launcher_args):
        for flag in ("--num_processes", "--num_machines"):
            if arg == flag and i + 1 < len(launcher_args):
                values[flag] = launcher_args[i + 1]
            elif arg.startswith(f"{flag}="):
                values[flag] = arg.partition("=")[2]
    processes, machines = values.get("--num_processes", ""), values.get("--num_machines", "1")
    if not processes.isdigit() or int(processes) < 2 or machines != "1" or "--mpirun_hostfile" in launcher_args:
        return None
    return int(processes)


def torchrun_relaunch(argv: list[str], env: dict | None = None, launcher_args: list[str] | None = None) -> list[str] | None:
    """The torchrun command that gives `accelerate launch --cpu --num_processes N run.py ...` its N processes
    (a gloo group, as `torchrun --nproc_per_node N` gives), or None when this launch is not that case."""
    env = os.environ if env is None else env
    if not single_process_cpu_launch(env):
        return None
    processes = requested_processes(parent_command_line() if launcher_args is None else launcher_args)
    if processes is None:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", env.get("MASTER_ADDR", "127.0.0.1"), "--master_port", env["MASTER_PORT"], *argv]


def relaunch_if_needed(argv: list[str]) -> None:
    """Replace this process by a torchrun launch of N processes when `accelerate launch --cpu` started only one."""
    command = torchrun_relaunch(argv)
    if command is None:
        if single_process_cpu_launch(os.environ):
            print("warning: `accelerate launch --cpu` started a single process (several CPU processes need mpirun); "
                  "use `torchrun --nproc_per_node N run.py device=cpu ...`", file=sys.stderr)
        return
    print(f"note: `accelerate launch --cpu` starts one process; running `torchrun --nproc_per_node {command[4]}` "
          "instead", file=sys.stderr)
    sys.stderr.flush()
    os.execv(command[0], command)


def prepare_overrides(overrides: list[str], config_dir: Path) -> list[str]:
    """What run.py does before Hydra: refuse unknown group choices and keys in one line, turn `group=null` into
    `~group`, and keep non-main processes from writing."""
    check_group_choices(overrides, config_dir)
    overrides = drop_null_groups(overrides)
    check_override_keys(overrides, config_dir)
    return worker_overrides(overrides)
