"""Trainer behaviours the paper-scale runs rely on: accumulation equals a larger batch, seeds matter (and only
seeds), and the learning rate follows its schedule step by step."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lopa.runner import run
from tests.conftest import compose_config, write_glue_fixture

BASE = ["model=tiny-llama", "method=prompt_tuning", "method.prompt_length=4", "task=glue/sst2", "logger=none",
        "device=cpu", "trainer.log_every=1", "trainer.eval_every=null", "eval.batch_size=8"]


@pytest.fixture
def data(tmp_path):
    return write_glue_fixture(tmp_path / "data", "sst2", train_rows=16, eval_rows=6)


def trained(tmp_path, data, name: str, *overrides: str) -> tuple[dict, dict]:
    cfg = compose_config(*BASE, f"data_dir={data}", *overrides)
    record = run(cfg, tmp_path / name)
    return record, load_file(str(tmp_path / name / "weights" / "trained.safetensors"))


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path, data):
    full, full_weights = trained(tmp_path, data, "full", "trainer.batch_size=4", "trainer.max_steps=3")
    halves, half_weights = trained(tmp_path, data, "halves", "trainer.batch_size=2", "trainer.grad_accum_steps=2",
                                   "trainer.max_steps=3")
    assert halves["steps"] == full["steps"] == 3
    for name, tensor in full_weights.items():
        torch.testing.assert_close(half_weights[name], tensor, rtol=1e-5, atol=1e-6)
    assert [e["loss"] for e in halves["train_losses"]] == pytest.approx([e["loss"] for e in full["train_losses"]],
                                                                        rel=1e-5)


def test_the_same_seed_repeats_a_run_and_another_seed_does_not(tmp_path, data):
    first, first_weights = trained(tmp_path, data, "a", "seed=1", "trainer.max_steps=2")
    again, again_weights = trained(tmp_path, data, "b", "seed=1", "trainer.max_steps=2")
    other, other_weights = trained(tmp_path, data, "c", "seed=2", "trainer.max_steps=2")
    assert all(torch.equal(first_weights[k], again_weights[k]) for k in first_weights)
    assert first["train_losses"] == again["train_losses"]
    assert not all(torch.equal(first_weights[k], other_weights[k]) for k in first_weights)


@pytest.mark.parametrize("scheduler, expected", [
    ("constant_with_warmup", [0.5, 1.0, 1.0, 1.0]),  # warm-up over 2 steps, then constant
    ("linear", [0.5, 1.0, 0.5, 0.0]),  # up over 2 steps, down to 0 at step 4
    ("constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_the_learning_rate_follows_the_schedule_step_by_step(tmp_path, data, scheduler, expected):
    record, _ = trained(tmp_path, data, scheduler, f"trainer.scheduler={scheduler}", "trainer.warmup_steps=2",
                        "trainer.max_steps=4", "trainer.lr=0.01", "trainer.batch_size=4")
    # each entry: the rate after that step's scheduler step, i.e. the rate of the next step
    assert [entry["lr"] for entry in record["train_losses"]] == pytest.approx([0.01 * f for f in expected])
