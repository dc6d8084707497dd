"""Score every code task's reference answers through the evaluation path; all must pass (pass@1 = 100%).

    python scripts/check_references.py --data-dir ../shared/data [--tasks mbpp humaneval] [--workers 4] [--limit N]

Each reference answer is treated as a generation: cut at the task's stop sequences, turned into the task's
check program, executed in the sandbox and scored with pass@1, exactly as model generations are. Exits 1
unless every checked task is at 100%, listing the rows that failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lopa.code_prompts import truncate_at_stops  # noqa: E402
from lopa.schema import ISOLATIONS  # noqa: E402
from lopa.tasks.code import CodeGenerationTask  # noqa: E402

TASK_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "task" / "code"
TASKS = sorted(path.stem for path in TASK_CONFIGS.glob("*.yaml"))


def reference_generations(task: CodeGenerationTask) -> list[dict]:
    """One 'generation' per problem of every split: the reference answer as a model would have produced it."""
    generations = []
    for split_key in task.cfg.splits:
        for row in task.load(split_key):
            key = task.example_key(row, split_key)
            task.rows_by_key[key] = row
            answer = truncate_at_stops(task.format.answer(row), list(task.cfg.generation.stop))
            generations.append({"example_key": key, "samples": [answer]})
    return generations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems of each task")
    parser.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per program (task.execution.timeout_s)")
    parser.add_argument("--isolation", choices=ISOLATIONS, default=None, help="override task.execution.isolation")
    args = parser.parse_args()

    summary, failures = [], []
    for name in args.tasks:
        cfg = OmegaConf.load(TASK_CONFIGS / f"{name}.yaml")
        cfg.execution.workers, cfg.execution.timeout_s = args.workers, args.timeout
        if args.isolation is not None:
            cfg.execution.isolation = args.isolation
        print(f"{name}: isolation {cfg.execution.isolation}", file=sys.stderr)
        task = CodeGenerationTask(cfg, tokenizer=None, fm_kind="causal", data_dir=str(args.data_dir))
        generations = reference_generations(task)[: args.limit]
        print(f"{name}: running {len(generations)} reference programs", file=sys.stderr)
        start = time.monotonic()
        scores, executions = task.execute(generations, task.rows_by_key)
        summary.append((name, len(generations), scores["pass@1"], time.monotonic() - start))
        failures += [(name, e) for e in executions if not e["passed"]]

    print(f"\n{'task':<12} {'n':>5} {'pass@1':>8} {'seconds':>8}")
    for name, count, score, seconds in summary:
        print(f"{name:<12} {count:>5} {100 * score:>7.2f}% {seconds:>8.1f}")
    for name, execution in failures:
        print(f"\nFAILED {name} {execution['example_key']}: {execution['status']}\n{execution['stderr_tail']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
