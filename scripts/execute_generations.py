"""Execute (or re-execute) a run's saved generations and score them: the evaluate-only half of a code task.

    python scripts/execute_generations.py outputs/<run>            # reads config.yaml + generations.jsonl there
    python scripts/execute_generations.py outputs/<run> --data-dir ../shared/data --workers 4

Pairs with `task.stage=generate` (generate-only). Writes executions.jsonl and execution_results.json
(pass@k) into the run directory, atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lopa.records import write_json  # noqa: E402
from lopa.tasks.code import (  # noqa: E402
    EXECUTIONS_FILE,
    GENERATIONS_FILE,
    CodeGenerationTask,
    read_generations,
    write_jsonl,
)

RESULTS_FILE = "execution_results.json"


def execute_run(run_dir: Path, data_dir: str | None = None, workers: int | None = None) -> dict:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if workers is not None:
        cfg.task.execution.workers = workers
    task = CodeGenerationTask(cfg.task, tokenizer=None, fm_kind="causal", data_dir=data_dir or cfg.data_dir)
    generations = read_generations(run_dir / GENERATIONS_FILE)
    split_key = cfg.eval.split
    for row in task.load(split_key):
        task.rows_by_key[task.example_key(row, split_key)] = row
    unknown = [g["example_key"] for g in generations if g["example_key"] not in task.rows_by_key]
    if unknown:
        raise SystemExit(f"error: generations for unknown problems, e.g. {unknown[:3]}")
    scores, executions = task.execute(generations, task.rows_by_key)
    write_jsonl(run_dir / EXECUTIONS_FILE, executions)
    record = {"task": task.name, "num_problems": len(generations), **scores}
    write_json(run_dir / RESULTS_FILE, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", default=None, help="override the run's data_dir")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    record = execute_run(args.run_dir, args.data_dir, args.workers)
    print(", ".join(f"{k}={v}" for k, v in record.items()))


if __name__ == "__main__":
    main()
