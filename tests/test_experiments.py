"""Experiment sweeps: every paper experiment composes (locally and for SLURM); sweep -> records -> tables, figures, notebook."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lopa.cli import group_options
from lopa.runner import check_config
from tests.conftest import CONFIG_DIR, REPO, write_glue_fixture

sys.path.insert(0, str(REPO / "scripts"))
collect_results = importlib.import_module("collect_results")

EXPERIMENTS = group_options(CONFIG_DIR, "experiment")
PAPER_TABLES = {"glue_table": "glue_table", "code_table": "code_table", "code_table_lopa": "code_table",
                "code_table_idpg": "code_table", "code_table_zero_shot": "code_table",
                "prompt_length_sweep": "prompt_length_sweep", "rank_sweep": "rank_sweep", "smoke": "smoke"}
METHODS_MD = REPO.parent / "shared" / "docs" / "METHODS.md"


def sweep_jobs(experiment: str) -> list[list[str]]:
    """The override lists Hydra's basic sweeper makes for `python run.py -m experiment=<experiment>`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {})
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [[f"experiment={experiment}", *job] for job in BasicSweeper.split_arguments(overrides, None)[0]]


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A few jobs in which every value of every sweep axis appears at least once (composition is ~0.2 s a job;
    test_config composes every model × task × method already)."""
    chosen, seen = [], set()
    for job in jobs:
        if not set(job) <= seen:
            chosen.append(job)
            seen |= set(job)
    return chosen


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_every_paper_experiment_exists():
    assert set(PAPER_TABLES) <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_job_of_every_experiment_composes_resolves_and_passes_the_checks(experiment):
    jobs = sweep_jobs(experiment)
    assert len(jobs) > 1, f"{experiment} sweeps nothing"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for job in covering_jobs(jobs):
            cfg = compose(config_name="config", overrides=job)
            OmegaConf.to_container(cfg, resolve=True)
            check_config(cfg)
            assert cfg.experiment_name == PAPER_TABLES.get(experiment, experiment)


def test_glue_table_is_the_papers_setting():
    jobs = sweep_jobs("glue_table")
    assert len(jobs) == 6 * 5 * 3  # tasks × methods × seeds
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        lopa = compose(config_name="config", overrides=["experiment=glue_table", "method=lopa", "task=glue/mnli"])
        idpg = compose(config_name="config", overrides=["experiment=glue_table", "method=idpg"])
    assert (lopa.model.name, lopa.encoder.name, lopa.task.name) == ("roberta-large", "roberta-large", "mnli")
    assert (lopa.method.prompt_length, lopa.method.rank, lopa.method.hidden_size) == (10, 4, 256)
    assert (idpg.method.prompt_length, idpg.method.hidden_size) == (10, 256)
    assert (lopa.trainer.batch_size, lopa.trainer.epochs, lopa.trainer.scheduler) == (64, 20, "constant_with_warmup")


def test_code_table_sweeps_give_each_method_its_paper_setting():
    grid = {(model, task) for model in ("codegen-350m", "deepseek-coder-1.3b", "phi-2", "phi-3-mini", "deepseek-coder-7b",
                                        "llama-3-8b") for task in ("code/cruxeval_i", "code/cruxeval_o", "code/mbpp")}
    experiments = ("code_table", "code_table_lopa", "code_table_idpg", "code_table_zero_shot")
    jobs = {experiment: sweep_jobs(experiment) for experiment in experiments}
    seen: dict[str, set] = {}
    for job in (job for experiment_jobs in jobs.values() for job in experiment_jobs):
        values = dict(o.split("=", 1) for o in job)
        seen.setdefault(values["method"], set()).add((values["model"], values["task"]))
    assert seen == {method: grid for method in ("prompt_tuning", "lora", "full_ft", "lopa", "idpg", "zero_shot")}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for experiment in experiments:
            for job in covering_jobs(jobs[experiment])[:4]:
                cfg = compose(config_name="config", overrides=job)
                warmup = None if cfg.method.name == "full_ft" else 500  # full FT: its 10 % ratio (METHODS.md §3)
                assert (cfg.experiment_name, cfg.trainer.batch_size, cfg.trainer.warmup_steps, cfg.seed) == (
                    "code_table", 8, warmup, 9876)
                if cfg.method.name == "lopa":
                    assert (cfg.encoder.name, cfg.method.hidden_size, cfg.method.prompt_length) == ("codesage-small", 1024, 10)
                if cfg.method.name == "idpg":
                    assert (cfg.encoder.name, cfg.method.hidden_size, cfg.method.prompt_length) == ("codebert-base", 768, 10)
                if cfg.method.name == "zero_shot":
                    assert cfg.mode == "evaluate"


def test_sweeps_vary_prompt_length_and_rank():
    def values(experiment: str, key: str) -> set[str]:
        return {o.split("=")[1] for job in sweep_jobs(experiment) for o in job if o.startswith(f"{key}=")}

    assert values("prompt_length_sweep", "method.prompt_length") == {"5", "10", "25", "50", "100"}
    assert values("rank_sweep", "method.rank") == {"1", "2", "4"}
    assert values("code_table_lopa", "method.rank") == {"1", "2", "4"}


def test_cfg_job_composes_for_every_experiment():
    for experiment in EXPERIMENTS:
        out = run("run.py", "--cfg", "job", f"experiment={experiment}", timeout=120)
        assert out.returncode == 0, out.stderr
        assert f"experiment_name: {PAPER_TABLES.get(experiment, experiment)}" in out.stdout


def test_slurm_launcher_composes_with_config_values_on_the_command_line():
    # Hydra 1.3 refuses `--cfg` together with `-m`; hydra.mode=MULTIRUN composes what `-m` would launch.
    out = run("run.py", "--cfg", "hydra", "experiment=glue_table", "hydra/launcher=slurm", "hydra.mode=MULTIRUN",
              "hydra.launcher.partition=gpu", "hydra.launcher.account=lab", "hydra.launcher.timeout_min=90", timeout=120)
    assert out.returncode == 0, out.stderr
    hydra = yaml.safe_load(out.stdout)["hydra"]
    launcher = hydra["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["account"], launcher["timeout_min"]) == ("gpu", "lab", 90)
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["nodes"]) == (1, 1, 1)
    assert hydra["sweeper"]["params"]["method"] == "prompt_tuning,idpg,lora,lopa,full_ft"


def test_slurm_job_script_asks_for_one_gpu(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["experiment=glue_table", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                 "hydra.launcher.account=lab", f"hydra.launcher.submitit_folder={tmp_path}/%j"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    params.pop("_target_")
    params["name"] = "glue_table"
    # What the plugin's launch() does: base keys as they are, the rest prefixed with the executor's name.
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python run.py", "uid")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--partition=gpu", "--account=lab", "--time=1440"):
        assert f"#SBATCH {line}" in script


def records_by_setting(sweep: Path) -> dict[tuple[str, int], list[dict]]:
    records: dict[tuple[str, int], list[dict]] = {}
    for path in sweep.rglob("results.json"):
        record = json.loads(path.read_text())
        key = (record["method"], record["config"]["method"]["prompt_length"])
        records.setdefault(key, []).append(record)
    return records


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    """`python run.py -m experiment=smoke` (4 tiny jobs) plus one single run that fails, in one directory."""
    root = tmp_path_factory.mktemp("experiments")
    data = write_glue_fixture(root / "data", "rte")
    out = run("run.py", "-m", "experiment=smoke", "hydra/launcher=basic", f"data_dir={data}", "logger=none",
              f"hydra.sweep.dir={root / 'runs' / 'sweep'}")
    assert out.returncode == 0, out.stderr[-3000:]
    failed = run("run.py", "experiment=smoke", "method=lopa", "method.prompt_length=2", "method.rank=4", "seed=3",
                 f"data_dir={data}", f"hydra.run.dir={root / 'runs' / 'failed'}")
    assert failed.returncode == 2 and "rank=4" in failed.stderr
    return root


def test_sweep_then_collect_writes_tables_and_figures_that_match_the_records(smoke_sweep):
    runs, results = smoke_sweep / "runs", smoke_sweep / "results"
    out = run("scripts/collect_results.py", "--runs", str(runs), "--out", str(results))
    assert out.returncode == 0, out.stderr
    for name in ("smoke.csv", "smoke.md", "smoke.tex", "smoke_params.png", "smoke_params.pdf"):
        assert (results / name).stat().st_size > 0, name
    assert not (results / "smoke_rank.png").exists()  # r never varies between completed runs here

    table = pd.read_csv(results / "smoke.csv")
    records = records_by_setting(runs / "sweep")
    assert len(records) == 2 and all(len(seeds) == 2 for seeds in records.values())
    for (method, prompt_length), seeds in records.items():
        row = table[(table.method == method) & (table.prompt_length == prompt_length)].iloc[0]
        scores = [100 * record["best"]["accuracy"] for record in seeds]
        assert row["mean"] == pytest.approx(sum(scores) / 2)
        assert row["std"] == pytest.approx(pd.Series(scores).std())
        assert (row.n_seeds, row.seeds, row.n_failed) == (2, "1 2", 0)
        assert row.trainable_params == seeds[0]["parameters"]["trainable"]
        assert (row.experiment, row.model, row.task, row.metric) == ("smoke", "tiny-llama", "rte", "accuracy")
    failed = table[(table.method == "lopa") & (table.prompt_length == 2)].iloc[0]
    assert (failed.n_seeds, failed.n_failed) == (0, 1)

    markdown = (results / "smoke.md").read_text()
    assert "| PT | 10 |" in markdown and "| LoPA | 10 |" in markdown
    assert re.search(r"failed: .*method=lopa task=rte model=tiny-llama seed=3 m=2 r=4.*rank=4", markdown)
    assert r"\begin{tabular}" in (results / "smoke.tex").read_text()


def test_collect_lists_sweep_jobs_without_a_record_or_a_directory(smoke_sweep, tmp_path):
    partial = tmp_path / "sweep"
    shutil.copytree(smoke_sweep / "runs" / "sweep", partial)
    jobs = sorted(partial.glob("[0-9]*_lopa-*"))
    (jobs[0] / "results.json").unlink()  # a job killed before writing its record
    shutil.rmtree(jobs[-1])  # a job that never started
    collect_results.collect([partial], tmp_path / "results", figures=False)
    markdown = (tmp_path / "results" / "smoke.md").read_text()
    assert "no record (running, killed or timed out): method=lopa" in markdown
    assert "not run: method=lopa task=rte model=tiny-llama seed=2 m=10 r=4" in markdown
    table = pd.read_csv(tmp_path / "results" / "smoke.csv")
    assert table.n_missing.sum() == 2 and (table.n_seeds + table.n_missing).sum() == 4


def test_notebook_runs_on_the_smoke_tables(smoke_sweep, tmp_path):
    results = smoke_sweep / "results"
    if not (results / "smoke.csv").exists():
        collect_results.collect([smoke_sweep / "runs"], results)
    out = run("scripts/run_notebook.py", "--results", str(results), "--output", str(tmp_path / "executed.ipynb"))
    assert out.returncode == 0, out.stderr[-3000:]
    outputs = json.dumps(json.loads((tmp_path / "executed.ipynb").read_text())["cells"])
    assert "1 result tables" in outputs and "image/png" in outputs


def test_notebook_runs_on_the_committed_results():
    out = run("scripts/run_notebook.py")
    assert out.returncode == 0, out.stderr[-3000:]


def write_record(run_dir: Path, method: str, task: str, seed: int, accuracy: float | None, trainable: int,
                 status: str = "completed", started_at: str = "2026-01-01T00:00:00+00:00") -> None:
    run_dir.mkdir(parents=True)
    config = {"experiment_name": "glue_table", "seed": seed, "model": {"name": "roberta-large"},
              "task": {"name": task}, "method": {"name": method, "prompt_length": 10, "rank": 4}}
    scores = {} if accuracy is None else {"best": {"step": 1, "accuracy": accuracy},
                                          "final": {"step": 2, "accuracy": accuracy - 0.1}}
    (run_dir / "results.json").write_text(json.dumps({
        "status": status, "run_name": f"{method}-{task}-s{seed}", "method": method, "task": task, "started_at": started_at,
        "model": "roberta-large", "seed": seed, "primary_metric": "accuracy", "parameters": {"trainable": trainable},
        "error": "boom" if status == "failed" else None, "config": config, "steps": 7, "wall_time_s": 30.0,
        "machine": {"hostname": "vm", "cpu_count": 2, "torch": "2.13.0", "cuda": None}, "git_commit": "abc1234def",
        **scores}))


def test_collect_averages_seeds_and_sets_the_papers_number_beside_ours(tmp_path):
    for seed, accuracy in ((1, 0.80), (2, 0.90), (3, 0.85)):
        write_record(tmp_path / "runs" / f"s{seed}", "lopa", "rte", seed, accuracy, 1_600_000)
    tables = collect_results.collect([tmp_path / "runs"], tmp_path / "results", figures=False)
    row = tables["glue_table"].iloc[0]
    assert (row["mean"], row["paper"], row.n_seeds) == (pytest.approx(85.0), 83.39, 3)
    assert row["std"] == pytest.approx(5.0)
    assert row["diff"] == pytest.approx(85.0 - 83.39)
    assert "| LoPA | 1.60M | 3 | 85.00 ± 5.00 / 83.39 |" in (tmp_path / "results" / "glue_table.md").read_text()
    final = collect_results.collect([tmp_path / "runs"], tmp_path / "final", score="final", figures=False)
    assert final["glue_table"].iloc[0]["mean"] == pytest.approx(75.0)
    for path in (tmp_path / "runs").rglob("results.json"):  # the same runs on a model the paper never used
        path.write_text(path.read_text().replace("roberta-large", "smollm2-135m"))
    alone = collect_results.collect([tmp_path / "runs"], tmp_path / "alone", figures=False)["glue_table"].iloc[0]
    assert pd.isna(alone["paper"])
    beside = collect_results.collect([tmp_path / "runs"], tmp_path / "beside", figures=False,
                                     paper_model="roberta-large")["glue_table"].iloc[0]
    assert beside["paper"] == 83.39
    assert "paper's number for **roberta-large**" in (tmp_path / "beside" / "glue_table.md").read_text()


def test_collect_counts_the_newest_completed_run_of_a_rerun_seed_once(tmp_path):
    runs = tmp_path / "runs"
    write_record(runs / "a" / "s1", "lopa", "rte", 1, 0.50, 1_600_000, started_at="2026-01-01T00:00:00+00:00")
    write_record(runs / "b" / "s1", "lopa", "rte", 1, 0.70, 1_600_000, started_at="2026-01-02T00:00:00+00:00")
    write_record(runs / "a" / "s2", "lopa", "rte", 2, None, 1_600_000, status="failed")  # then rerun, completed:
    write_record(runs / "b" / "s2", "lopa", "rte", 2, 0.90, 1_600_000, started_at="2026-01-02T00:00:00+00:00")
    write_record(runs / "c" / "s2", "lopa", "rte", 2, None, 1_600_000, status="failed",  # a later failed retry
                 started_at="2026-01-03T00:00:00+00:00")
    write_record(runs / "a" / "s3", "lopa", "rte", 3, None, 1_600_000)  # completed, but no score recorded
    row = collect_results.collect([runs], tmp_path / "results", figures=False)["glue_table"].iloc[0]
    assert (row.n_seeds, row["mean"], row.seeds, row.n_failed, row.n_missing) == (2, pytest.approx(80.0), "1 2", 0, 1)
    table = (tmp_path / "results" / "glue_table.md").read_text()
    assert "3 earlier attempt(s) superseded" in table and "80.00 ± 14.14* / 83.39" in table
    assert "Completed runs: 3; optimiser steps per run: 7" in table and "wall time 1.5 min in all" in table
    assert "code at commit(s) abc1234" in table
    assert "completed without a score for its primary metric: method=lopa task=rte model=roberta-large seed=3" in table


def test_plots_cover_the_swept_settings(tmp_path):
    plot_results = importlib.import_module("plot_results")
    frame = pd.DataFrame([{"experiment": "sweep", "model": "roberta-large", "task": task, "method": "lopa",
                           "prompt_length": m, "rank": r, "metric": "accuracy", "mean": 80 + m / 10 + r, "std": 1.0,
                           "n_seeds": 3, "trainable_params": 1000 * m * r}
                          for task in ("rte", "mrpc") for m in (5, 10, 25) for r in (1, 2, 4)])
    paths = plot_results.plot_experiment(frame, tmp_path, "sweep")
    assert sorted(p.name for p in paths) == sorted(f"sweep_{kind}.{ext}" for kind in ("params", "prompt_length", "rank")
                                                   for ext in ("png", "pdf"))
    # Methods that only differ in m and r (LoPA m=10 r=4 beside DePT m=60 r=30) are no sweep: no m or r figure.
    mixed = frame[(frame.prompt_length == 10) & (frame["rank"] == 4)].copy()
    mixed = pd.concat([mixed, mixed.assign(method="dept", prompt_length=60, rank=30)])
    paths = plot_results.plot_experiment(mixed, tmp_path / "mixed", "mixed")
    assert sorted(p.name for p in paths) == ["mixed_params.pdf", "mixed_params.png"]


def paper_numbers_in_methods_md(text: str) -> dict[tuple[str, str, str], float]:
    """(model, method, task) -> value for every number of METHODS.md §7."""
    section = text[text.index("## 7."):]
    methods = {"PT": "prompt_tuning", "S-IDPG": "idpg", "LoRA": "lora", "LoPA": "lopa", "full FT": "full_ft",
               "none": "zero_shot"}
    numbers, model, tasks = {}, None, []
    for line in section.splitlines():
        if line.startswith("GLUE dev"):
            model = "roberta-large"
        elif line.startswith("Code tasks"):
            model = "phi-2"
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| method") or line.startswith("| tuning"):
            tasks = [{"SST-2": "sst2", "CruxEval-I": "cruxeval_i", "CruxEval-O": "cruxeval_o"}.get(c, c.lower())
                     for c in cells[1:]]
        elif line.startswith("|") and cells[0] in methods:
            numbers.update({(model, methods[cells[0]], task): float(v) for task, v in zip(tasks, cells[1:])})
    three = r"CruxEval-I (\d+(?:\.\d+)?), CruxEval-O (\d+(?:\.\d+)?), MBPP (\d+(?:\.\d+)?)"
    deepseek = re.search(r"DeepSeek-Coder-1.3B LoPA: " + three, section)
    best = re.search(r"\(7B-class model\):\s*" + three, section)
    for model, match in (("deepseek-coder-1.3b", deepseek), ("7b-class", best)):
        numbers.update({(model, "lopa", task): float(v)
                        for task, v in zip(("cruxeval_i", "cruxeval_o", "mbpp"), match.groups())})
    return numbers


@pytest.mark.skipif(not METHODS_MD.is_file(), reason="../shared/docs/METHODS.md is not here")
def test_paper_numbers_are_exactly_those_of_methods_md():
    expected = paper_numbers_in_methods_md(METHODS_MD.read_text())
    assert len(expected) == 24 + 18 + 3 + 3
    paper = pd.read_csv(REPO / "results" / "paper_numbers.csv")
    lopa_paper = paper[~paper.table.isin(["accept_anchor", "rlp_anchor"])]
    assert {(r.model, r.method, r.task): r.value for r in lopa_paper.itertuples()} == expected
    rlp = paper[paper.table == "rlp_anchor"]  # the only RLP number METHODS.md gives: its gain over CoOp
    assert rlp.value.tolist() == [5.25] and "+5.25 points" in METHODS_MD.read_text()
    assert not paper.duplicated(["model", "method", "task"]).any()


def test_series_labels_leave_out_unset_settings():
    plot_results = importlib.import_module("plot_results")
    frame = pd.DataFrame({"method": ["lora", "lopa"], "prompt_length": [None, 10], "rank": [None, 4]})
    frame = frame.astype({"prompt_length": "Int64", "rank": "Int64"})  # as the collector's CSV columns are
    labels = [plot_results.series_label(row) for row in frame.to_dict("records")]
    assert labels == ["LoRA", "LoPA m=10 r=4"]
