"""Results tables from run records: results/<experiment>.{csv,md,tex} (mean ± std over seeds, beside the paper).

    python scripts/collect_results.py                                   # every experiment under outputs/ and multirun/
    python scripts/collect_results.py --runs multirun/glue_table --experiment glue_table --out results/

Each run directory's `results.json` is one record; runs are grouped by their config's `experiment_name` (runs
without one go to a table named `adhoc`) and, within it, by model, task, method, m, r and any other override
that varies between the runs; seeds are averaged. Failed runs, runs without a record (killed, timed out) and
sweep jobs that never started (from the sweep's `multirun.yaml`) are listed under the table. Figures come from
the same rows (scripts/plot_results.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from plot_results import METHOD_LABELS, TASK_LABELS, plot_experiment  # noqa: E402
from study_report import write_report  # noqa: E402

from lopa.records import atomic_write  # noqa: E402
from lopa.study import load_records  # noqa: E402

PAPER_NUMBERS = REPO / "results" / "paper_numbers.csv"
RESULTS_FILE = "results.json"
SKIP_DIRS = {".hydra", ".submitit", "wandb", "weights", "__pycache__"}
ADHOC = "adhoc"
# Overrides that name a column of their own, or that never change what a run computes.
COLUMN_KEYS = {"model", "task", "method", "method.prompt_length", "method.rank", "seed", "experiment"}
IGNORED_KEYS = {"data_dir", "logger", "device", "trainer.num_workers", "eval.batch_size", "trainer.log_every",
                "trainer.resume", "trainer.checkpoint_every", "trainer.keep_checkpoints"}
METHOD_ORDER = list(METHOD_LABELS)
TASK_ORDER = list(TASK_LABELS)
FRACTION_METRICS = {"accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "harmonic_mean", "base_accuracy",
                    "new_accuracy"}
# Base-to-new runs (primary metric H) become three columns per dataset, as in CoCoOp's and RLP's tables.
BASE_TO_NEW = {"base_accuracy": "base", "new_accuracy": "new", "harmonic_mean": "H"}
CSV_COLUMNS = ["experiment", "model", "task", "method", "prompt_length", "rank"]
STAT_COLUMNS = ["metric", "mean", "std", "n_seeds", "seeds", "n_failed", "n_missing", "trainable_params",
                "paper", "diff"]


@dataclass
class Run:
    """One run directory (or one sweep job that never started), reduced to what the tables need."""

    run_dir: Path
    status: str  # completed, failed, interrupted (resumable), incomplete (no record) or missing (never started)
    experiment: str
    model: str | None = None
    task: str | None = None
    method: str | None = None
    seed: int | None = None
    prompt_length: int | None = None
    rank: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    score: float | None = None  # the primary metric, in percent for fraction metrics
    trainable: int | None = None
    run_name: str | None = None
    error: str | None = None
    started: float = 0.0  # when the run started (its record), else its directory's mtime: orders reruns
    steps: int | None = None
    wall_time_s: float | None = None
    machine: str | None = None
    commit: str | None = None  # git commit of the code that made the run
    scores: dict[str, float] = field(default_factory=dict)  # base-to-new runs: base, new and H in percent


def as_percent(metric: str, value: float) -> float:
    return 100 * value if metric in FRACTION_METRICS or metric.startswith("pass@") else value


def override_key(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def load_yaml(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def run_config(run_dir: Path, record: dict | None) -> dict:
    """The run's config: from its record, else the resolved config.yaml, else Hydra's unresolved copy."""
    if record and isinstance(record.get("config"), dict):
        return record["config"]
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        config = load_yaml(path)
        if isinstance(config, dict):
            return config
    return {}


def select(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None if isinstance(node, str) and "${" in node else node


def start_time(run_dir: Path, record: dict | None) -> float:
    try:
        return datetime.fromisoformat(record["started_at"]).timestamp()
    except (TypeError, KeyError, ValueError):
        return run_dir.stat().st_mtime if run_dir.exists() else 0.0


def load_run(run_dir: Path, score: str = "best") -> Run:
    record_path = run_dir / RESULTS_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    config = run_config(run_dir, record)
    overrides = load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    run = Run(
        run_dir=run_dir,
        status=(record or {}).get("status", "incomplete"),
        experiment=config.get("experiment_name") or ADHOC,
        model=(record or {}).get("model") or select(config, "model.name"),
        task=(record or {}).get("task") or select(config, "task.name"),
        method=(record or {}).get("method") or select(config, "method.name"),
        seed=(record or {}).get("seed", select(config, "seed")),
        prompt_length=select(config, "method.prompt_length"),
        rank=select(config, "method.rank"),
        overrides=dict(override_key(o) for o in overrides),
        run_name=(record or {}).get("run_name") or select(config, "run_name"),
        error=(record or {}).get("error"),
        started=start_time(run_dir, record),
    )
    if run.status == "completed":
        run.metric = record["primary_metric"]
        evaluation = record.get(score) or {}
        if run.metric in evaluation:
            run.score = as_percent(run.metric, float(evaluation[run.metric]))
        if run.metric == "harmonic_mean":
            run.scores = {key: as_percent(key, float(evaluation[key])) for key in BASE_TO_NEW
                          if evaluation.get(key) is not None}
        run.trainable = (record.get("parameters") or {}).get("trainable")
        run.steps, run.wall_time_s = record.get("steps"), record.get("wall_time_s")
        commit = record.get("git_commit") or ""
        run.commit = (commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")) or None
        machine = record.get("machine") or {}
        if machine:
            device = machine.get("cuda") or f"{machine.get('cpu_count')} CPU cores"
            run.machine = f"{machine.get('hostname')} ({device}, torch {machine.get('torch')})"
    return run


def find_run_dirs(roots: list[Path]) -> tuple[list[Path], list[Path]]:
    """Run directories (a record or Hydra's .hydra/ inside) and sweep directories (multirun.yaml inside)."""
    runs, sweeps = [], []
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            here = Path(directory)
            if "multirun.yaml" in files:
                sweeps.append(here)
            if RESULTS_FILE in files or ".hydra" in subdirs:
                runs.append(here)
                subdirs[:] = []
                continue
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
    return sorted(set(runs)), sorted(set(sweeps))


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override lists Hydra's basic sweeper made for this sweep (empty when they cannot be recovered)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = load_yaml(sweep_dir / "multirun.yaml") or {}
    hydra = config.get("hydra", {})
    if "BasicSweeper" not in str(select(hydra, "sweeper._target_")):
        return []
    params = select(hydra, "sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(select(hydra, "overrides.task") or [])
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        return BasicSweeper.split_arguments(overrides, None)[0]
    except Exception as error:  # a sweep this parser cannot expand without the config loader (glob choices)
        print(f"warning: cannot recover the jobs of sweep {sweep_dir}: {error}", file=sys.stderr)
        return []


def compose_job(overrides: list[str]) -> dict:
    """The config a sweep job would have had, composed from today's configs/ (empty if it no longer composes)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=False)
    except Exception:
        return {}


def missing_jobs(sweep_dir: Path, runs: list[Run]) -> list[Run]:
    """Sweep jobs with no run directory at all: never started, or lost."""
    present = {frozenset(f"{k}={v}" for k, v in run.overrides.items()) for run in runs
               if sweep_dir in run.run_dir.parents}
    missing = []
    for job in expected_jobs(sweep_dir):
        values = dict(override_key(o) for o in job)
        if frozenset(f"{k}={v}" for k, v in values.items()) in present:
            continue
        config = compose_job(job)
        missing.append(Run(
            run_dir=sweep_dir, status="missing", experiment=config.get("experiment_name") or ADHOC,
            model=select(config, "model.name") or values.get("model"),
            task=select(config, "task.name") or values.get("task"),
            method=select(config, "method.name") or values.get("method"),
            seed=select(config, "seed"), prompt_length=select(config, "method.prompt_length"),
            rank=select(config, "method.rank"), overrides=values, error="never started: " + " ".join(job),
            started=start_time(sweep_dir, None)))
    return missing


def setting_and_seed(run: Run) -> tuple:
    settings = {key: value for key, value in run.overrides.items()
                if key not in COLUMN_KEYS | IGNORED_KEYS and not key.startswith("hydra")}
    return (run.experiment, run.model, run.task, run.method, run.prompt_length, run.rank, run.seed,
            tuple(sorted(settings.items())))


def current_runs(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(runs that count, runs superseded by a rerun). A relaunched sweep leaves several runs of one setting and
    seed: the newest completed one counts, else the newest attempt; the others are neither averaged nor listed
    as failures."""
    attempts: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        attempts[setting_and_seed(run)].append(run)
    kept, superseded = [], []
    for group in attempts.values():
        group.sort(key=lambda run: (run.status == "completed" and run.score is not None, run.started))
        kept.append(group[-1])
        superseded += group[:-1]
    return kept, superseded


def split_base_to_new(run: Run) -> list[Run]:
    """A base-to-new run as three runs of tasks `<task> base`, `<task> new` and `<task> H`; other runs unchanged."""
    if run.metric != "harmonic_mean" or run.task is None:
        return [run]
    return [replace(run, task=f"{run.task} {label}", metric=key, score=run.scores.get(key))
            for key, label in BASE_TO_NEW.items()]


def short_task(task: str | None) -> str | None:
    return task.split("/")[-1] if task else task


def varying_keys(runs: list[Run]) -> list[str]:
    """Overrides (besides the table's own columns) whose value differs between the runs of one experiment."""
    keys = {key for run in runs for key in run.overrides} - COLUMN_KEYS - IGNORED_KEYS
    return sorted(key for key in keys if not key.startswith("hydra") and len({run.overrides.get(key) for run in runs}) > 1)


PaperNumbers = dict[tuple[str, str, str], list[tuple[float, float, float]]]


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> PaperNumbers:
    """(model, method, task) -> [(m, r, value)], m and r NaN where the paper's cell does not pin them."""
    if not path.is_file():
        return {}
    numbers: PaperNumbers = defaultdict(list)
    for row in pd.read_csv(path).itertuples():
        numbers[(row.model, row.method, row.task)].append((row.prompt_length, row.rank, float(row.value)))
    return numbers


def paper_value(paper: PaperNumbers, model, method, task, prompt_length, rank) -> float | None:
    """The paper's number for this cell, if the paper ran this setting (same m and r where it states them)."""
    for paper_m, paper_r, value in paper.get((model, method, task), []):
        if (missing(paper_m) or paper_m == prompt_length) and (missing(paper_r) or paper_r == rank):
            return value
    return None


def aggregate(runs: list[Run], paper: PaperNumbers, paper_model: str | None = None) -> pd.DataFrame:
    """One row per (model, task, method, m, r, varying overrides): mean ± std of the primary metric over seeds.

    `paper` holds the paper's number for the cell's own model, or for `paper_model` when given (a reference from
    another FM, for runs on a model the paper never used)."""
    extras = varying_keys([run for run in runs if run.status != "missing"])
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        key = (run.experiment, run.model, short_task(run.task), run.method, run.prompt_length, run.rank,
               *(run.overrides.get(extra) for extra in extras))
        groups[key].append(run)
    rows = []
    for key, members in groups.items():
        done = sorted((run for run in members if run.status == "completed" and run.score is not None),
                      key=lambda run: (run.seed is None, run.seed))
        scores = [run.score for run in done]
        params = sorted({run.trainable for run in done if run.trainable is not None})
        model, task, method, prompt_length, rank = key[1:6]
        reported = paper_value(paper, paper_model or model, method, task, prompt_length, rank)
        mean = statistics.fmean(scores) if scores else math.nan
        rows.append({
            **dict(zip(CSV_COLUMNS + extras, key)),
            "metric": next((run.metric for run in done), None),
            "mean": mean,
            "std": statistics.stdev(scores) if len(scores) > 1 else math.nan,
            "n_seeds": len(scores),
            "seeds": " ".join(str(run.seed) for run in done),
            "n_failed": sum(run.status == "failed" for run in members),
            "n_missing": len(members) - len(done) - sum(run.status == "failed" for run in members),  # incl. no score
            "trainable_params": params[-1] if params else None,  # one value unless seeds disagree
            "paper": reported,
            "diff": mean - reported if reported is not None and scores else math.nan,
        })
    rows.sort(key=lambda row: row_order(row, extras))
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS + extras + STAT_COLUMNS)
    for column in ("prompt_length", "rank", "trainable_params"):  # integers with gaps, not floats
        frame[column] = frame[column].astype("Int64")
    return frame


def task_order(task) -> tuple:
    """The paper's task order; a base-to-new dataset's columns as base, new, H."""
    name, _, part = str(task).rpartition(" ")
    labels = list(BASE_TO_NEW.values())
    if name and part in labels:
        return (*order_of(name, TASK_ORDER), labels.index(part))
    return (*order_of(task, TASK_ORDER), -1)


def order_of(value, order: list[str]) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def missing(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def row_order(row: dict, extras: list[str]) -> tuple:
    """Model, then the paper's method order, m, r, other settings, then the paper's task order."""
    number = [-1.0 if missing(row[c]) else float(row[c]) for c in ("prompt_length", "rank")]
    return (str(row["model"]), order_of(row["method"], METHOD_ORDER), *number,
            tuple(str(row[c]) for c in extras), task_order(row["task"]))


def format_params(count) -> str:
    if missing(count):
        return "–"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(int(count))


def format_cell(row: pd.Series, pm: str = "±") -> str:
    ours = "–" if row["n_seeds"] == 0 else (f"{row['mean']:.2f}" if row["n_seeds"] == 1
                                            else f"{row['mean']:.2f} {pm} {row['std']:.2f}")
    if row["n_failed"] or row["n_missing"]:
        ours += "*"
    paper = row["paper"]
    return ours if missing(paper) else f"{ours} / {paper:.2f}"


def show(value) -> str:
    """A setting value for a table cell: integers without '.0', '–' for none."""
    if missing(value):
        return "–"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def wide_tables(frame: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]], int]]:
    """Per model: (model, header, rows, number of setting columns), one row per method setting, one column per task."""
    extras = list(frame.columns[len(CSV_COLUMNS):frame.columns.get_loc("metric")])
    shown = [c for c in ("prompt_length", "rank") if frame[c].dropna().nunique() > 1] + extras
    labels = {"prompt_length": "m", "rank": "r"}
    tables = []
    for model, part in frame.groupby("model", sort=False, dropna=False):
        tasks = sorted(part["task"].dropna().unique(), key=lambda task: task_order(task))
        header = ["method", *(labels.get(c, c) for c in shown), "params", "seeds",
                  *(TASK_LABELS.get(task, task) for task in tasks)]
        rows = []
        for setting, cells in part.groupby(["method", *shown], sort=False, dropna=False):
            setting = setting if isinstance(setting, tuple) else (setting,)
            by_task = {row["task"]: row for _, row in cells.iterrows()}
            seeds = sorted({int(n) for n in cells["n_seeds"]})
            rows.append([METHOD_LABELS.get(setting[0], show(setting[0])), *(show(v) for v in setting[1:]),
                         format_params(cells["trainable_params"].max()),
                         str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}",
                         *(format_cell(by_task[task]) if task in by_task else "" for task in tasks)])
        tables.append((show(model), header, rows, len(header) - len(tasks)))
    return tables


