"""Token losses are summed and divided by the window's global target-token count: under gradient accumulation (and
across processes) a micro-batch with more target tokens weighs more, exactly as if the window were one batch."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from lopa.trainer import train
from tests.conftest import SHARED_DATA, compose_config
from tests.helpers import build

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "cruxeval").is_dir(), reason=f"no benchmark data at {SHARED_DATA}")


def gradients_and_loss(model, task, examples, batch_size: int, accumulate: int) -> tuple[dict, float]:
    """The gradient the first optimiser step applies (captured after the window's last backward) and its logged loss."""
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = compose_config("trainer.max_steps=1", f"trainer.batch_size={batch_size}",
                         f"trainer.grad_accum_steps={accumulate}", "trainer.log_every=1", "trainer.max_grad_norm=null",
                         "trainer.eval_every=null").trainer
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            parameter.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
    task.evaluate = lambda *args, **kwargs: {task.primary_metric: 0.0}  # no generation: only the step matters here
    loader = task.dataloader(examples, batch_size, shuffle=False)
    outcome = train(cfg, model, task, loader, loader, Accelerator(cpu=True, gradient_accumulation_steps=accumulate))
    AcceleratorState._reset_state(reset_partial_state=True)
    return grads, outcome.train_losses[0]["loss"]


def test_two_micro_batches_of_unequal_token_counts_step_as_one_batch():
    model, task, examples = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "method.prompt_length=2",
                                  "task=code/cruxeval_o")
    counts = {len([t for t in e["target_ids"] if t != -100]): e for e in examples}
    short, long = counts[min(counts)], counts[max(counts)]
    assert min(counts) * 2 < max(counts)  # answers of very different lengths
    whole, whole_loss = gradients_and_loss(copy.deepcopy(model), task, [short, long], batch_size=2, accumulate=1)
    halves, halves_loss = gradients_and_loss(copy.deepcopy(model), task, [short, long], batch_size=1, accumulate=2)
    assert halves_loss == pytest.approx(whole_loss, rel=1e-5)  # the mean over all target tokens, logged as such
    assert whole.keys() == halves.keys() and whole
    for name in whole:
        torch.testing.assert_close(halves[name], whole[name], rtol=1e-4, atol=1e-7)
