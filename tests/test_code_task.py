"""Code tasks on tiny models: train -> generate -> execute, generate-only then execute-only, reference scoring."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lopa.code_prompts import truncate_at_stops
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import batch_of, build, cpu_accelerator

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "cruxeval").is_dir(), reason=f"no benchmark data at {SHARED_DATA}")


@pytest.mark.parametrize("task", ["code/cruxeval_o", "code/cruxeval_i", "code/mbpp"])
def test_training_targets_are_the_answer_and_eos_only(task):
    model, code_task, examples = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", f"task={task}")
    example = examples[0]
    ids, targets = example["input_ids"], example["target_ids"]
    scored = [t for t in targets if t != -100]
    answer = code_task.tokenizer.encode(code_task.format.answer(code_task.load("train")[0]), add_special_tokens=False)
    assert scored == answer + [code_task.tokenizer.eos_token_id]
    first = targets.index(scored[0])
    assert ids[first + 1:] == scored  # position t predicts token t+1


def test_splits_follow_the_paper():
    _, crux, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/cruxeval_o")
    assert [r["id"] for r in crux.load("train")][:1] == ["sample_0"] and len(crux.load("train")) == 400
    assert crux.load("eval")[0]["id"] == "sample_400" and len(crux.load("eval")) == 400
    _, mbpp, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/mbpp")
    assert {r["task_id"] for r in mbpp.load("train")} == set(range(1, 488))
    assert {r["task_id"] for r in mbpp.load("eval")} == set(range(488, 975))


def test_the_instance_encoder_reads_the_instance_not_the_shared_preamble():
    _, mbpp, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/mbpp")
    row = mbpp.load("train")[0]
    assert mbpp.text(row) == mbpp.format.prompt(row)  # MBPP's prompt is all instance
    _, crux, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/cruxeval_o")
    row = crux.load("train")[0]
    assert row["code"] in crux.text(row) and row["code"] in crux.format.prompt(row)
    assert len(crux.text(row)) < len(crux.format.prompt(row))  # without the two in-context examples


def test_references_score_full_marks_through_the_task(tmp_path):
    _, task, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/mbpp")
    rows = task.load("eval", limit=6)
    generations = []
    for row in rows:
        key = task.example_key(row, "eval")
        task.rows_by_key[key] = row
        reference = truncate_at_stops(task.format.answer(row), list(task.cfg.generation.stop))
        generations.append({"example_key": key, "samples": [reference, "    return None\n"]})
    scores, executions = task.execute(generations, task.rows_by_key)
    assert scores["pass@1"] == pytest.approx(0.5)  # one right and one wrong sample per problem
    assert [e["passed"] for e in executions] == [True, False] * 6


def test_generation_is_batched_and_equals_one_by_one():
    model, task, _ = build(SHARED_DATA, "model=tiny-llama", "method=lopa", "encoder=tiny-bert", "task=code/cruxeval_o",
                           "task.generation.do_sample=false", "task.generation.max_new_tokens=8", "trainer.train_limit=4")
    examples = [task.encode(row, i, "eval") for i, row in enumerate(task.load("eval", limit=4))]
    accelerator = cpu_accelerator()
    batched = task.generate(model, task.dataloader(examples, 4, shuffle=False), accelerator)
    single = [task.generate(model, task.dataloader([e], 1, shuffle=False), accelerator)[0] for e in examples]
    assert batched == single
    assert all(len(record["samples"]) == 1 for record in batched)


def test_run_train_generate_execute_then_execute_only(tmp_path):
    common = [sys.executable, "run.py", "model=tiny-llama", "method=lopa", "encoder=tiny-bert", "task=code/cruxeval_o",
              f"data_dir={SHARED_DATA}", "logger=none", "trainer.max_steps=2", "eval.limit=3",
              "task.generation.max_new_tokens=12", "task.generation.num_samples=2"]
    run_dir = tmp_path / "run"
    out = subprocess.run(common + [f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and "pass@1" in record["final"]
    generations = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3 and all(len(g["samples"]) == 2 for g in generations)
    executions = (run_dir / "executions.jsonl").read_text().splitlines()
    assert len(executions) == 6

    generate_dir = tmp_path / "generate_only"
    out = subprocess.run(common + ["task.stage=generate", f"hydra.run.dir={generate_dir}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (generate_dir / "executions.jsonl").exists()
    out = subprocess.run([sys.executable, "scripts/execute_generations.py", str(generate_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads((generate_dir / "execution_results.json").read_text())
    assert scored["num_problems"] == 3 and 0.0 <= scored["pass@1"] <= 1.0


def test_loss_is_on_answer_tokens_only():
    model, task, examples = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/cruxeval_o",
                                  "trainer.train_limit=2")
    logits, targets = model(batch_of(task, examples[:2]))
    expected = sum(sum(t != -100 for t in e["target_ids"]) for e in examples[:2])
    assert logits.shape[0] == targets.shape[0] == expected
    assert torch.isfinite(logits).all()


def test_generation_runs_under_the_runs_mixed_precision():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier test's Accelerator would pin "no"
    model, task, _ = build(SHARED_DATA, "model=tiny-llama", "method=prompt_tuning", "task=code/cruxeval_o",
                           "task.generation.do_sample=false", "task.generation.max_new_tokens=2", "trainer.train_limit=4")
    examples = [task.encode(row, i, "eval") for i, row in enumerate(task.load("eval", limit=2))]
    seen = []
    hook = model.fm.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        task.generate(model, task.dataloader(examples, 2, shuffle=False), Accelerator(cpu=True, mixed_precision="bf16"))
    finally:
        hook.remove()
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen and all(seen)  # every decoding step under bf16 autocast
