"""Rows from the Hugging Face Hub or a local JSON-Lines directory, and batching of encoded examples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from lopa.errors import ConfigError


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a (possibly gzipped) JSON-Lines file; a malformed line is reported with file and line number."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ConfigError(f"malformed JSON in {path} line {number}: {error.msg}") from None
    return rows


HOLDOUT_SEED = 0  # the held-out slice is the same for every run (any seed, method, learning rate)


def split_holdout(rows: list[dict], size: int, min_words: int | None = None,
                  text_fields: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(rows to train on, `size` held-out rows): a fixed random subset, the rest in their original order.

    With `min_words`, the held-out rows are drawn only among rows whose `text_fields` hold at least that many words
    together (SST-2's training rows are mostly short phrases, its validation split whole sentences); the shorter
    rows all stay training rows. Without it the subset is the one every earlier run held out."""
    eligible = list(range(len(rows)))
    if min_words is not None:
        if not text_fields:
            raise ConfigError(f"eval.holdout_min_words={min_words} needs the task's text_fields (this task has none)")
        eligible = [i for i in eligible if sum(len(str(rows[i][f]).split()) for f in text_fields) >= min_words]
    if size >= len(rows) or size > len(eligible):
        raise ConfigError(f"eval.holdout={size} leaves nothing to train on or is more than the {len(eligible)} rows "
                          f"it may draw from ({len(rows)} training rows"
                          + (f", {len(eligible)} of at least {min_words} words" if min_words is not None else "")
                          + f"; allowed: 1..{min(len(eligible), len(rows) - 1)})")
    order = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    held = {eligible[i] for i in order[:size].tolist()}
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def load_rows(source: DictConfig, split: str, data_dir: str | None) -> list[dict]:
    """All rows of one split: from `data_dir/<source.local_dir>/<split>.jsonl` when data_dir is set, else the Hub."""
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise ConfigError(f"data_dir {str(root)!r} does not exist")
        split_file = source.get("local_files", {}).get(split, f"{split}.jsonl")
        path = root / source.local_dir / split_file
        if not path.is_file():
            raise ConfigError(f"no file for split {split!r} at {path} (data_dir={str(root)!r})")
        rows = read_jsonl(path)
        if not rows:
            raise ConfigError(f"split {split!r} is empty: {path} holds no rows")
    else:
        import datasets  # imported lazily: only Hub runs need it

        rows = list(datasets.load_dataset(source.hub_path, source.get("hub_name"), split=split))
    if not rows:
        raise ConfigError(f"split {split!r} of {source.get('hub_path') or source.local_dir} is empty")
    return rows


def pad_sequences(sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
    """Pad lists of ids to one length on the left or right."""
    width = max(len(s) for s in sequences)
    padded = [([value] * (width - len(s)) + s) if side == "left" else (s + [value] * (width - len(s))) for s in sequences]
    return torch.tensor(padded, dtype=torch.long)


def collate(examples: list[dict], pad_token_id: int, padding_side: str) -> dict:
    """Batch encoded examples: tensors for ids, masks, targets and labels; lists for keys and encoder texts."""
    batch = {
        "input_ids": pad_sequences([e["input_ids"] for e in examples], pad_token_id, padding_side),
        "attention_mask": pad_sequences([[1] * len(e["input_ids"]) for e in examples], 0, padding_side),
        "target_ids": pad_sequences([e["target_ids"] for e in examples], -100, padding_side),
        "example_keys": [e["example_key"] for e in examples],
        "encoder_texts": [e["encoder_text"] for e in examples],
    }
    if "label" in examples[0]:
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch
