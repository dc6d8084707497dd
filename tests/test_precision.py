"""Trainable tensors are fp32 master weights whatever the FM's dtype, so small updates are not rounded away."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from lopa.runner import count_parameters
from lopa.trainer import train
from tests.conftest import compose_config
from tests.helpers import build


@pytest.mark.parametrize("method", ["lora", "full_ft", "prompt_tuning"])
def test_trainable_parameters_are_fp32_on_a_bf16_fm(glue_data, method):
    model, _, _ = build(glue_data, "model=tiny-llama", "model.dtype=bfloat16", f"method={method}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert count_parameters(model)["trainable_dtypes"] == ["float32"]
    if method == "lora":  # the frozen base weights stay in the FM's dtype
        assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)


def test_lora_update_on_a_bf16_fm_is_not_rounded_away(glue_data):
    """One AdamW step of lr 1e-4 moves every LoRA B entry by ~1e-4; in bf16 (8 bits of mantissa) most would not move."""
    model, task, examples = build(glue_data, "model=tiny-llama", "model.dtype=bfloat16", "method=lora",
                                  "method.dropout=0")
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.constant_(parameter, 1.0)  # where bf16's spacing (2^-7) dwarfs a 1e-4 step
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = compose_config("trainer.max_steps=1", "trainer.batch_size=4", "trainer.lr=1e-4", "trainer.warmup_steps=0",
                         "trainer.mixed_precision=bf16", "trainer.max_grad_norm=null").trainer
    loader = task.dataloader(examples[:4], 4, shuffle=False)
    train(cfg, model, task, loader, loader, Accelerator(cpu=True, mixed_precision="bf16"))
    moved = [not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if "lora_B" in n]
    assert moved and all(moved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Accelerate's fp16 mixed precision needs a GPU")
def test_fp16_training_with_grad_scaler(glue_data):
    model, task, examples = build(glue_data, "model=tiny-llama", "model.dtype=float16", "method=lora")
    cfg = compose_config("trainer.max_steps=2", "trainer.batch_size=4", "trainer.mixed_precision=fp16").trainer
    loader = task.dataloader(examples[:8], 4, shuffle=False)
    outcome = train(cfg, model, task, loader, loader, Accelerator(mixed_precision="fp16"))
    assert outcome.steps == 2 and all(torch.isfinite(torch.tensor(x["loss"])) for x in outcome.train_losses)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_that_it_is_emulated(tmp_path, monkeypatch, caplog, native):
    import lopa.runner

    monkeypatch.setattr(lopa.runner, "cpu_info", lambda: {"cpu": "Some Xeon", "cpu_bf16": native})
    cfg = compose_config("model=tiny-llama", "device=cpu", "logger=none", "trainer.mixed_precision=bf16")
    lopa.runner.make_accelerator(cfg, tmp_path)
    warned = "bf16 is emulated" in caplog.text and "Some Xeon" in caplog.text
    assert warned is not native
