"""Build tiny tuned models from composed configs (kept out of conftest so tests can import it)."""

from __future__ import annotations

import socket
from pathlib import Path

from accelerate import Accelerator

from lopa.models import load_fm, load_tokenizer
from lopa.runner import build_model
from lopa.soft_prompt import TunedModel
from lopa.tasks import build_task
from lopa.tasks.base import Task
from tests.conftest import compose_config


def build(data_dir: Path, *overrides: str) -> tuple[TunedModel, Task, list[dict]]:
    """A tiny tuned model, its task, and encoded training examples."""
    cfg = compose_config(f"data_dir={data_dir}", "logger=none", *overrides)
    tokenizer = load_tokenizer(cfg.model)
    fm = load_fm(cfg.model, tokenizer)
    task = build_task(cfg.task, tokenizer, cfg.model.kind, str(data_dir))
    rows = task.load("train")
    model = build_model(cfg, tokenizer, fm, task, rows)
    examples = [task.encode(row, i, "train") for i, row in enumerate(rows)]
    return model, task, examples


def batch_of(task: Task, examples: list[dict]) -> dict:
    return next(iter(task.dataloader(examples, len(examples), shuffle=False)))


def cpu_accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def accepted_connection(server: socket.socket) -> bool:
    """Whether a non-blocking listening socket has a connection waiting (a sandboxed program got through)."""
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True
