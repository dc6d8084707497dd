"""ACCEPT, low-rank prompts, DePT and residual prompt tuning: what trains, what they reduce to, merging, alignment."""

from __future__ import annotations

import json

import pytest
import torch

from baselines.accept import ProductQuantised
from lopa.errors import ConfigError
from lopa.runner import run
from lopa.soft_prompt import add_positionwise
from lopa.trainer import scored_loss
from tests.conftest import compose_config
from tests.helpers import batch_of, build

SEED_METHODS = ["accept", "lowrank_prompt", "dept", "residual_prompt"]
LLAMA = "model=tiny-llama"


def share_fm(source, target) -> None:
    """The tiny FMs are random: give `target` the weights of `source`, as one pretrained checkpoint would."""
    target.fm.load_state_dict(source.fm.state_dict())


def graded(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_each_part_gets_gradients_and_the_fm_none(glue_data):
    expectations = {
        "accept": {"method.scpp.weights", "method.scpp.codebooks", "method.lowrank_update.B"},
        "lowrank_prompt": {"method.factors.A", "method.factors.B"},
        "dept": {"method.prompt_table", "method.update.B"},  # B = 0 at init: A's gradient is zero on the first step
        "residual_prompt": {"method.prompt_table", "method.reparameterisation.down.weight",
                            "method.reparameterisation.up.weight", "method.reparameterisation.norm.weight"},
    }
    extra = {"lowrank_prompt": ["method.frozen_init=vocab"]}  # the frozen P0 is a buffer: no gradient, not trained
    for method, expected in expectations.items():
        model, task, examples = build(glue_data, LLAMA, f"method={method}", *extra.get(method, []))
        model.train()
        scored_loss(model, batch_of(task, examples[:4])).backward()
        got = graded(model)
        assert expected <= got, f"{method}: {sorted(expected - got)} got no gradient"
        assert all(name.startswith("method.") for name in got), method
        assert all(p.grad is None for p in model.fm.parameters()), method


def test_dept_update_a_trains_after_the_first_step(glue_data):
    model, task, examples = build(glue_data, LLAMA, "method=dept")
    optimizer = torch.optim.AdamW(model.method.param_groups(1e-2, 0.0))
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        scored_loss(model, batch_of(task, examples[:4])).backward()
        optimizer.step()
    assert model.method.update.A.grad.abs().sum() > 0


@pytest.mark.parametrize("method, overrides", [
    ("lowrank_prompt", ["method.frozen_init=vocab", "method.dropout=0.3"]),
    ("lowrank_prompt", ["method.init=svd", "method.svd_source=vocab"]),
    ("residual_prompt", ["method.dropout=0.2"]),
])
def test_merged_prompt_gives_the_same_logits(glue_data, method, overrides):
    model, task, examples = build(glue_data, LLAMA, f"method={method}", *overrides)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = batch_of(task, examples[:5])
    model.eval()
    before, _ = model(batch)
    model.method.merge()
    after, _ = model(batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    trainable = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"method.merged_prompt": torch.Size([model.num_virtual_tokens, 32])}
    assert model.method.saved_buffer_names() == []
    model.train()  # merged prompts have no dropout left: training mode changes nothing
    torch.testing.assert_close(model(batch)[0], before, atol=1e-5, rtol=1e-5)


def test_lowrank_svd_init_reproduces_a_rank_r_text_prompt(glue_data):
    # 'the cat sat' repeated: the text prompt has rank 3, so its rank-3 SVD factors reproduce it exactly.
    model, *_ = build(glue_data, LLAMA, "method=lowrank_prompt", "method.prompt_length=9", "method.rank=3",
                      "method.init=svd", "method.svd_source=text", "method.init_text='the cat sat'")
    factors = model.method.factors
    product = factors.A @ factors.B
    assert torch.linalg.matrix_rank(product) == 3
    rows = product[:3]
    torch.testing.assert_close(product, rows.repeat(3, 1), atol=1e-5, rtol=1e-5)
    vocab = model.fm.get_input_embeddings().weight
    for row in rows:  # each row is (up to float error) one vocabulary embedding
        assert torch.isclose(vocab, row, atol=1e-5).all(-1).any()


def test_accept_with_one_hot_weights_is_prompt_tuning_with_those_codewords(glue_data):
    overrides = ["method.prompt_length=6", "method.subspace_dim=8", "method.codebook_size=3"]
    accept, task, examples = build(glue_data, LLAMA, "method=accept", *overrides)
    scpp = accept.method.scpp
    assert scpp.weights.shape == (6, 4, 3) and scpp.codebooks.shape == (4, 3, 8)
    choice = torch.randint(3, (6, 4))
    with torch.no_grad():
        scpp.weights.copy_(torch.nn.functional.one_hot(choice, 3).float())
    table = torch.cat([scpp.codebooks[k, choice[:, k]] for k in range(4)], dim=1)  # token i: [C^1_j1 ; ... ; C^4_j4]
    torch.testing.assert_close(accept.method.prompt_matrix(), table)

    tuning, _, _ = build(glue_data, LLAMA, "method=prompt_tuning", "method.prompt_length=6")
    share_fm(accept, tuning)
    with torch.no_grad():
        tuning.method.prompt_table.copy_(table)
    batch = batch_of(task, examples[:5])
    accept.eval(), tuning.eval()
    # The added update (DePT's A·B, B = 0 at init) adds exactly zero.
    torch.testing.assert_close(accept(batch)[0], tuning(batch)[0])


def test_dept_with_zero_b_is_prompt_tuning_and_with_b_is_not(glue_data):
    dept, task, examples = build(glue_data, LLAMA, "method=dept", "method.prompt_length=10")
    tuning, _, _ = build(glue_data, LLAMA, "method=prompt_tuning", "method.prompt_length=10")
    share_fm(dept, tuning)
    with torch.no_grad():
        tuning.method.prompt_table.copy_(dept.method.prompt_table)
    batch = batch_of(task, examples[:5])
    dept.eval(), tuning.eval()
    torch.testing.assert_close(dept(batch)[0], tuning(batch)[0])
    with torch.no_grad():
        dept.method.update.B.normal_()
    assert not torch.allclose(dept(batch)[0], tuning(batch)[0])


def test_positionwise_update_meets_text_tokens_not_columns():
    update = torch.arange(5.0).unsqueeze(1).expand(5, 2)  # row j holds j
    embeds = torch.zeros(2, 4, 2)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert add_positionwise(embeds, left, update)[..., 0].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert add_positionwise(embeds, right, update)[..., 0].tolist() == [[0, 1, 0, 0], [0, 1, 2, 3]]
    with pytest.raises(ConfigError, match="4 tokens.*s=3"):
        add_positionwise(embeds, left, update[:3])


@pytest.mark.parametrize("method, overrides", [
    ("dept", []),
    ("accept", ["method.use_scap=true", "method.scap_subspace_dim=8"]),
])
def test_positionwise_methods_batched_equal_one_by_one(glue_data, method, overrides):
    model, task, examples = build(glue_data, LLAMA, f"method={method}", *overrides)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    batched, _ = model(batch_of(task, examples[:6]))
    for i, example in enumerate(examples[:6]):
        single, _ = model(batch_of(task, [example]))
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["dept", "accept"])
def test_input_longer_than_the_update_is_a_config_error(glue_data, method):
    model, task, examples = build(glue_data, LLAMA, f"method={method}", "method.update_length=8")
    with pytest.raises(ConfigError, match="s=8"):
        model(batch_of(task, examples[:2]))