def problems(runs: list[Run]) -> list[str]:
    """One line per failed, unrecorded or never-started run."""
    lines = []
    for run in sorted(runs, key=lambda run: (run.status, str(run.run_dir), str(run.error))):
        what = f"method={run.method} task={short_task(run.task)} model={run.model} seed={run.seed}"
        if run.prompt_length is not None:
            what += f" m={run.prompt_length}"
        if run.rank is not None:
            what += f" r={run.rank}"
        if run.status == "failed":
            lines.append(f"failed: {run.run_name or run.run_dir.name} ({what}): {run.error} [{run.run_dir}]")
        elif run.status == "interrupted":
            lines.append(f"interrupted (rerun the same command in its directory to resume): {what} [{run.run_dir}]")
        elif run.status == "incomplete":
            lines.append(f"no record (running, killed or timed out): {what} [{run.run_dir}]")
        elif run.status == "missing":
            lines.append(f"not run: {what} [sweep {run.run_dir}]")
        elif run.status == "completed":
            lines.append(f"completed without a score for its primary metric: {what} [{run.run_dir}]")
        else:
            lines.append(f"{run.status}: {what} [{run.run_dir}]")
    return lines


def cost_summary(runs: list[Run]) -> list[str]:
    """What the completed runs cost, from their records: steps, wall time, machines."""
    timed = [run for run in runs if run.status == "completed" and run.wall_time_s is not None]
    if not timed:
        return []
    steps = sorted({run.steps for run in timed if run.steps is not None})
    minutes = [run.wall_time_s / 60 for run in timed]
    machines = sorted({run.machine for run in timed if run.machine})
    commits = sorted({run.commit for run in timed if run.commit})
    return [f"Completed runs: {len(timed)}; optimiser steps per run: {', '.join(map(str, steps)) or '–'} (0 = evaluation "
            f"only); wall time {sum(minutes):.1f} min in all, median {statistics.median(minutes):.1f} min per run, "
            f"longest {max(minutes):.1f} min; on {'; '.join(machines) or 'unrecorded machines'}; code at commit(s) "
            f"{', '.join(commits) or 'unrecorded'}.", ""]


