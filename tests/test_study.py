"""The offline study (issue 12): held-out slice, selection, paired bootstrap, resumable cells and the report."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from lopa.data import split_holdout
from lopa.errors import ConfigError
from lopa.records import hold_run_dir
from lopa.study import Cell, budget_step, curve, paired_bootstrap, plan, score, select
from tests.conftest import REPO, write_glue_fixture

TINY = ["model=tiny-llama", "encoder=tiny-bert", "trainer.checkpoint_every=2", "eval.holdout=6",
        "trainer.mixed_precision=no"]
SMALL_PROTOCOL = ["study.tasks=[glue/sst2]", "study.core_methods=[prompt_tuning,lopa]", "study.lr_factors=[1,10]",
                  "study.seeds=[1,2]", "study.ablations=null", "study.selection_ablations=null",
                  "study.seed_methods=[]", "study.long_horizon=null",
                  "study.comparisons=[[lopa,prompt_tuning]]", "study.bootstrap_samples=200"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_holdout_is_fixed_disjoint_and_keeps_the_training_order():
    rows = [{"idx": i} for i in range(50)]
    train, held = split_holdout(rows, 10)
    assert len(held) == 10 and len(train) == 40
    assert {r["idx"] for r in train}.isdisjoint(r["idx"] for r in held)
    assert [r["idx"] for r in train] == sorted(r["idx"] for r in train)
    assert split_holdout(rows, 10) == (train, held)  # independent of any global RNG state
    with pytest.raises(ConfigError, match="eval.holdout=50 leaves nothing"):
        split_holdout(rows, 50)
    # the slice every study record held out: its draw must never change
    assert {r["idx"] for r in held} == set(torch.randperm(50, generator=torch.Generator().manual_seed(0))[:10].tolist())


def test_a_holdout_of_long_rows_draws_only_among_them_and_trains_on_every_short_one():
    rows = [{"idx": i, "sentence": " ".join(["word"] * (i % 20 + 1))} for i in range(100)]  # 1..20 words
    train, held = split_holdout(rows, 10, min_words=12, text_fields=["sentence"])
    assert len(held) == 10 and all(len(r["sentence"].split()) >= 12 for r in held)
    assert [r["idx"] for r in train] == sorted(set(range(100)) - {r["idx"] for r in held})
    assert split_holdout(rows, 10, min_words=12, text_fields=["sentence"]) == (train, held)
    with pytest.raises(ConfigError, match=r"eval.holdout=50 .* more than the 45 rows .* 45 of at least 12 words"):
        split_holdout(rows, 50, min_words=12, text_fields=["sentence"])
    with pytest.raises(ConfigError, match="needs the task's text_fields"):
        split_holdout(rows, 10, min_words=12, text_fields=[])


def record(holdout: list[float], lr: float = 1e-3, predictions: list[list[int]] | None = None, seed: int = 1) -> dict:
    steps = [100 * (i + 1) for i in range(len(holdout))]
    evaluations = [{"step": s, "accuracy": h, "holdout": {"accuracy": h}} for s, h in zip(steps, holdout)]
    for evaluation, prediction in zip(evaluations, predictions or []):
        evaluation["predictions"] = prediction
    return {"status": "completed", "primary_metric": "accuracy", "config": {"trainer": {"lr": lr}}, "parameters": {"trainable": 10},
            "evaluations": evaluations, "eval_labels": [0, 1, 1, 0, 1, 0, 1, 1], "seed": seed, "run_name": f"r{seed}"}


def test_selection_takes_the_best_holdout_factor_and_the_first_step_of_its_plateau():
    runs = {0.1: record([0.50, 0.60, 0.61], 1e-4), 1: record([0.70, 0.795, 0.80, 0.78], 1e-3), 10: record([0.5], 1e-2)}
    chosen = select(runs, "accuracy", tolerance=0.01)
    assert (chosen.lr_factor, chosen.lr, chosen.budget) == (1, 1e-3, 200)
    assert chosen.holdout_scores == {0.1: 0.61, 1: 0.80, 10: 0.5}
    assert budget_step([(100, 0.5), (200, 0.9), (300, 0.6)], 0.0) == 200
    assert budget_step([(100, 60 / 500), (200, 65 / 500)], 0.01) == 100  # exactly one point (5 of 500) is within it
    assert select({**runs, 10: {**runs[10], "status": "failed"}}, "accuracy", 0.01) is None
    assert not chosen.at_horizon
    rising = select({1: record([0.70, 0.75, 0.79, 0.80])}, "accuracy", tolerance=0.01)
    assert (rising.budget, rising.at_horizon) == (300, False)  # within a point of the best: a plateau
    still_rising = select({1: record([0.70, 0.75, 0.78, 0.80])}, "accuracy", tolerance=0.01)
    assert (still_rising.budget, still_rising.at_horizon) == (400, True)


def test_a_method_whose_budget_is_its_horizon_gets_a_long_horizon_row(tmp_path):
    """PT's selected run still rises at its last evaluation, LoPA's has plateaued: only PT is rerun longer (seed 1
    before the ablations, its other seeds last), and the report marks PT's budget and shows the new row."""
    protocol = {"tasks": ["glue/sst2"], "core_methods": ["prompt_tuning", "lopa"], "seed_methods": [],
                "ablations": {"lopa": ["init_vocab"]}, "lr_factors": [1], "seeds": [1, 2], "selection_seed": 1,
                "budget_tolerance": 0.01, "long_horizon": "long_horizon", "comparisons": [], "bootstrap_samples": 10}
    records = {"prompt_tuning-paper-sst2-lrx1-s1": record([0.6, 0.7, 0.8]),
               "lopa-paper-sst2-lrx1-s1": record([0.6, 0.8, 0.8])}
    names = [cell.run_name if cell else why for cell, why in plan(protocol, records)]
    assert names == ["zero_shot-paper-sst2-lrx1-s1", "prompt_tuning-paper-sst2-lrx1-s1", "lopa-paper-sst2-lrx1-s1",
                     "prompt_tuning-paper-sst2-lrx1-s2", "lopa-paper-sst2-lrx1-s2",
                     "prompt_tuning-long_horizon-sst2-lrx1-s1", "lopa-init_vocab-sst2-lrx1-s1",
                     "lopa-init_vocab-sst2-lrx1-s2", "prompt_tuning-long_horizon-sst2-lrx1-s2"]
    assert Cell("glue/sst2", "prompt_tuning", "long_horizon", 1, 1).overrides()[-1] == "+ablation=long_horizon"
    # a seed whose row's budget is known trains to it with the holdout unscored; one whose selector is missing
    # (the ablation's seed 1 has not run) trains in full
    cells = {cell.run_name: cell for cell, _ in plan(protocol, records) if cell}
    assert cells["prompt_tuning-paper-sst2-lrx1-s2"].overrides()[-2:] == ["trainer.stop_at_step=300",
                                                                          "eval.score_holdout=false"]
    assert (cells["lopa-paper-sst2-lrx1-s2"].stop_at_step, cells["lopa-paper-sst2-lrx1-s2"].score_holdout) == (200, False)
    assert cells["lopa-init_vocab-sst2-lrx1-s2"] == Cell("glue/sst2", "lopa", "init_vocab", 1, 2)
    assert cells["lopa-paper-sst2-lrx1-s1"].stop_at_step is None and cells["lopa-paper-sst2-lrx1-s1"].score_holdout
    assert not any("long_horizon" in str(name) for name in
                   [c.run_name if c else w for c, w in plan({**protocol, "long_horizon": None}, records)])

    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import build_rows, format_budget

    rows = {row.label: row for row in build_rows(records, protocol)}
    assert format_budget(rows["PT"]) == "300 (horizon)" and format_budget(rows["LoPA"]) == "200"
    assert "PT (long horizon)" in rows and "LoPA (long horizon)" not in rows


