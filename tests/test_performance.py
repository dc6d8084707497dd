"""Speed options that must not change results: gradient checkpointing and bf16 autocast with soft prompts.

Correctness only; timings live in scripts/bench.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers.modeling_utils
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from lopa.records import WEIGHTS_FILE
from lopa.runner import run
from lopa.trainer import enable_activation_checkpointing, scored_loss
from tests.conftest import REPO, compose_config, write_glue_fixture
from tests.helpers import batch_of, build

TINY = ("model=tiny-llama", "encoder=tiny-bert")


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose precision cannot change: start and leave it empty."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def gradients(model, batch: dict) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)  # the same dropout masks (LoPA's heads, LoRA) in both models
    scored_loss(model, batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(glue_data, method):
    torch.manual_seed(0)
    plain, task, examples = build(glue_data, *TINY, f"method={method}")
    torch.manual_seed(0)
    checkpointed, _, _ = build(glue_data, *TINY, f"method={method}")
    enable_activation_checkpointing(checkpointed.fm)
    calls = []
    mlp = checkpointed.fm.base_model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)  # the recompute skips hooks
    batch = batch_of(task, examples[:6])

    expected, actual = gradients(plain, batch), gradients(checkpointed, batch)

    assert len(calls) == 2  # the layer ran again in the backward pass: checkpointing was really on
    assert expected.keys() == actual.keys()
    assert any(g.abs().sum() > 0 for g in expected.values())  # LoRA's A gets none at init (B starts at zero)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_trainer_option_gradient_checkpointing_trains_identically(tmp_path, fresh_accelerate_state, monkeypatch):
    """`trainer.gradient_checkpointing=true` through the whole run: same losses and weights as without."""
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=4)
    checkpointed_calls = []
    checkpoint = transformers.modeling_utils.checkpoint
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint",
                        lambda *args, **kwargs: checkpointed_calls.append(1) or checkpoint(*args, **kwargs))
    outcomes = []
    for flag in ("false", "true"):
        AcceleratorState._reset_state(reset_partial_state=True)
        cfg = compose_config(*TINY, "method=lopa", "logger=none", "device=cpu", f"data_dir={data}",
                             "trainer.batch_size=4", "trainer.max_steps=3", "trainer.log_every=1",
                             f"trainer.gradient_checkpointing={flag}")
        run(cfg, tmp_path / flag)
        record = json.loads((tmp_path / flag / "results.json").read_text())
        outcomes.append((record, load_file(tmp_path / flag / "weights" / WEIGHTS_FILE)))
        assert bool(checkpointed_calls) == (flag == "true")  # the layers really ran under checkpoint()
    (plain, plain_weights), (checkpointed, checkpointed_weights) = outcomes
    assert checkpointed["status"] == "completed" and checkpointed["steps"] == 3
    assert [x["loss"] for x in checkpointed["train_losses"]] == pytest.approx(
        [x["loss"] for x in plain["train_losses"]], abs=1e-5)
    assert plain_weights.keys() == checkpointed_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(checkpointed_weights[name], plain_weights[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa"])
def test_bf16_autocast_runs_a_step_with_a_soft_prompt(glue_data, method, fresh_accelerate_state):
    """Through Accelerate on CPU: the FM computes in bf16, the prompt parameters and their gradients stay fp32."""
    model, task, examples = build(glue_data, *TINY, f"method={method}")
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    optimizer = torch.optim.AdamW(model.method.param_groups(1e-2, 0.0))
    model, optimizer = accelerator.prepare(model, optimizer)
    dtypes = []
    model.fm.base_model.layers[0].mlp.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in trainable]

    model.train()
    loss = scored_loss(model, batch_of(task, examples[:4]))
    accelerator.backward(loss)
    optimizer.step()

    assert dtypes == [torch.bfloat16]
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before))


def test_bf16_run_completes(tmp_path, fresh_accelerate_state):
    """`trainer.mixed_precision=bf16` end to end on CPU with LoPA, evaluation included."""
    data = write_glue_fixture(tmp_path / "data", "rte", train_rows=8, eval_rows=4)
    cfg = compose_config(*TINY, "method=lopa", "logger=none", "device=cpu", f"data_dir={data}", "trainer.batch_size=4",
                         "trainer.max_steps=2", "trainer.log_every=1", "trainer.mixed_precision=bf16")
    record = run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["steps"] == 2
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in record["train_losses"])
    assert 0.0 <= record["final"]["accuracy"] <= 1.0


def test_bf16_bench_writes_both_times_and_the_cpu_flag(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_bf16", REPO / "scripts" / "bench_bf16.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench_bf16.json"
    assert bench.main(["--rows", "8", "--shape", "16", "32", "--repeats", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["median_ms"]) == {"float32", "bfloat16"} and all(t > 0 for t in record["median_ms"].values())
    assert record["bf16_over_fp32"] == pytest.approx(record["median_ms"]["bfloat16"] / record["median_ms"]["float32"],
                                                     rel=0.02)
    assert "cpu_bf16" in record["machine"] and record["command"].startswith("python scripts/bench_bf16.py --rows 8")