def markdown(name: str, frame: pd.DataFrame, runs: list[Run], command: str, score: str = "best",
             superseded: list[Run] = (), paper_model: str | None = None) -> str:
    metric = ", ".join(sorted(frame["metric"].dropna().unique())) or "no completed run"
    out = [f"# {name}", "",
           f"Primary metric ({metric}), percent: mean ± std over seeds of each run's {score} evaluation; "
           "`ours / paper` where the paper reports the cell (METHODS.md §7); * = some seeds failed or missing.", "",
           *([f"The paper column is the paper's number for **{paper_model}** with the same method, task, m and r: a "
              "reference from another FM, not a number these runs should match.", ""] if paper_model else []),
           f"Made by `{command}` from {sum(run.status != 'missing' for run in runs)} run directories.", ""]
    out += cost_summary(runs)
    for model, header, rows, _ in wide_tables(frame):
        out += [f"## {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    lines = problems([run for run in runs if run.status != "completed" or run.score is None])
    out += ["## Failed or missing runs", ""] + ([f"- {line}" for line in lines] or ["none"]) + [""]
    if superseded:
        out += [f"{len(superseded)} earlier attempt(s) superseded by a rerun of the same setting and seed (not "
                f"counted): {', '.join(sorted(str(run.run_dir) for run in superseded))}", ""]
    return "\n".join(out)


def tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, escaped)
    return text