def test_a_selection_ablation_reruns_the_grid_on_its_task_and_selects_on_its_own_holdout():
    """The sentence holdout's grid prefers x1 where the paper holdout preferred x10: the row follows its own grid."""
    protocol = {"tasks": ["glue/sst2", "glue/rte"], "core_methods": ["prompt_tuning"], "seed_methods": [],
                "ablations": None, "lr_factors": [1, 10], "seeds": [1, 2], "selection_seed": 1, "budget_tolerance": 0.01,
                "selection_ablations": {"glue/sst2": {"prompt_tuning": ["holdout_sentences"]}},
                "long_horizon": None, "comparisons": [], "bootstrap_samples": 10}
    records = {"prompt_tuning-paper-sst2-lrx1-s1": record([0.6, 0.7], lr=1e-3),
               "prompt_tuning-paper-sst2-lrx10-s1": record([0.7, 0.8], lr=1e-2),
               "prompt_tuning-holdout_sentences-sst2-lrx1-s1": record([0.7, 0.75], lr=1e-3),
               "prompt_tuning-holdout_sentences-sst2-lrx10-s1": record([0.6, 0.65], lr=1e-2)}
    names = [cell.run_name if cell else why for cell, why in plan(protocol, records)]
    assert [n for n in names if "holdout_sentences" in n] == ["prompt_tuning-holdout_sentences-sst2-lrx1-s1",
                                                              "prompt_tuning-holdout_sentences-sst2-lrx10-s1"]
    assert names.index("prompt_tuning-holdout_sentences-sst2-lrx1-s1") > names.index("prompt_tuning-paper-sst2-lrx10-s2")

    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import build_rows

    rows = {(row.task, row.label): row for row in build_rows(records, protocol)}
    assert rows["glue/sst2", "PT"].lr_factor == 10
    ablated = rows["glue/sst2", "PT (holdout sentences)"]
    assert (ablated.lr_factor, ablated.lr, ablated.budget) == (1, 1e-3, 200) and ablated.grid == {1: 0.75, 10: 0.65}
    assert ("glue/rte", "PT (holdout sentences)") not in rows
    assert Cell("glue/sst2", "prompt_tuning", "holdout_sentences", 1, 1).overrides()[-1] == "+ablation=holdout_sentences"


