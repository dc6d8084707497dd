"""The trainer's evaluation schedule and model selection: best-of-N on a development split, none on a test split."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

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
