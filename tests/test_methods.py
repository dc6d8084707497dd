"""Per method on tiny models: exactly the intended parameters get gradients, and a step leaves the FM alone."""

from __future__ import annotations

import pytest
import torch

from lopa.trainer import scored_loss
from tests.helpers import batch_of, build

PROMPT_METHODS = ["prompt_tuning", "lopa", "idpg", "accept", "lowrank_prompt", "dept", "residual_prompt"]
TINY_MODELS = ["model=tiny-llama", "model=tiny-codegen", "model=tiny-roberta", "model=tiny-t5"]


def expected_trainable(model, method: str) -> set[str]:
    names = {name for name, _ in model.named_parameters()}
    if method == "lora":
        return {n for n in names if "lora_" in n}
    if method == "full_ft":
        return {n for n in names if n.startswith("fm.")}
    return {n for n in names if n.startswith("method.") and "instance_encoder" not in n}


def one_step(model, task, examples) -> dict[str, torch.Tensor]:
    """Snapshot every parameter, take one AdamW step on a batch, and return the snapshot."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.method.param_groups(1e-2, 0.0))
    model.train()
    scored_loss(model, batch_of(task, examples[:4])).backward()
    optimizer.step()
    return before


@pytest.mark.parametrize("model_override", TINY_MODELS)
@pytest.mark.parametrize("method", PROMPT_METHODS + ["lora", "full_ft"])
def test_only_intended_parameters_train(glue_data, model_override, method):
    model, task, examples = build(glue_data, model_override, f"method={method}", "encoder=tiny-bert")
    before = one_step(model, task, examples)
    intended = expected_trainable(model, method)
    assert intended, "the method trains nothing"
    graded = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    requires = {name for name, p in model.named_parameters() if p.requires_grad}
    assert requires == intended
    assert graded <= intended and graded, f"unexpected gradients: {sorted(graded - intended)[:5]}"
    for name, p in model.named_parameters():
        if name not in intended:
            assert torch.equal(p, before[name]), f"{name} changed but must stay frozen"
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= intended


def test_prompt_inits(glue_data):
    for init in ("uniform", "vocab", "label_words"):
        model, task, _ = build(glue_data, "model=tiny-llama", "method=prompt_tuning", f"method.init={init}")
        table = model.method.prompt_table
        assert table.shape == (10, 32)
        if init == "uniform":
            assert table.min() >= -0.5 and table.max() <= 0.5
        else:  # rows are copies of vocabulary embeddings
            vocab = model.fm.get_input_embeddings().weight
            rows = [int((vocab == row).all(-1).nonzero()[0]) for row in table]
            if init == "label_words":
                assert rows[: len(task.label_word_ids)] == task.label_word_ids
    model, _, _ = build(glue_data, "model=tiny-llama", "method=prompt_tuning", "method.init=text",
                        "method.init_text='the cat sat'")
    vocab = model.fm.get_input_embeddings().weight
    ids = model.method.prompt_table @ vocab.T
    assert ids.shape == (10, vocab.shape[0])


@pytest.mark.parametrize("scale", [1, 10])
def test_lopa_shared_prompt_lr_scale_sets_z_s_rate_beside_the_heads(glue_data, scale):
    model, task, examples = build(glue_data, "model=tiny-llama", "method=lopa", "encoder=tiny-bert",
                                  f"method.shared_prompt_lr_scale={scale}")
    groups = model.method.param_groups(1e-3, 0.0)
    trainable = [p for p in model.method.parameters() if p.requires_grad]
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert groups[0]["lr"] == 1e-3  # the heads (the logged rate) keep the trainer's
    z_s = model.method.shared_prompt()
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert rate[id(z_s)] == pytest.approx(1e-3 * scale) and len(groups) == (1 if scale == 1 else 2)
    before = z_s.detach().clone()
    optimizer = torch.optim.AdamW(groups)
    model.train()
    scored_loss(model, batch_of(task, examples[:4])).backward()
    optimizer.step()
    # Adam's first step moves every element with a gradient by about its rate
    assert (z_s.detach() - before).abs().max().item() == pytest.approx(1e-3 * scale, rel=0.05)