def test_the_report_follows_the_newest_records_protocol_so_a_later_ablation_gets_its_row():
    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import newest_protocol

    older = {"started_at": "2026-12-01T10:00:00+00:00", "config": {"study": {"ablations": {"lopa": ["init_vocab"]}}}}
    newer = {"started_at": "2026-12-04T09:00:00+00:00",
             "config": {"study": {"ablations": {"lopa": ["init_vocab", "shared_prompt_lr_x10"]}}}}
    for records in ({"a": older, "b": newer}, {"a": newer, "b": older}):
        protocol = newest_protocol(records)
        assert protocol["ablations"]["lopa"] == ["init_vocab", "shared_prompt_lr_x10"]
        assert protocol["seeds"] == [1, 2, 3]  # a key neither record carries: the experiment config's value
    with pytest.raises(ValueError, match="config.study"):
        newest_protocol({"a": {"config": {}}})


def test_a_seed_method_is_selected_on_its_own_grid_below_its_paper_rate():
    """ACCEPT's paper rate collapses (one class); the grid's ×0.1 wins on the holdout and its seeds follow."""
    protocol = {"tasks": ["glue/sst2"], "core_methods": [], "seed_methods": ["accept"], "ablations": None,
                "seed_method_lr_factors": [0.1, 1], "lr_factors": [1, 10], "seeds": [1, 2], "selection_seed": 1,
                "budget_tolerance": 0.01, "long_horizon": None, "comparisons": [], "bootstrap_samples": 10}
    names = [cell.run_name if cell else why for cell, why in plan(protocol, {})]
    assert names[1:] == ["accept-paper-sst2-lrx0.1-s1", "accept-paper-sst2-lrx1-s1",
                         "seeds of accept on glue/sst2 (waits for its learning-rate selection)"]
    records = {"accept-paper-sst2-lrx0.1-s1": record([0.7, 0.8], lr=0.03),
               "accept-paper-sst2-lrx1-s1": record([0.5, 0.5], lr=0.3)}
    assert [c.run_name for c, _ in plan(protocol, records) if c][-1] == "accept-paper-sst2-lrx0.1-s2"
    assert [c.run_name for c, _ in plan({**protocol, "seed_method_lr_factors": None}, {}) if c][1:] == [
        "accept-paper-sst2-lrx1-s1", "accept-paper-sst2-lrx1-s2"]  # null: the paper value, not selected

    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import build_rows

    row = next(r for r in build_rows(records, protocol) if r.method == "accept")
    assert (row.how, row.lr_factor, row.lr, row.grid) == ("selected on the holdout", 0.1, 0.03, {0.1: 0.8, 1: 0.5})


