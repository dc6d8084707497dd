"""Run the offline study (configs/experiment/offline_study.yaml) cell by cell, in the protocol's order.

    python scripts/offline_study.py plan                          # every cell: done, pending or waiting
    python scripts/offline_study.py run --data-dir ../shared/data # run what is pending (hours: in the background)
    python scripts/offline_study.py run --task glue/sst2 --method full_ft --max-cells 2 --data-dir ../shared/data
    python scripts/offline_study.py run --task glue/sst2 --variant init_vocab init_embedding_scale --seed 1

Each cell is `python run.py experiment=offline_study task=... method=... lr_factor=... seed=...` in its own run
directory under results/offline_study/runs/: a relaunch skips completed cells (skip_completed) and resumes an
interrupted one from its checkpoint; a cell that another live run holds is left to it, so several drivers can share
one study's directory. Seeds 2-3 and ablations of a method start once its learning-rate selection
(seed 1 at every factor) has completed; the plan is recomputed after every cell. Extra arguments after `--` go to
every run.py call (e.g. `-- trainer.max_steps=3 model=tiny-llama` for a smoke test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lopa.records import run_dir_holder  # noqa: E402
from lopa.study import Cell, completed, load_records, plan  # noqa: E402

EXPERIMENT = "offline_study"
DEFAULT_RUNS = REPO / "results" / "offline_study" / "runs"


def protocol(overrides: list[str] | None = None) -> dict:
    """The experiment's `study:` block, as composed by Hydra."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={EXPERIMENT}", *(overrides or [])])
    return OmegaConf.to_container(cfg.study, resolve=True)


def wanted(cell: Cell, args: argparse.Namespace) -> bool:
    return ((not args.task or cell.task in args.task) and (not args.method or cell.method in args.method)
            and (not args.seed or cell.seed in args.seed) and (not args.variant or cell.variant in args.variant))


def show_plan(study: dict, runs: Path, args: argparse.Namespace) -> None:
    records = load_records(runs)
    counts = {"done": 0, "running": 0, "pending": 0, "waiting": 0, "failed": 0}
    for cell, why in plan(study, records):
        if cell is None:
            counts["waiting"] += 1
            print(f"waiting  {why}")
            continue
        if not wanted(cell, args):
            continue
        record = records.get(cell.run_name)
        holder = None if completed(records, cell) else run_dir_holder(runs / cell.run_name)
        state = ("done" if completed(records, cell) else "running" if holder
                 else "failed" if record and record["status"] == "failed" else "pending")
        counts[state] += 1
        trim = f"; to step {cell.stop_at_step}, holdout unscored" if cell.stop_at_step and state == "pending" else ""
        print(f"{state:8} {cell.run_name}  ({f'{holder}; ' if holder else ''}{why}{trim})")
    print(", ".join(f"{n} {state}" for state, n in counts.items()))


def run_cells(study: dict, runs: Path, args: argparse.Namespace, extra: list[str]) -> int:
    tried: set[str] = set()
    ran = failed = 0
    while args.max_cells is None or ran < args.max_cells:
        records = load_records(runs)
        pending = [cell for cell, _ in plan(study, records)
                   if cell is not None and wanted(cell, args) and cell.run_name not in tried
                   and not completed(records, cell) and not run_dir_holder(runs / cell.run_name)]  # held: another driver's
        if not pending:
            break
        cell = pending[0]
        tried.add(cell.run_name)
        command = [sys.executable, str(REPO / "run.py"), f"experiment={EXPERIMENT}", *cell.overrides(),
                   f"hydra.run.dir={runs / cell.run_name}", *([f"data_dir={args.data_dir}"] if args.data_dir else []),
                   *extra]
        print(f"[{ran + 1}] {cell.run_name}: {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
        ran += 1
        if completed(load_records(runs), cell):  # final: its resumable checkpoint (1.6 GB for full FT) is not needed
            shutil.rmtree(runs / cell.run_name / "checkpoints", ignore_errors=True)
        if result.returncode != 0:
            failed += 1
            print(f"cell {cell.run_name} failed (exit {result.returncode}); its record says why", file=sys.stderr)
    print(f"{ran} cell(s) run, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("plan", "run"))
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="the study's run directories")
    parser.add_argument("--data-dir", help="data_dir for run.py (default: the config's, i.e. $LOPA_DATA_DIR)")
    parser.add_argument("--task", nargs="+", help="only these tasks (e.g. glue/sst2)")
    parser.add_argument("--method", nargs="+", help="only these methods")
    parser.add_argument("--seed", nargs="+", type=int, help="only these seeds")
    parser.add_argument("--variant", nargs="+", help="only these variants: paper, or configs/ablation/ names")
    parser.add_argument("--max-cells", type=int, help="stop after this many cells")
    args = parser.parse_args(argv)
    # The protocol may be narrowed (a smoke test) with study.* overrides among the extra arguments; they go to the
    # runs too, so their records carry the protocol they were run under.
    study = protocol([o for o in extra if o.lstrip("~+").startswith("study.")])
    if args.action == "plan":
        show_plan(study, args.runs, args)
        return 0
    args.runs.mkdir(parents=True, exist_ok=True)
    return run_cells(study, args.runs, args, extra)


if __name__ == "__main__":
    sys.exit(main())
