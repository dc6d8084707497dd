"""What every task provides to the trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lopa.data import collate, load_rows
from lopa.errors import ConfigError


class Task(ABC):
    """Loads rows, encodes them into ids and targets, batches them, and scores a model on them."""

    def __init__(self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, fm_kind: str, data_dir: str | None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.fm_kind = fm_kind
        self.data_dir = data_dir
        self.num_virtual_tokens = 0  # set by the runner once the method is known: it shrinks the text budget
        self.output_dir: Path | None = None  # the run directory, for tasks that write artefacts

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def primary_metric(self) -> str:
        return self.cfg.metrics[0]

    @property
    def label_word_ids(self) -> list[int] | None:
        return None

    def split_name(self, split_key: str) -> str:
        if split_key not in self.cfg.splits:
            raise ConfigError(f"task {self.name!r} has no split {split_key!r} (known: {', '.join(self.cfg.splits)})")
        return self.cfg.splits[split_key]

    @property
    def selects_best_evaluation(self) -> bool:
        """Picking the best of several evaluations is model selection: fair on a development split, not on test
        (there a run evaluates once, at the end, and reports that)."""
        return self.split_name("eval") != "test"

    def load(self, split_key: str, limit: int | None = None) -> list[dict]:
        """Raw rows of a split (`train`, `eval`, ...), optionally only the first `limit`."""
        rows = load_rows(self.cfg.source, self.split_name(split_key), self.data_dir)
        return rows[:limit] if limit is not None else rows

    @abstractmethod
    def text(self, row: dict) -> str:
        """The task text of a row as the FM reads it (instance-encoder input, text-based prompt inits)."""

    @abstractmethod
    def encode(self, row: dict, index: int, split_key: str) -> dict:
        """One example: input_ids, target_ids, example_key, encoder_text (and label for classification)."""

    def text_budget(self) -> int:
        """Tokens left for the text: max_length less the prompt, or all of it with task.max_length_includes_prompt=false
        (the official LoPA NLU code truncates the text to max_length and prepends the prompt on top)."""
        prompt_tokens = self.num_virtual_tokens if self.cfg.get("max_length_includes_prompt", True) else 0
        budget = self.cfg.max_length - prompt_tokens
        if budget < self.cfg.get("min_text_tokens", 16):
            raise ConfigError(
                f"task.max_length={self.cfg.max_length} is too small for a {self.num_virtual_tokens}-token prompt "
                f"(need at least {self.num_virtual_tokens + self.cfg.get('min_text_tokens', 16)})"
            )
        return budget

    def dataloader(self, examples: list[dict], batch_size: int, shuffle: bool, **kwargs) -> DataLoader:
        collate_fn = partial(collate, pad_token_id=self.tokenizer.pad_token_id, padding_side=self.tokenizer.padding_side)
        return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, **kwargs)

    @abstractmethod
    def evaluate(self, model, loader: DataLoader, accelerator, predictions: bool = False) -> dict:
        """Metrics of `model` on the batches of `loader` (gathered over processes); with `predictions`, also each
        example's prediction in loader order (for paired comparisons between runs), where the task has one."""
