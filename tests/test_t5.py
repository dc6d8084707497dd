"""Encoder-decoder FMs (T5): prompts in the encoder only, label words as decoder targets, batching, generation, run.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import batch_of, build

T5 = "model=tiny-t5"
PROMPT_METHODS = ["prompt_tuning", "lopa", "idpg", "accept", "lowrank_prompt", "dept", "residual_prompt"]


def test_text_to_text_encoding(glue_data):
    model, task, examples = build(glue_data, T5, "method=prompt_tuning")
    assert task.tokenizer.padding_side == "right"
    example = examples[0]
    assert example["target_ids"] == [task.label_word_ids[example["label"]]]  # one decoder target: the label word
    assert task.tokenizer.mask_token_id not in example["input_ids"]
    assert task.template == task.cfg.causal_template


def test_logits_match_a_hand_computation_with_the_prompt_in_the_encoder(glue_data):
    model, task, examples = build(glue_data, T5, "method=prompt_tuning")
    model.eval()
    example = examples[1]
    logits, targets = model(batch_of(task, [example]))
    fm = model.fm
    ids = torch.tensor([example["input_ids"]])
    embeds = torch.cat([model.method.prompt_table.unsqueeze(0), fm.get_input_embeddings()(ids)], dim=1)
    start = torch.tensor([[fm.config.decoder_start_token_id]])
    with torch.no_grad():
        expected = fm(inputs_embeds=embeds, decoder_input_ids=start).logits[0, 0]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)
    assert targets.tolist() == [task.label_word_ids[example["label"]]]


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_batched_logits_equal_one_by_one(glue_data, method):
    model, task, examples = build(glue_data, T5, f"method={method}", "encoder=tiny-bert")
    with torch.no_grad():  # DePT's and ACCEPT's B start at zero: make the position-wise update matter
        for name, p in model.method.named_parameters():
            if "instance_encoder" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    batch_logits, _ = model(batch_of(task, examples[:6]))
    assert batch_logits.shape[0] == 6
    for i, example in enumerate(examples[:6]):
        single, _ = model(batch_of(task, [example]))
        torch.testing.assert_close(batch_logits[i], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "lopa"])
def test_batched_greedy_generation_equals_one_by_one(glue_data, method):
    model, task, examples = build(glue_data, T5, f"method={method}", "encoder=tiny-bert")
    model.eval()
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": task.tokenizer.pad_token_id}
    batched = model.generate(batch_of(task, examples[:4]), **settings)
    assert batched.shape == (4, 5)  # new tokens only: the decoder start token is dropped
    for i, example in enumerate(examples[:4]):
        single = model.generate(batch_of(task, [example]), **settings)
        assert batched[i].tolist()[: single.shape[1]] == single[0].tolist()


def test_run_py_trains_tiny_t5_end_to_end(glue_data, tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "run.py", T5, "method=accept", "task=glue/rte", f"data_dir={glue_data}",
                          "logger=none", "trainer.max_steps=3", "trainer.batch_size=4", f"hydra.run.dir={run_dir}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 3 and record["model"] == "tiny-t5"
    assert 0.0 <= record["best"]["accuracy"] <= 1.0
    assert record["num_eval_examples"] == 12


def test_cfg_job_composes_accept_on_t5_base():
    out = subprocess.run([sys.executable, "run.py", "--cfg", "job", "method=accept", "task=glue/rte", "model=t5-base"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kind: seq2seq" in out.stdout and "name: accept" in out.stdout
