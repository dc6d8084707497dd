"""Prompt-based classification: encoding, label-word scoring against a hand computation, metrics."""

from __future__ import annotations

import pytest
import torch

from lopa.errors import ConfigError
from lopa.metrics import compute_metrics
from tests.helpers import batch_of, build


def test_causal_target_is_the_label_word_after_the_text(glue_data):
    model, task, examples = build(glue_data, "model=tiny-llama", "method=prompt_tuning")
    example = examples[0]
    assert task.tokenizer.padding_side == "left"
    positions = [i for i, t in enumerate(example["target_ids"]) if t != -100]
    assert positions == [len(example["input_ids"]) - 1]
    assert example["target_ids"][-1] == task.label_word_ids[example["label"]]


def test_masked_target_sits_at_the_mask(glue_data):
    model, task, examples = build(glue_data, "model=tiny-roberta", "method=prompt_tuning")
    example = examples[1]
    mask_position = example["input_ids"].index(task.tokenizer.mask_token_id)
    assert [i for i, t in enumerate(example["target_ids"]) if t != -100] == [mask_position]


def test_label_word_scores_match_a_hand_computation(glue_data):
    """Logits at the scored position equal the FM's own logits at the last text token, after the prompt."""
    model, task, examples = build(glue_data, "model=tiny-llama", "method=prompt_tuning")
    model.eval()
    example = examples[0]
    logits, targets = model(batch_of(task, [example]))
    fm = model.fm
    ids = torch.tensor([example["input_ids"]])
    embeds = torch.cat([model.method.prompt_table.unsqueeze(0), fm.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        expected = fm(inputs_embeds=embeds).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)
    label_scores = expected[task.label_word_ids]
    assert int(label_scores.argmax()) == int(logits[0, task.label_word_ids].argmax())
    assert targets.tolist() == [task.label_word_ids[example["label"]]]


def test_truncation_never_cuts_the_mask(glue_data):
    model, task, _ = build(glue_data, "model=tiny-roberta", "method=prompt_tuning", "task.max_length=40")
    long_row = {"sentence1": "word " * 300, "sentence2": "other " * 5, "label": 0, "idx": 0}
    example = task.encode(long_row, 0, "train")
    assert len(example["input_ids"]) <= 40 - model.num_virtual_tokens
    assert task.tokenizer.mask_token_id in example["input_ids"]


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-llama"])
def test_two_long_fields_are_both_cut_to_fit(glue_data, model):
    model, task, _ = build(glue_data, f"model={model}", "method=prompt_tuning", "task.max_length=60")
    row = {"sentence1": "alpha beta gamma " * 20, "sentence2": "delta epsilon " * 25, "label": 1, "idx": 0}
    ids = task.encode(row, 0, "train")["input_ids"]
    budget = 60 - model.num_virtual_tokens
    assert budget - 3 <= len(ids) <= budget  # cut to fit, not far below it
    text = task.tokenizer.decode(ids)
    assert "alpha" in text and "delta" in text  # both fields kept a part: neither was cut away to make room


def test_label_outside_the_label_words_is_a_clear_error(glue_data):
    _, task, _ = build(glue_data, "model=tiny-llama", "method=prompt_tuning")
    with pytest.raises(ConfigError, match="label 5"):
        task.encode({"sentence1": "a", "sentence2": "b", "label": 5}, 3, "train")


def test_masked_template_without_mask_is_rejected(glue_data):
    with pytest.raises(ConfigError, match="<mask>"):
        build(glue_data, "model=tiny-roberta", "method=prompt_tuning", "task.template='{sentence1} {sentence2}'")


def test_metrics_use_evaluate_key_names():
    metrics = compute_metrics(["accuracy", "f1"], [1, 0, 1, 1], [1, 0, 0, 1])
    assert metrics == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert compute_metrics(["matthews_correlation"], [1, 0], [1, 0]) == {"matthews_correlation": 1.0}


def test_mnli_mismatched_and_cola_are_tasks_of_their_own(tmp_path):
    from lopa.runner import run
    from tests.conftest import compose_config, write_glue_fixture

    mismatched, matched = compose_config("task=glue/mnli_mm"), compose_config("task=glue/mnli")
    assert (mismatched.task.name, mismatched.task.splits.eval) == ("mnli_mm", "validation_mismatched")
    assert (matched.task.name, matched.task.splits.eval) == ("mnli", "validation_matched")
    data = write_glue_fixture(tmp_path / "data", "cola", eval_rows=10)
    cfg = compose_config("task=glue/cola", "method=zero_shot", "model=tiny-llama", f"data_dir={data}", "logger=none")
    record = run(cfg, tmp_path / "run")
    assert (record["task"], record["primary_metric"]) == ("cola", "matthews_correlation")
    assert -1 <= record["best"]["matthews_correlation"] <= 1 and "accuracy" in record["best"]
