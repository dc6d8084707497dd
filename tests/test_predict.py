"""scripts/predict.py on runs of tiny models: labels and probabilities as the run's own evaluation saw them,
generations for code tasks, one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA


def run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/predict.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def trained_run(glue_data, tmp_path):
    run_dir = tmp_path / "run"
    run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "trainer.max_steps=2", "logger=none",
        "method.lr=0.3", "eval.save_predictions=true", "trainer.checkpoint_every=2", f"hydra.run.dir={run_dir}")
    return run_dir


def labels_and_probabilities(stdout: str) -> list[tuple[str, dict]]:
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    parsed = []
    for line in lines:
        label, probabilities = line.split("] ", 1)[1].split("\t")
        parsed.append((label, {k: float(v) for k, v in (pair.split("=") for pair in probabilities.split())}))
    return parsed


def test_predict_gives_the_runs_own_predictions_batched(trained_run, glue_data):
    record = json.loads((trained_run / "results.json").read_text())
    out = predict(trained_run, "--jsonl", glue_data / "rte" / "validation.jsonl", "--batch-size", 5)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = labels_and_probabilities(out.stdout)
    names = ["entailment", "not_entailment"]
    assert [names.index(label) for label, _ in parsed] == record["best"]["predictions"]
    assert all(set(p) == set(names) and abs(sum(p.values()) - 1) < 1e-3 for _, p in parsed)

    first = json.loads((glue_data / "rte" / "validation.jsonl").read_text().splitlines()[0])
    out = predict(trained_run, "--text", first["sentence1"], "--pair", first["sentence2"], "--text", "A cat.",
                  "--pair", "A dog.")
    assert out.returncode == 0, out.stderr[-3000:]
    single = labels_and_probabilities(out.stdout)
    assert len(single) == 2 and single[0][0] == parsed[0][0]
    assert single[0][1] == pytest.approx(parsed[0][1], abs=1e-3)  # padding in a batch of 5 changes nothing

    # A checkpoint's weights: the same as the best weights here (the one evaluation was at the last step)
    checkpoint = predict(trained_run, "--weights", trained_run / "checkpoints" / "step-000002", "--text", "A cat.", "--pair", "A dog.")
    assert labels_and_probabilities(checkpoint.stdout) == single[1:]


def test_bad_input_is_one_error_line_and_exit_2(trained_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"sentence1": "only one"}) + "\n")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(trained_run, no_weights, ignore=shutil.ignore_patterns("weights"))
    cases = {
        "missing run dir": ([tmp_path / "nowhere", "--text", "a", "--pair", "b"], "not a run directory"),
        "no weights": ([no_weights, "--text", "a", "--pair", "b"], "holds no trained.safetensors"),
        "jsonl lacking fields": ([trained_run, "--jsonl", rows], "lacks the task's fields ['sentence2']"),
        "pair missing": ([trained_run, "--text", "a"], "give one --pair per --text"),
        "no input": ([trained_run], "give inputs with --text"),
    }
    for name, (args, message) in cases.items():
        out = predict(*args)
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("error: "), name
        assert message in out.stderr, (name, out.stderr)


@pytest.mark.skipif(not (SHARED_DATA / "cruxeval").is_dir(), reason=f"no benchmark data at {SHARED_DATA}")
def test_predict_prints_generations_for_code_tasks(tmp_path):
    run_dir = tmp_path / "run"
    run("model=tiny-llama", "method=zero_shot", "task=code/cruxeval_o", f"data_dir={SHARED_DATA}", "logger=none",
        "eval.limit=1", "task.stage=generate", "task.generation.max_new_tokens=4", "task.generation.num_samples=1",
        f"hydra.run.dir={run_dir}")
    out = predict(run_dir, "--text", "def f(x):\n    return x\nassert f(1) ==", "--text", "print(", "--batch-size", 2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[1] " in out.stdout and "[2] " in out.stdout
