"""Figures from results tables: score vs trainable parameters, the prompt-length sweep and the rank sweep.

    python scripts/plot_results.py results/glue_table.csv [results/rank_sweep.csv ...] [--out results/]

Each writes <experiment>_params.{png,pdf} and, when some method in the table was run at several m or r,
<experiment>_prompt_length.{png,pdf} and <experiment>_rank.{png,pdf}. The tables come from scripts/collect_results.py, i.e. from run records only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lopa.records import atomic_write  # noqa: E402

METHOD_LABELS = {"zero_shot": "none", "full_ft": "full FT", "lora": "LoRA", "prompt_tuning": "PT",
                 "idpg": "S-IDPG", "lopa": "LoPA", "accept": "ACCEPT", "dept": "DePT",
                 "lowrank_prompt": "low-rank PT", "residual_prompt": "residual PT", "coop": "CoOp",
                 "rlp": "RLP"}  # paper order first
MARKERS = {"zero_shot": "x", "full_ft": "s", "lora": "D", "prompt_tuning": "v", "idpg": "^", "lopa": "o",
           "accept": "P", "dept": "*", "lowrank_prompt": "<", "residual_prompt": ">", "coop": "h", "rlp": "p"}
TASK_LABELS = {"sst2": "SST-2", "mnli": "MNLI", "mnli_mm": "MNLI-mm", "cola": "CoLA", "mrpc": "MRPC", "qnli": "QNLI", "qqp": "QQP", "rte": "RTE",
               "cruxeval_i": "CruxEval-I", "cruxeval_o": "CruxEval-O", "mbpp": "MBPP", "humaneval": "HumanEval",
               "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
               "stanford_cars": "StanfordCars", "flowers102": "Flowers102", "food101": "Food101",
               "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT", "ucf101": "UCF101"}
FIXED = ("experiment", "model", "task", "method", "prompt_length", "rank", "metric", "mean", "std", "n_seeds",
         "seeds", "n_failed", "n_missing", "trainable_params", "paper", "diff")


def varies(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].dropna().nunique() > 1


def swept(frame: pd.DataFrame, column: str) -> bool:
    """Whether some method was run at several values of `column` (methods that merely differ in m or r, such as
    LoPA at m=10 beside DePT at m=60, are no sweep)."""
    return column in frame and bool((frame.groupby("method")[column].nunique() > 1).any())


def series_keys(frame: pd.DataFrame, x: str | None) -> list[str]:
    """Columns that tell the plotted series apart: method, plus model, m, r and extra settings where they vary."""
    extras = [c for c in frame.columns if c not in FIXED]
    return ["method"] + [c for c in ["model", "prompt_length", "rank", *extras] if c != x and varies(frame, c)]


def series_label(values: dict) -> str:
    parts = [METHOD_LABELS.get(values["method"], str(values["method"]))]
    for key, value in values.items():
        if key == "method" or value is None or (not isinstance(value, str) and pd.isna(value)):  # NaN, pd.NA (Int64)
            continue
        short = {"prompt_length": "m", "rank": "r", "model": ""}.get(key, key)
        value = int(value) if isinstance(value, float) and value.is_integer() else value
        parts.append(f"{short}={value}" if short else str(value))
    return " ".join(parts)


def ordered_tasks(frame: pd.DataFrame) -> list[str]:
    order = list(TASK_LABELS)
    return sorted(frame["task"].dropna().unique(), key=lambda t: (order.index(t), "") if t in order else (len(order), t))


def task_axes(tasks: list[str]) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.8), squeeze=False, layout="constrained")
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    return fig, list(axes.flat[:len(tasks)])


def style_panel(ax: plt.Axes, task: str, xlabel: str, ylabel: str) -> None:
    """Title (the task's label), axis labels and grid of one task's panel."""
    ax.set_title(TASK_LABELS.get(task.split("/")[-1], task))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def ylabel(frame: pd.DataFrame) -> str:
    metrics = sorted(frame["metric"].dropna().unique())
    return (", ".join(metrics) or "score") + " (%)"


def plot_params(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Score vs trainable parameters (log x), one marker per method, one panel per task."""
    tasks = ordered_tasks(frame)
    keys = series_keys(frame, None)
    fig, axes = task_axes(tasks)
    handles = {}
    for ax, task in zip(axes, tasks):
        part = frame[frame["task"] == task]
        for values, rows in part.groupby(keys, sort=False, dropna=False):
            values = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            label = series_label(values)
            handle = ax.errorbar(rows["trainable_params"], rows["mean"], yerr=rows["std"].fillna(0), linestyle="none",
                                 marker=MARKERS.get(values["method"], "o"), capsize=2, label=label)
            handles.setdefault(label, handle)
        ax.set_xscale("log")
        style_panel(ax, task, "trainable parameters", ylabel(frame))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(6, len(handles)), frameon=False)
    fig.suptitle(f"{name}: score vs trainable parameters")
    return save(fig, out_dir, f"{name}_params")


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """<stem>.png and <stem>.pdf in out_dir, each written atomically (a reader never sees half a figure)."""
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{stem}.{ext}"
        atomic_write(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150))
        paths.append(path)
    plt.close(fig)
    return paths


def plot_sweep(frame: pd.DataFrame, out_dir: Path, name: str, x: str, xlabel: str, log: bool) -> list[Path]:
    """Score vs a swept setting (m or r), one line per method setting, one panel per task."""
    tasks = ordered_tasks(frame)
    keys = series_keys(frame, x)
    fig, axes = task_axes(tasks)
    handles = {}
    for ax, task in zip(axes, tasks):
        part = frame[(frame["task"] == task) & frame[x].notna()]
        for values, rows in part.groupby(keys, sort=False, dropna=False):
            values = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            rows = rows.sort_values(x)
            label = series_label(values)
            handle = ax.errorbar(rows[x], rows["mean"], yerr=rows["std"].fillna(0), marker=MARKERS.get(values["method"], "o"),
                                 capsize=2, label=label)
            handles.setdefault(label, handle)
        ticks = sorted(frame[x].dropna().unique())
        if log:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.minorticks_off()
        style_panel(ax, task, xlabel, ylabel(frame))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(6, len(handles)), frameon=False)
    fig.suptitle(f"{name}: score vs {xlabel}")
    return save(fig, out_dir, f"{name}_{x}")


def plot_experiment(frame: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Every figure the table supports; returns the files written."""
    done = frame[frame["n_seeds"] > 0]
    paths = []
    if done.empty:
        return paths
    if done["trainable_params"].notna().any():
        paths += plot_params(done[done["trainable_params"].notna()], out_dir, name)
    if swept(done, "prompt_length"):
        paths += plot_sweep(done, out_dir, name, "prompt_length", "prompt length m", log=True)
    if swept(done, "rank"):
        paths += plot_sweep(done, out_dir, name, "rank", "rank r", log=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="tables written by scripts/collect_results.py")
    parser.add_argument("--out", type=Path, help="where the figures go (default: beside each table)")
    args = parser.parse_args(argv)
    for table in args.tables:
        paths = plot_experiment(pd.read_csv(table), args.out or table.parent, table.stem)
        print(f"{table}: " + (", ".join(str(p) for p in paths) or "no completed rows to plot"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