def test_the_report_names_each_machine_with_its_cpu_and_whether_bf16_was_native():
    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import machine_name

    older = {"hostname": "vm", "cpu_count": 2, "torch": "2.13.0+cpu"}
    assert machine_name(older) == "vm (2 CPU cores, torch 2.13.0+cpu)"
    assert machine_name({**older, "cpu": "Xeon", "cpu_bf16": False}) == "vm (2 CPU cores, Xeon, bf16 emulated, torch 2.13.0+cpu)"
    assert machine_name({**older, "cpu": "Xeon", "cpu_bf16": True}) == "vm (2 CPU cores, Xeon, native bf16, torch 2.13.0+cpu)"


def test_the_reported_wall_time_says_when_a_resumed_record_counts_only_its_last_process():
    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import wall_time

    fresh = {"wall_time_s": 1800.0, "resumed_from": None}
    carried = {"wall_time_s": 3600.0, "resumed_from": "step-000100", "earlier_wall_time_s": 900.0}
    assert wall_time([fresh, carried]) == "1.5 hours of wall time"
    old = {"wall_time_s": 1800.0, "resumed_from": "step-000100"}
    assert wall_time([fresh, old]) == "1.0 hours of wall time, an undercount: 1 resumed run(s) recorded only their " \
                                      "last process's time"


def test_scores_match_sklearn_and_the_paired_bootstrap_brackets_the_difference():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    predictions = np.where(rng.random(400) < 0.8, labels, 1 - labels)
    assert score(predictions, labels, "f1") == pytest.approx(f1_score(labels, predictions))
    assert score(predictions, labels, "accuracy") == pytest.approx((predictions == labels).mean())

    def runs(correct_rate: float, seeds: int) -> list[dict]:
        out = []
        for seed in range(seeds):
            right = np.random.default_rng(seed + int(100 * correct_rate)).random(400) < correct_rate
            out.append({"run_name": f"s{seed}", "eval_labels": labels.tolist(),
                        "evaluations": [{"step": 5, "predictions": np.where(right, labels, 1 - labels).tolist()}]})
        return out

    same = runs(0.7, 2)
    tie = paired_bootstrap(same, [5, 5], same, [5, 5], "accuracy", samples=300)
    assert tie["diff"] == 0 and tie["low"] == 0 and tie["high"] == 0
    better = paired_bootstrap(runs(0.9, 3), [5] * 3, runs(0.6, 3), [5] * 3, "accuracy", samples=300)
    assert 0 < better["low"] < better["diff"] < better["high"] and better["diff"] == pytest.approx(0.3, abs=0.06)
    assert (better["seeds"], better["examples"]) == (3, 400)
    assert better["seeds_low"] <= better["low"] and better["seeds_high"] >= better["high"] - 0.01

    # seed 1 helps by 40 points, seeds 2-3 hurt by 5: fixed seeds see a sure +10, resampled seeds do not
    flipping = paired_bootstrap(runs(0.9, 1) + runs(0.55, 2), [5] * 3, runs(0.5, 1) + runs(0.6, 2), [5] * 3,
                                "accuracy", samples=500)
    assert flipping["per_seed"][0] == pytest.approx(0.4, abs=0.06) and flipping["per_seed"][1] < 0
    assert flipping["low"] > 0 and flipping["seeds_low"] < 0 < flipping["seeds_high"]
    one = paired_bootstrap(runs(0.9, 1), [5], runs(0.6, 1), [5], "accuracy", samples=300)
    assert (one["seeds_low"], one["seeds_high"]) == (one["low"], one["high"])


def test_an_ablation_is_compared_with_the_row_it_changes_on_the_seeds_both_have():
    sys.path.insert(0, str(REPO / "scripts"))
    from study_report import Row, comparisons

    labels = [0, 1] * 50

    def run(seed: int, right: int) -> dict:  # the first `right` of 100 examples correct
        predictions = [label if i < right else 1 - label for i, label in enumerate(labels)]
        return {"seed": seed, "eval_labels": labels, "evaluations": [{"step": 5, "predictions": predictions}]}

    paper = Row("glue/sst2", "lopa", "paper", budget=5, records=[run(1, 70), run(2, 90), run(3, 80)])
    ablated = Row("glue/sst2", "lopa", "init_vocab", budget=5, records=[run(1, 75)])
    protocol = {"tasks": ["glue/sst2"], "comparisons": [["lopa", "prompt_tuning"]],
                "ablations": {"lopa": ["init_vocab"]}, "bootstrap_samples": 200}
    method_diff, ablation_diff = comparisons([paper, ablated], protocol)
    assert (method_diff["a"], method_diff["b"]) == ("LoPA", "PT") and "diff" not in method_diff  # PT not run yet
    assert (ablation_diff["a"], ablation_diff["b"], ablation_diff["seeds"]) == ("LoPA (init vocab)", "LoPA", 1)
    assert ablation_diff["diff"] == pytest.approx(0.05)  # against seed 1's 70 %, not the 3-seed mean of 80 %


