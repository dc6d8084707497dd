"""CLIP as an FM kind, the image-classification task, CoOp and RLP: on the tiny random CLIP and a few 8×8 images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.rlp import MERGED_PROMPT_FILE
from lopa.clip import pooled_positions
from lopa.tasks.vision import base_new_split, few_shot_indices
from tests.conftest import REPO
from tests.helpers import batch_of, build, cpu_accelerator

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def image_data(tmp_path: Path) -> Path:
    """<root>/digits/{train,test}/<class>/*.png: 3 training and 1 test image per class, random 8×8 grayscale."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, count in (("train", 3), ("test", 1)):
        for name in DIGITS:
            folder = root / "digits" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_pooling_finds_eos_as_clip_does_for_new_and_legacy_configs():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 9, 102, 0, 0, 0]])
    assert pooled_positions(ids, 102).tolist() == [3, 2]  # first eos_token_id
    assert pooled_positions(torch.tensor([[49406, 5, 49407, 0]]), 2).tolist() == [2]  # legacy: the highest id


def test_prompt_after_the_start_token_matches_clip_reading_the_same_tokens(image_data):
    """A context equal to the embeddings of "a photo of a" gives CLIP's own features of "a photo of a <class>.", and
    a zero context those of the same text with a zeroed token in its place: positions, causal mask and EOS pooling
    are CLIP's, and the context changes the features only through its rows."""
    model, task, examples = build(image_data, "model=tiny-clip", "task=vision/digits", "method=coop")
    fm, kind, tokenizer = model.fm, model.kind, task.tokenizer
    model.eval()
    ids, mask = task.class_tokens("eval")  # "[CLS] <name>. [SEP]" after the context
    full = tokenizer([f"a photo of a {name}." for name in DIGITS], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = kind.text_features(model.method, ids, mask)
        theirs = torch.nn.functional.normalize(fm.get_text_features(**full).pooler_output, dim=-1)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)

        unused = tokenizer.convert_tokens_to_ids("[unused1]")
        table = kind.token_embeddings(fm).weight
        table[unused] = 0.0
        model.method.prompt_table.zero_()
        zero_context = kind.text_features(model.method, ids, mask)
        zeroed_ids = torch.cat([ids[:, :1], torch.full((len(ids), 4), unused), ids[:, 1:]], dim=1)
        zeroed_mask = torch.cat([mask[:, :1], torch.ones(len(ids), 4, dtype=mask.dtype), mask[:, 1:]], dim=1)
        reference = fm.get_text_features(input_ids=zeroed_ids, attention_mask=zeroed_mask).pooler_output
        torch.testing.assert_close(zero_context, torch.nn.functional.normalize(reference, dim=-1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(zero_context, ours)


def test_rlp_merge_gives_identical_logits_and_counts_m_r_plus_r_d(image_data):
    model, task, examples = build(image_data, "model=tiny-clip", "task=vision/digits", "method=rlp", "method.dropout=0.5")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * 1 + 1 * 32
    with torch.no_grad():
        model.method.factors.A.normal_()  # A starts at 0 (the prompt starts at P0): move it so the update matters
    batch = batch_of(task, examples[:6])
    model.eval()
    with torch.no_grad():
        before, labels = model(batch)
        model.method.merge()
        after, _ = model(batch)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert before.shape == (6, 10) and labels.tolist() == [e["label"] for e in examples[:6]]
    assert [name for name, _ in model.method.named_parameters()] == ["merged_prompt"]


def test_few_shot_sample_is_balanced_and_fixed_by_the_seed():
    labels = [i % 4 for i in range(40)] + [4]  # class 4 has a single image
    first = few_shot_indices(labels, [0, 1, 2, 3, 4], shots=3, seed=1)
    assert first == few_shot_indices(labels, [0, 1, 2, 3, 4], shots=3, seed=1)
    assert first != few_shot_indices(labels, [0, 1, 2, 3, 4], shots=3, seed=2)
    assert [sum(labels[i] == c for i in first) for c in range(5)] == [3, 3, 3, 3, 1]


def test_base_to_new_trains_on_base_classes_and_scores_each_half_among_its_own(image_data):
    base, new = base_new_split(11)
    assert (base, new) == (list(range(6)), list(range(6, 11)))  # CoCoOp: ceil(C/2) base classes, disjoint
    model, task, examples = build(image_data, "model=tiny-clip", "task=vision/digits_b2n", "method=coop", "task.shots=2")
    assert sorted(e["label"] for e in examples) == sorted([c for c in range(5)] * 2)  # 2 shots of each base class
    assert batch_of(task, examples)["class_input_ids"].shape[0] == 5  # training logits over the base classes only
    eval_examples = [task.encode(row, i, "eval") for i, row in enumerate(task.load("eval"))]
    batch = batch_of(task, eval_examples)
    model.eval()
    with torch.no_grad():
        logits = task.group_logits(model, batch)
    kept = torch.isfinite(logits)
    assert kept.shape == (10, 10)
    for row, group in zip(kept, batch["groups"].tolist()):
        assert row.nonzero().flatten().tolist() == (list(range(5)) if group == 0 else list(range(5, 10)))
    metrics = task.evaluate(model, task.dataloader(eval_examples, 4, shuffle=False), cpu_accelerator())
    assert set(metrics) == {"num_examples", "base_accuracy", "new_accuracy", "harmonic_mean"}


def test_clip_parameter_counts_on_vit_b16(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    from param_counts import CASES, main

    assert main([case for case in CASES if case.method in ("rlp", "coop")]) == 0
    assert "516" in capsys.readouterr().out


def test_run_py_rlp_on_the_image_folder_writes_base_new_and_h(image_data, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "run.py", "method=rlp", "task=vision/digits_b2n", "model=tiny-clip",
                             f"data_dir={image_data}", "trainer.max_steps=2", "logger=none", f"hydra.run.dir={run_dir}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["primary_metric"] == "harmonic_mean" and record["parameters"]["trainable"] == 36
    assert {"base_accuracy", "new_accuracy", "harmonic_mean"} <= set(record["best"])
    assert (run_dir / "weights" / MERGED_PROMPT_FILE).is_file()
