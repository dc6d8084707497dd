"""The trainer's evaluation schedule and model selection: best-of-N on a development split, none on a test split."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lopa.errors import ConfigError
from lopa.trainer import train
from tests.conftest import compose_config
from tests.helpers import build, cpu_accelerator


def scripted_scores(task, scores: list[float]) -> list[int]:
    """Make `task.evaluate` return the given accuracies in turn; returns the list of steps it was called at."""
    calls = []

    def evaluate(model, loader, accelerator, predictions=False):
        calls.append(len(calls))
        return {"accuracy": scores[len(calls) - 1], "num_examples": 1}

    task.evaluate = evaluate
    return calls


@pytest.mark.parametrize("eval_split, eval_every, expected_calls, best_step", [
    ("validation", None, 3, 4),  # an evaluation per epoch (steps 2, 4, 6); the best (second) one is selected
    ("validation", 2, 3, 4),
    ("test", None, 1, 6),  # one evaluation, after training
    ("test", 2, 3, 6),  # a learning curve, but the reported result is the last evaluation, not the best
])
def test_best_is_selected_on_dev_only(glue_data, eval_split, eval_every, expected_calls, best_step):
    model, task, examples = build(glue_data, "model=tiny-llama", "method=prompt_tuning", "method.prompt_length=2")
    OmegaConf.update(task.cfg, "splits.eval", eval_split)
    cfg = compose_config("trainer.epochs=3", "trainer.batch_size=4", f"trainer.eval_every={eval_every or 'null'}",
                         "trainer.log_every=1").trainer
    examples = examples[:8]  # 2 steps per epoch, 6 in all
    calls = scripted_scores(task, [0.5, 0.9, 0.1])
    loader = task.dataloader(examples, 4, shuffle=False)
    outcome = train(cfg, model, task, loader, loader, cpu_accelerator())
    assert outcome.steps == 6 and len(calls) == expected_calls
    assert outcome.best["step"] == best_step
    assert outcome.best is outcome.evaluations[1 if eval_split == "validation" else -1]


def trained_weights(glue_data, eval_every: int | None, holdout: bool) -> dict:
    torch.manual_seed(0)
    model, task, examples = build(glue_data, "model=tiny-llama", "method=lopa", "method.prompt_length=2", "method.rank=1")
    cfg = compose_config("trainer.epochs=2", "trainer.batch_size=4", f"trainer.eval_every={eval_every or 'null'}",
                         "trainer.log_every=1").trainer
    torch.manual_seed(1)
    train_loader = task.dataloader(examples[:8], 4, shuffle=True)
    eval_loader = task.dataloader(examples[8:12], 4, shuffle=False)
    outcome = train(cfg, model, task, train_loader, eval_loader, cpu_accelerator(),
                    holdout_loader=task.dataloader(examples[12:16], 4, shuffle=False) if holdout else None)
    assert outcome.steps == 4
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_evaluating_does_not_change_training(glue_data):
    """LoPA's heads use dropout: evaluating after every step, and on a holdout too, must leave its masks, hence the
    trained weights, as they are with one evaluation per epoch and no holdout, even with evaluation loaders that
    have no generator of their own (whose iterators draw their base seed from the global RNG)."""
    rare, often = trained_weights(glue_data, None, holdout=False), trained_weights(glue_data, 1, holdout=True)
    assert rare.keys() == often.keys()
    for name in rare:
        assert torch.equal(rare[name], often[name]), name


def weights_at_each_evaluation(glue_data, *overrides: str) -> list[dict]:
    torch.manual_seed(0)
    model, task, examples = build(glue_data, "model=tiny-llama", "method=lopa", "method.prompt_length=2", "method.rank=1")
    cfg = compose_config("trainer.batch_size=4", "trainer.eval_every=1", "trainer.scheduler=linear",
                         "trainer.warmup_steps=0", "trainer.lr=0.05", *overrides).trainer
    snapshots = []
    task.evaluate = lambda model, loader, accelerator, predictions=False: snapshots.append(
        {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}) or {"accuracy": 0.5}
    loader = task.dataloader(examples[:16], 4, shuffle=False)
    train(cfg, model, task, loader, loader, cpu_accelerator())
    return snapshots


def test_stopping_early_keeps_the_horizons_schedule(glue_data):
    """trainer.stop_at_step=2 of max_steps=4 trains exactly the full run's first two steps (the linear decay still
    spans four), which a two-step horizon does not."""
    full = weights_at_each_evaluation(glue_data, "trainer.max_steps=4")
    stopped = weights_at_each_evaluation(glue_data, "trainer.max_steps=4", "trainer.stop_at_step=2")
    short = weights_at_each_evaluation(glue_data, "trainer.max_steps=2")
    assert len(full) == 4 and len(stopped) == 2 and len(short) == 2
    assert all(torch.equal(stopped[1][name], full[1][name]) for name in full[1])
    assert not all(torch.equal(short[1][name], full[1][name]) for name in full[1])
    with pytest.raises(ConfigError, match=r"trainer.stop_at_step=5 is outside the run's schedule \(allowed: 1..4"):
        weights_at_each_evaluation(glue_data, "trainer.max_steps=4", "trainer.stop_at_step=5")