def test_cell_names_are_the_experiments_run_names():
    cell = Cell("glue/sst2", "lopa", "init_vocab", 0.1, 2)
    assert cell.run_name == "lopa-init_vocab-sst2-lrx0.1-s2"
    assert cell.overrides() == ["task=glue/sst2", "method=lopa", "lr_factor=0.1", "seed=2", "+ablation=init_vocab"]


@pytest.mark.parametrize("method", ["lopa", "prompt_tuning", "idpg", "lora"])
def test_the_prompt_scale_measures_the_prompt_the_fm_is_given_and_how_far_it_moved(glue_data, method):
    from lopa.runner import prompt_scale, prompt_tensors
    from tests.helpers import batch_of, build

    model, task, examples = build(glue_data, "model=tiny-llama", "encoder=tiny-bert", f"method={method}")
    model.train()
    batch = batch_of(task, examples[:4])
    initial = prompt_tensors(model, batch)
    assert model.training  # measured in eval mode (no dropout), the mode given back
    scale = prompt_scale(model, initial)
    assert scale["token_embedding_row_norm"] > 0
    if method == "lopa":  # heads start near zero, so the gate σ(u vᵀ) ≈ 1/2 halves Z_S
        assert scale["input_prompt_row_norm"] == pytest.approx(scale["prompt_row_norm"] / 2, rel=0.02)
        assert 0 < scale["input_prompt_instance_spread"] < 0.05  # the near-zero heads barely tell inputs apart
    elif method == "prompt_tuning":
        assert scale["input_prompt_row_norm"] == pytest.approx(scale["prompt_row_norm"], rel=1e-4)
        assert scale["input_prompt_instance_spread"] == 0  # one table for every input
    elif method == "idpg":  # no shared table: only the generated rows
        assert "prompt_row_norm" not in scale and scale["input_prompt_row_norm"] > 0
        assert scale["input_prompt_instance_spread"] > 0
    else:
        assert set(scale) == {"token_embedding_row_norm", "token_embedding_std"}
        return
    unmoved = prompt_scale(model, prompt_tensors(model, batch), initial)
    assert all(unmoved[f"{name}_relative_change"] == 0 for name in initial)
    with torch.no_grad():
        for parameter in model.method.parameters():
            if parameter.requires_grad:
                parameter.mul_(2)  # every trained tensor doubled: the table moves by exactly its own norm
    moved = prompt_scale(model, prompt_tensors(model, batch), initial)
    assert all(moved[f"{name}_relative_change"] > 0.1 for name in initial)
    if "prompt" in initial:
        assert moved["prompt_relative_change"] == pytest.approx(1.0, rel=1e-5)


def test_the_driver_runs_a_part_of_the_study_named_by_task_method_seed_and_variant():
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline_study_driver", REPO / "scripts" / "offline_study.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    parse = lambda *given: argparse.Namespace(**{**dict.fromkeys(('task', 'method', 'seed', 'variant')), **dict(given)})  # noqa: E731
    ablation = Cell("glue/sst2", "lopa", "init_vocab", 1, 1)
    paper = Cell("glue/sst2", "lopa", "paper", 1, 1)
    assert driver.wanted(ablation, parse()) and driver.wanted(paper, parse())
    only_ablation = parse(("variant", ["init_vocab", "init_embedding_scale"]), ("seed", [1]))
    assert driver.wanted(ablation, only_ablation) and not driver.wanted(paper, only_ablation)
    assert not driver.wanted(ablation, parse(("method", ["prompt_tuning"])))
    assert not driver.wanted(paper, parse(("task", ["glue/rte"])))


