"""Predict with a trained run: its config.yaml and weights, batched.

    python scripts/predict.py outputs/<run> --text "A great film."                     # single-text tasks (SST-2)
    python scripts/predict.py outputs/<run> --text "premise" --pair "hypothesis"        # pair tasks (RTE, MRPC)
    python scripts/predict.py outputs/<run> --jsonl rows.jsonl --batch-size 32         # rows with the task's fields
    python scripts/predict.py outputs/<run> --weights outputs/<run>/checkpoints/step-000100 --text ...

Classification prints each input's label and the label probabilities (softmax over the label words' logits);
code tasks print the generations (--text is then the whole prompt). Bad input: one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lopa.data import read_jsonl  # noqa: E402
from lopa.errors import ConfigError  # noqa: E402
from lopa.records import load_trained  # noqa: E402
from lopa.registry import method_class  # noqa: E402
from lopa.runner import build_model, load_components  # noqa: E402
from lopa.tasks.classification import ClassificationTask  # noqa: E402

EXIT_BAD_INPUT = 2


def examples(task, texts: list[str], pairs: list[str], jsonl: Path | None) -> list[dict]:
    """Encoded inputs: rows of a JSON-Lines file in the task's field names, then those of --text (and --pair).
    A code task's --text is the whole prompt."""
    if not texts and jsonl is None:
        raise ConfigError("give inputs with --text (and --pair) or --jsonl")
    if jsonl is not None and not jsonl.is_file():
        raise ConfigError(f"--jsonl {str(jsonl)!r} does not exist")
    rows = read_jsonl(jsonl) if jsonl is not None else []
    if not isinstance(task, ClassificationTask):
        if pairs:
            raise ConfigError(f"task {task.name!r} generates from one prompt: --pair does not apply")
        try:
            encoded = [task.encode(row, i, "eval") for i, row in enumerate(rows)]
        except KeyError as error:
            raise ConfigError(f"a --jsonl row lacks the task's field {error}") from None
        return encoded + [task.prompt_example(text, f"text-{i}", text) for i, text in enumerate(texts)]
    fields = list(dict.fromkeys(task.fields))  # in template order: --text fills the first, --pair the second
    if texts and len(fields) == 1 and pairs:
        raise ConfigError(f"task {task.name!r} reads one text ({fields[0]}): --pair does not apply")
    if texts and len(fields) == 2 and len(pairs) != len(texts):
        raise ConfigError(f"task {task.name!r} reads text pairs ({', '.join(fields)}): give one --pair per --text")
    if texts and len(fields) > 2:
        raise ConfigError(f"task {task.name!r} reads {len(fields)} fields ({', '.join(fields)}): use --jsonl")
    rows += [dict(zip(fields, (text, pair))) for text, pair in zip(texts, pairs or [None] * len(texts))]
    for number, row in enumerate(rows, start=1):
        missing = [name for name in fields if name not in row]
        if missing:
            raise ConfigError(f"input {number} lacks the task's fields {missing} (task {task.name!r} reads {fields})")
    # The label only places the scored position (the mask, or the text's end); its value is never read.
    return [task.encode({**row, "label": 0}, i, "predict") for i, row in enumerate(rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (config.yaml, weights/)")
    parser.add_argument("--text", action="append", default=[], help="an input text (repeatable)")
    parser.add_argument("--pair", action="append", default=[], help="the second text of a pair task, one per --text")
    parser.add_argument("--jsonl", type=Path, help="rows with the task's field names")
    parser.add_argument("--weights", type=Path, help="weights or checkpoint directory (default: <run_dir>/weights)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval.batch_size")
    args = parser.parse_args(argv)
    try:
        predict(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def predict(args: argparse.Namespace) -> None:
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{str(args.run_dir)!r} is not a run directory (no config.yaml)")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} is not allowed (allowed: an integer >= 1)")
    cfg = OmegaConf.load(config)
    weights = args.weights or args.run_dir / "weights"
    set_seed(cfg.seed)  # as the run did: an FM built from an architecture gets the same weights
    tokenizer, fm, task = load_components(cfg, data_dir=None)
    model = build_model(cfg, tokenizer, fm, task, train_rows=[])
    if method_class(cfg.method.name).trains:
        load_trained(model, weights)
    encoded = examples(task, args.text, args.pair, args.jsonl)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    batch_size = args.batch_size or cfg.eval.batch_size
    model.to(accelerator.device).eval()
    model.method.prepare_examples(encoded, batch_size)
    loader = accelerator.prepare(task.dataloader(encoded, batch_size, shuffle=False))
    if not isinstance(task, ClassificationTask):
        for number, record in enumerate(task.generate(model, loader, accelerator), start=1):
            for sample in record["samples"]:
                print(f"[{number}] {sample}")
        return
    names = list(cfg.task.get("label_names") or cfg.task.label_words)
    number = 0
    with torch.no_grad():
        for batch in loader:
            for probabilities in task.label_logits(model, batch).float().softmax(-1).tolist():
                number += 1
                best = max(range(len(names)), key=probabilities.__getitem__)
                shown = " ".join(f"{name}={p:.4f}" for name, p in zip(names, probabilities))
                print(f"[{number}] {names[best]}\t{shown}")


if __name__ == "__main__":
    main()
