"""Per-program cost of the sandbox's operating-system isolation: bwrap vs isolation=none, median seconds.

    python scripts/bench_sandbox.py --data-dir ../shared/data [--trivial 50] [--references 50]

Runs each program one at a time (workers=1) so the times are not mixed with queueing; the reference
programs are the first N check programs of every code task, built exactly as scripts/check_references.py does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lopa.sandbox import run_programs  # noqa: E402
from lopa.tasks.code import CodeGenerationTask  # noqa: E402
from scripts.check_references import TASK_CONFIGS, TASKS, reference_generations  # noqa: E402


def reference_programs(data_dir: Path, per_task: int) -> list[str]:
    programs = []
    for name in TASKS:
        cfg = OmegaConf.load(TASK_CONFIGS / f"{name}.yaml")
        task = CodeGenerationTask(cfg, tokenizer=None, fm_kind="causal", data_dir=str(data_dir))
        for generation in reference_generations(task)[:per_task]:
            row = task.rows_by_key[generation["example_key"]]
            programs.append(task.format.check_program(row, generation["samples"][0]))
    return programs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--trivial", type=int, default=50)
    parser.add_argument("--references", type=int, default=50, help="reference programs per task")
    args = parser.parse_args()
    sets = {"trivial (assert 1)": ["assert 1\n"] * args.trivial,
            f"references ({args.references}/task)": reference_programs(args.data_dir, args.references)}
    print("| programs | n | none (s) | bwrap (s) | overhead (s) |\n|---|---|---|---|---|")
    for label, programs in sets.items():
        medians = {}
        for isolation in ("none", "bwrap"):
            results = run_programs(programs, workers=1, isolation=isolation)
            assert all(r.passed for r in results), f"{label}: a program failed under isolation={isolation}"
            medians[isolation] = statistics.median(r.duration_s for r in results)
        print(f"| {label} | {len(programs)} | {medians['none']:.3f} | {medians['bwrap']:.3f} | "
              f"{medians['bwrap'] - medians['none']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