def test_the_driver_leaves_a_cell_that_another_live_run_holds_to_it(tmp_path, monkeypatch, capsys):
    """Two drivers on one study directory share its cells instead of running one twice."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline_study_driver", REPO / "scripts" / "offline_study.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    runs = tmp_path / "runs"
    launched = []
    monkeypatch.setattr(driver.subprocess, "run", lambda command, **_: launched.append(command)
                        or subprocess.CompletedProcess(command, 0))
    with hold_run_dir(runs / "zero_shot-paper-sst2-lrx1-s1"):
        assert driver.main(["plan", "--runs", str(runs), "--", *SMALL_PROTOCOL]) == 0
        shown = capsys.readouterr().out
        assert f"running  zero_shot-paper-sst2-lrx1-s1  (pid {os.getpid()} on " in shown
        assert "pending  prompt_tuning-paper-sst2-lrx1-s1  (selection)" in shown and "1 running, " in shown
        assert driver.main(["run", "--runs", str(runs), "--max-cells", "1", "--", *SMALL_PROTOCOL]) == 0
    assert len(launched) == 1 and f"hydra.run.dir={runs / 'prompt_tuning-paper-sst2-lrx1-s1'}" in launched[0]


def test_one_cell_sweep_runs_records_the_study_and_a_relaunch_skips_it(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "sst2", train_rows=30, eval_rows=10)
    sweep = tmp_path / "runs"
    command = ["run.py", "-m", "experiment=offline_study", "task=glue/sst2", "method=lopa", "lr_factor=1", "seed=1",
               *TINY, f"data_dir={data}", f"hydra.sweep.dir={sweep}", "trainer.max_steps=3", "trainer.eval_every=3"]
    first = run(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = sweep / "lopa-paper-sst2-lrx1-s1"
    result = json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 3
    assert (result["num_train_examples"], result["num_holdout_examples"]) == (24, 6)
    evaluation = result["evaluations"][-1]
    assert evaluation["holdout"]["num_examples"] == 6 and len(evaluation["predictions"]) == 10
    assert result["eval_labels"] == [i % 2 for i in range(10)]
    initial, final = result["prompt_scale"]["initial"], result["prompt_scale"]["final"]
    assert initial["prompt_row_norm"] > 0 and initial["input_prompt_row_norm"] > 0
    assert final["input_prompt_row_norm"] != initial["input_prompt_row_norm"]  # measured again after training
    assert final["prompt_relative_change"] > 0 and final["input_prompt_relative_change"] > 0
    assert final["input_prompt_instance_spread"] > 0
    assert result["config"]["trainer"]["lr"] == pytest.approx(result["config"]["method"]["lr"])
    mtime = (run_dir / "results.json").stat().st_mtime_ns
    launch = (run_dir / ".hydra" / "overrides.yaml").read_text()  # Hydra's copy of the command that made the record
    assert "trainer.max_steps=3" in launch

    again = run(*command, "trainer.num_workers=1")  # a relaunch-independent key: still this cell
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lopa-paper-sst2-lrx1-s1: skipped, already completed" in again.stdout
    assert (run_dir / "results.json").stat().st_mtime_ns == mtime
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == launch  # the skipped launch saved no copy over it

    changed = run(*command[:-2], "trainer.max_steps=4", "trainer.eval_every=4")
    assert changed.returncode == 1 and "completed run of another config (trainer.eval_every 3 -> 4" in changed.stderr
    assert (run_dir / "results.json").stat().st_mtime_ns == mtime
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == launch


def test_the_driver_selects_then_runs_the_seeds_and_the_report_has_the_protocol(tmp_path):
    data = write_glue_fixture(tmp_path / "data", "sst2", train_rows=30, eval_rows=10)
    runs = tmp_path / "runs"
    out = run("scripts/offline_study.py", "run", "--runs", str(runs), "--data-dir", str(data), "--", *TINY,
              "trainer.max_steps=4", "trainer.eval_every=2", *SMALL_PROTOCOL)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = sorted(path.parent.name for path in runs.glob("*/results.json"))
    selected = {name.split("-lrx")[1].split("-")[0] for name in names if name.startswith("lopa") and name.endswith("s2")}
    assert len(names) == 7 and len(selected) == 1  # zero-shot, 2 methods x 2 factors, then seed 2 at the choice
    assert not any(runs.glob("*/checkpoints"))  # completed cells keep no checkpoint
    # seed 2 trained to its row's budget (read off seed 1's holdout curve) and did not score the holdout it still
    # kept out of training
    for name in (n for n in names if n.endswith("s2")):
        seed_2 = json.loads((runs / name / "results.json").read_text())
        seed_1 = json.loads((runs / name.replace("-s2", "-s1") / "results.json").read_text())
        budget = seed_2["config"]["trainer"]["stop_at_step"]
        assert budget == budget_step(curve(seed_1, "accuracy", "holdout"), 0.01) and seed_2["steps"] == budget
        assert [e["step"] for e in seed_2["evaluations"]] == list(range(2, budget + 1, 2))
        assert not any("holdout" in e for e in seed_2["evaluations"]) and seed_2["config"]["eval"]["score_holdout"] is False
        assert [seed_2[f"num_{s}_examples"] for s in ("train", "holdout")] == [seed_1[f"num_{s}_examples"] for s in ("train", "holdout")]

    plan = run("scripts/offline_study.py", "plan", "--runs", str(runs), "--", *SMALL_PROTOCOL)
    assert "7 done, 0 running, 0 pending, 0 waiting" in plan.stdout

    report = tmp_path / "report"
    collected = run("scripts/collect_results.py", "--runs", str(runs), "--experiment", "offline_study", "--out", str(report))
    assert collected.returncode == 0, collected.stderr[-3000:]
    markdown = (report / "offline_study.md").read_text()
    assert "| LoPA − PT | accuracy |" in markdown and "×1: " in markdown and "×10: " in markdown
    assert "## Missing cells\n\nnone" in markdown
    number = r" [\d.]+ \|"
    assert re.search(r"\| LoPA \| paper \| 3 \|" + 3 * number + r" 3 \|" + 6 * number, markdown)
    table = pd.read_csv(report / "offline_study.csv")
    lopa = table[(table.kind == "score") & (table.method == "lopa")].iloc[0]
    assert lopa.n_seeds == 2 and lopa.seeds == "1 2" and lopa.budget_steps in (2, 4)
    per_seed = [float(value) for value in str(lopa.per_seed).split()]
    assert len(per_seed) == 2 and abs(sum(per_seed) / 2 - lopa["mean"]) < 1e-3
    assert re.search(r"\| LoPA \| [\d,]+ \| selected on the holdout \|.*\| 1: [\d.]+, 2: [\d.]+ \|", markdown)
    for name in ("offline_study.tex", "offline_study_curves.png", "offline_study_params.png"):
        assert (report / name).stat().st_size > 0


def test_a_record_older_than_a_key_matches_the_value_that_reproduces_it(tmp_path):
    """Records written before `preset` existed stay valid for relaunches with preset=none, not with another preset."""
    from lopa.records import ForeignRecordError, completed_record

    config = {"preset": "none", "trainer": {"lr": 1e-3, "allow_schedule_change": False}, "seed": 1}
    older = {"trainer": {"lr": 1e-3}, "seed": 1}
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": older}))
    assert completed_record(tmp_path, config)["config"] == older
    with pytest.raises(ForeignRecordError, match="preset 'none' -> 'official_nlu'"):
        completed_record(tmp_path, {**config, "preset": "official_nlu"})
    with pytest.raises(ForeignRecordError, match="trainer.lr"):
        completed_record(tmp_path, {**config, "trainer": {"lr": 1e-2, "allow_schedule_change": False}})
    # a method-specific key added later: records without it match relaunches of that method at its old value, and
    # relaunches of methods that do not have the key at all
    lopa = {**config, "method": {"name": "lopa"}}
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": lopa}))
    assert completed_record(tmp_path, lopa) is not None
    assert completed_record(tmp_path, {**lopa, "method": {"name": "lopa", "shared_prompt_lr_scale": 1}}) is not None
    with pytest.raises(ForeignRecordError, match="method.shared_prompt_lr_scale 1 -> 10"):
        completed_record(tmp_path, {**lopa, "method": {"name": "lopa", "shared_prompt_lr_scale": 10}})
    assert completed_record(tmp_path, {**lopa, "method": {"name": "lopa", "head_init_std": 0.02}}) is not None
    with pytest.raises(ForeignRecordError, match="method.head_init_std 0.02 -> 0.2"):
        completed_record(tmp_path, {**lopa, "method": {"name": "lopa", "head_init_std": 0.2}})
    prompt_tuning = {**config, "method": {"name": "prompt_tuning"}}
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": prompt_tuning}))
    assert completed_record(tmp_path, prompt_tuning) is not None
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "config": older}))
    # the study block plans and reports cells; no run reads it, so a protocol grown since keeps the records valid
    assert completed_record(tmp_path, {**config, "study": {"long_horizon": "long_horizon"}}) is not None
