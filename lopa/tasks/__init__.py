"""Tasks: a YAML in configs/task/ plus, per task kind, the class that encodes and scores it."""

from __future__ import annotations

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from lopa.errors import check_choice
from lopa.tasks.base import Task
from lopa.tasks.classification import ClassificationTask

TASK_KINDS: dict[str, type[Task]] = {"classification": ClassificationTask}


def build_task(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, fm_kind: str, data_dir: str | None) -> Task:
    """The task object for `cfg.kind`."""
    if cfg.kind not in TASK_KINDS:
        from lopa.tasks.code import CodeGenerationTask  # noqa: F401  (registers itself; kept lazy)
        from lopa.tasks.vision import ImageClassificationTask  # noqa: F401  (likewise)
    check_choice("task kind", cfg.kind, TASK_KINDS)
    return TASK_KINDS[cfg.kind](cfg, tokenizer, fm_kind, data_dir)
