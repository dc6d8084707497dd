"""Shared fixtures: Hydra composition, fixture data written by the tests, tiny models."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
SHARED_DATA = Path(os.environ.get("LOPA_DATA_DIR", REPO.parent / "shared" / "data"))

WORDS = "the a cat dog sat ran on under mat house river big small red quickly slowly saw found bird tree".split()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state: a test's Accelerator(mixed_precision=...) must not meet an earlier
    test's settings (it raises, or silently inherits them)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def sentence(rng: random.Random, length: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + "."


def write_glue_fixture(root: Path, task: str = "rte", train_rows: int = 24, eval_rows: int = 12, seed: int = 0) -> Path:
    """Random two-sentence (or one-sentence for sst2) rows in the ../shared/data layout."""
    rng = random.Random(seed)
    fields = ["sentence"] if task in ("sst2", "cola") else ["sentence1", "sentence2"]
    for split, count in (("train", train_rows), ("validation", eval_rows)):
        path = root / task / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for idx in range(count):
                row = {name: sentence(rng, rng.randint(4, 12)) for name in fields}
                out.write(json.dumps({**row, "label": idx % 2, "idx": idx}) + "\n")
    return root


@pytest.fixture
def glue_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for task in ("rte", "sst2", "mrpc"):
        write_glue_fixture(data, task)
    return data


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