def test_accept_switches_and_counts(glue_data):
    def trainable(*overrides):
        model, *_ = build(glue_data, LLAMA, "method=accept", "method.prompt_length=6", "method.subspace_dim=8",
                          "method.codebook_size=3", "method.update_length=40", *overrides)
        return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}

    scpp = 6 * 4 * 3 + 4 * 3 * 8
    assert sum(trainable("method.update_rank=0").values()) == scpp
    assert sum(trainable("method.update_rank=5").values()) == scpp + 40 * 5 + 5 * 32
    with_scap = trainable("method.use_scap=true", "method.scap_subspace_dim=16", "method.scap_codebook_size=2")
    assert sum(with_scap.values()) == scpp + 40 * 2 * 2 + 2 * 2 * 16 and "method.scap.codebooks" in with_scap
    plain = trainable("method.use_scpp=false", "method.update_rank=0")
    assert plain == {"method.prompt_table": 6 * 32}


def test_accept_two_learning_rates(glue_data):
    model, *_ = build(glue_data, LLAMA, "method=accept", "method.subspace_dim=8")
    cfg = model.method.cfg
    groups = model.method.param_groups(cfg.lr, cfg.weight_decay)
    assert [g["lr"] for g in groups] == [0.3, 1e-3] and cfg.lr == cfg.prompt_lr
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.method.scpp.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.method.lowrank_update.parameters()}


def test_subspace_dim_must_divide_d(glue_data):
    with pytest.raises(ConfigError, match="subspace_dim=5 must divide .* d=32"):
        build(glue_data, LLAMA, "method=accept", "method.subspace_dim=5")


def test_product_quantised_count_formula():
    with torch.device("meta"):
        part = ProductQuantised(60, 768, 32, 20)
    assert sum(p.numel() for p in part.parameters()) == 60 * 24 * 20 + 24 * 20 * 32 == 44_160


@pytest.mark.parametrize("model_override", [LLAMA, "model=tiny-t5"])
@pytest.mark.parametrize("method", SEED_METHODS)
def test_end_to_end_run_writes_a_record(glue_data, tmp_path, model_override, method):
    cfg = compose_config(f"data_dir={glue_data}", "logger=none", model_override, f"method={method}",
                         "trainer.max_steps=2", "trainer.batch_size=4", "eval.limit=6", "method.prompt_length=12")
    record = run(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "completed" and saved["steps"] == 2
    assert 0.0 <= record["best"]["accuracy"] <= 1.0 and record["parameters"]["trainable"] > 0
    assert (tmp_path / "run" / "weights" / "trained.safetensors").is_file()