def latex(name: str, frame: pd.DataFrame, runs: list[Run], command: str) -> str:
    out = [f"% {name}: made by `{command}`; cells: ours (mean $\\pm$ std over seeds) / paper; * = failed or missing seeds"]
    for model, header, rows, settings in wide_tables(frame):
        out += [f"% model: {model}", r"\begin{tabular}{" + "l" * settings + "r" * (len(header) - settings) + "}", r"\toprule",
                " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(tex_escape(cell).replace("±", r"$\pm$").replace("–", "--") for cell in row) + r" \\"
                for row in rows]
        out += [r"\bottomrule", r"\end{tabular}", ""]
    lines = problems([run for run in runs if run.status != "completed" or run.score is None])
    out += ["% Failed or missing runs:"] + [f"%   {line}" for line in lines or ["none"]]
    return "\n".join(out) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def collect(roots: list[Path], out_dir: Path, experiment: str | None = None, score: str = "best",
            paper_path: Path = PAPER_NUMBERS, figures: bool = True, command: str = "scripts/collect_results.py",
            paper_model: str | None = None) -> dict[str, pd.DataFrame]:
    """Write the tables (and figures) of every experiment found under `roots`; returns the rows per experiment."""
    run_dirs, sweep_dirs = find_run_dirs([root for root in roots if root.exists()])
    runs = [load_run(run_dir, score) for run_dir in run_dirs]
    for sweep_dir in sweep_dirs:
        runs += missing_jobs(sweep_dir, runs)
    runs, superseded = current_runs(runs)
    runs = [part for run in runs for part in split_base_to_new(run)]
    by_experiment: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_experiment[run.experiment].append(run)
    names = [experiment] if experiment else sorted(by_experiment)
    paper = load_paper_numbers(paper_path)
    tables = {}
    for name in names:
        # A study (its records carry the protocol, config.study) has a table of its own: scripts/study_report.py.
        study = {key: record for root in roots if root.exists() for key, record in load_records(root).items()
                 if (record.get("config") or {}).get("experiment_name") == name and record["config"].get("study")}
        if study:
            written = write_report(study, out_dir, command, figures)
            print(f"{name}: study of {len(study)} run records -> {', '.join(str(path) for path in written)}")
            tables[name] = pd.read_csv(out_dir / f"{name}.csv")
            continue
        members = by_experiment.get(name, [])
        if not members:
            print(f"no runs of experiment {name!r} under {', '.join(map(str, roots))}", file=sys.stderr)
            continue
        frame = aggregate(members, paper, paper_model)
        atomic_write(out_dir / f"{name}.csv", lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
        write_text(out_dir / f"{name}.md", markdown(name, frame, members, command, score,
                                                    [run for run in superseded if run.experiment == name], paper_model))
        write_text(out_dir / f"{name}.tex", latex(name, frame, members, command))
        written = [f"{name}.{ext}" for ext in ("csv", "md", "tex")]
        if figures:
            written += [path.name for path in plot_experiment(frame, out_dir, name)]
        failed = sum(run.status != "completed" or run.score is None for run in members)
        print(f"{name}: {len(frame)} rows from {len(members)} runs ({failed} failed or missing) -> "
              f"{out_dir}/{{{', '.join(written)}}}")
        tables[name] = frame
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[REPO / "outputs", REPO / "multirun"],
                        help="directories searched for run directories (default: outputs/ and multirun/)")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="where the tables and figures go")
    parser.add_argument("--experiment", help="only this experiment_name (default: one table per name found)")
    parser.add_argument("--score", choices=("best", "final"), default="best",
                        help="which evaluation of each run: the best one (the paper's best dev epoch) or the last")
    parser.add_argument("--paper", type=Path, default=PAPER_NUMBERS, help="the paper's numbers (CSV)")
    parser.add_argument("--paper-model", help="set the paper's numbers for this model beside every row (a reference "
                        "for runs on an FM the paper did not use, e.g. roberta-large for the offline SmolLM2 runs)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    command = "python scripts/collect_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tables = collect(args.runs, args.out, args.experiment, args.score, args.paper, not args.no_figures, command.strip(),
                     args.paper_model)
    if not tables:
        print(f"no run records found under {', '.join(map(str, args.runs))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
