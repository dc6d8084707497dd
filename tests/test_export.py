"""Trained weights in the conventions other tools read: LoRA as a PEFT adapter directory; the Hub push option."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from peft import PeftModel

from lopa.errors import ConfigError
from lopa.records import load_trained
from lopa.runner import build_model, check_config, load_components
from tests.conftest import REPO, compose_config
from tests.helpers import batch_of


def test_lora_adapter_loads_with_peft_and_gives_our_logits(glue_data, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "run.py", "model=tiny-llama", "method=lora", f"data_dir={glue_data}",
                          "trainer.max_steps=2", "method.lr=0.05", "logger=none", f"hydra.run.dir={run_dir}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    peft_dir = run_dir / "weights" / "peft"
    assert (peft_dir / "adapter_config.json").is_file() and (peft_dir / "adapter_model.safetensors").is_file()
    assert json.loads((peft_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"

    cfg = OmegaConf.load(run_dir / "config.yaml")
    set_seed(cfg.seed)  # the tiny FM's random weights, as in the run
    tokenizer, fm, task = load_components(cfg, cfg.data_dir)
    ours = build_model(cfg, tokenizer, fm, task, [])
    load_trained(ours, run_dir / "weights")
    set_seed(cfg.seed)
    _, base, _ = load_components(cfg, None)
    batch = batch_of(task, [task.encode(row, i, "eval") for i, row in enumerate(task.load("eval")[:4])])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        base_logits_before = base(**inputs).logits
        theirs = PeftModel.from_pretrained(base, str(peft_dir)).eval()
        ours.eval()
        expected = ours.fm(**inputs).logits
        assert torch.allclose(theirs(**inputs).logits, expected, atol=1e-5)
    assert not torch.allclose(base_logits_before, expected, atol=1e-3)  # the adapter changed something


def test_push_to_hub_is_checked_before_anything_runs(glue_data):
    base = [f"data_dir={glue_data}", "model=tiny-llama", "logger=none"]
    check_config(compose_config(*base, "trainer.push_to_hub=someone/lopa-rte"))  # valid: nothing raised
    for value, message in (("'not a repo id!'", "is not a Hub repo id"), ("5", "is not a Hub repo id")):
        with pytest.raises(ConfigError, match=message):
            check_config(compose_config(*base, f"trainer.push_to_hub={value}"))
    with pytest.raises(ConfigError, match="needs mode=train and trainer.save_weights=true"):
        check_config(compose_config(*base, "trainer.push_to_hub=someone/lopa-rte", "trainer.save_weights=false"))
