"""The offline study's protocol (issue 12): which cells to run, how the learning rate and step budget are picked
on the held-out training slice, and paired bootstrap intervals of method differences on the reported split.

A cell is one run: task x method x variant (the paper setting or an ablation) x learning-rate factor x seed. Its
record holds a learning curve: every evaluation scores the validation split (reported, with per-example predictions)
and, under "holdout", the held-out training slice (the only thing selection looks at).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

PAPER = "paper"  # the variant of a method's own settings
ZERO_SHOT = "zero_shot"


@dataclass(frozen=True)
class Cell:
    task: str  # config choice, e.g. glue/sst2
    method: str
    variant: str = PAPER
    lr_factor: float = 1
    seed: int = 1
    # How the run goes, not what it is (the run name leaves them out): a seed whose row's step budget is already
    # known trains up to it (the schedule still spans the horizon, so its score there is the full run's) and skips
    # the holdout, which only the selection seed's curve is read for.
    stop_at_step: int | None = None
    score_holdout: bool = True

    @property
    def run_name(self) -> str:  # configs/experiment/offline_study.yaml's run_name
        return f"{self.method}-{self.variant}-{self.task.split('/')[-1]}-lrx{format_factor(self.lr_factor)}-s{self.seed}"

    def overrides(self) -> list[str]:
        ablation = [] if self.variant == PAPER else [f"+ablation={self.variant}"]
        trimmed = [] if self.stop_at_step is None else [f"trainer.stop_at_step={self.stop_at_step}"]
        trimmed += [] if self.score_holdout else ["eval.score_holdout=false"]
        return [f"task={self.task}", f"method={self.method}", f"lr_factor={format_factor(self.lr_factor)}",
                f"seed={self.seed}", *ablation, *trimmed]


def format_factor(factor: float) -> str:
    """1 -> "1", 0.1 -> "0.1": what Hydra's override and OmegaConf's interpolation of lr_factor print."""
    return str(int(factor)) if float(factor).is_integer() else str(factor)


@dataclass(frozen=True)
class Selection:
    lr_factor: float
    lr: float
    budget: int  # optimiser steps
    holdout_scores: dict  # lr_factor -> best holdout score of the selection seed's run
    at_horizon: bool = False  # the budget is the run's last evaluation: its curve had not plateaued yet


def primary_metric(record: dict) -> str:
    return record["primary_metric"]


def curve(record: dict, metric: str, split: str = "eval") -> list[tuple[int, float]]:
    """(step, score) of every evaluation, on the validation split or the holdout slice."""
    points = []
    for evaluation in record.get("evaluations") or []:
        scores = evaluation.get("holdout", {}) if split == "holdout" else evaluation
        if metric in scores:
            points.append((evaluation["step"], scores[metric]))
    return points


def budget_step(points: list[tuple[int, float]], tolerance: float) -> int:
    """The first step whose score is within `tolerance` of the curve's best: where the curve has plateaued."""
    best = max(score for _, score in points)
    # scores are fractions of a few hundred examples: a difference of exactly `tolerance` must count as within it
    return next(step for step, score in points if score >= best - tolerance - 1e-9)


def budget_of(points: list[tuple[int, float]], tolerance: float) -> tuple[int, bool]:
    """The curve's step budget, and whether it is the curve's last evaluation (no plateau within the horizon)."""
    budget = budget_step(points, tolerance)
    return budget, budget == points[-1][0]


def select(records: dict[float, dict], metric: str, tolerance: float) -> Selection | None:
    """The learning-rate factor whose selection-seed run has the best holdout score (ties: the smaller factor),
    and the step budget read off that run's holdout curve; None until every factor's run has completed."""
    if not records or any(r.get("status") != "completed" for r in records.values()):
        return None
    best = {factor: max(score for _, score in curve(r, metric, "holdout")) for factor, r in records.items()}
    factor = max(sorted(best), key=lambda f: best[f])
    budget, at_horizon = budget_of(curve(records[factor], metric, "holdout"), tolerance)
    return Selection(factor, records[factor]["config"]["trainer"]["lr"], budget, best, at_horizon)


def evaluation_at(record: dict, step: int) -> dict | None:
    return next((e for e in record.get("evaluations") or [] if e["step"] == step), None)


def correct_matrix(records: list[dict], steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """predictions [runs, examples] at each run's step, and the labels [examples] (the same for every run)."""
    labels = np.asarray(records[0]["eval_labels"])
    predictions = []
    for record, step in zip(records, steps):
        if record["eval_labels"] != records[0]["eval_labels"]:
            raise ValueError(f"{record['run_name']} was evaluated on other examples than {records[0]['run_name']}")
        predictions.append(evaluation_at(record, step)["predictions"])
    return np.asarray(predictions), labels


def score(predictions: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """accuracy or binary F1 (positive class 1, as GLUE's MRPC) along the last axis, batched over leading axes."""
    if metric == "accuracy":
        return (predictions == labels).mean(-1)
    if metric == "f1":
        true_positive = ((predictions == 1) & (labels == 1)).sum(-1)
        predicted, actual = (predictions == 1).sum(-1), (labels == 1).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(2 * true_positive / (predicted + actual))
    raise ValueError(f"no bootstrap for metric {metric!r} (allowed: accuracy, f1)")


def paired_bootstrap(a: list[dict], a_steps: list[int], b: list[dict], b_steps: list[int], metric: str,
                     samples: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds of score(a) - score(b), runs paired by seed (a[i] with b[i]), with two 95 % percentile
    intervals. `low`/`high` resample the examples (the same resample for every run) with the seeds fixed: how sure
    these seeds' mean difference is. `seeds_low`/`seeds_high` also resample the seed pairs, so the seed-to-seed
    spread of the difference widens the interval too (coarse with few seeds; equal to the first with one)."""
    a_pred, labels = correct_matrix(a, a_steps)
    b_pred, b_labels = correct_matrix(b, b_steps)
    if not np.array_equal(labels, b_labels):
        raise ValueError("the two methods were evaluated on different examples")
    per_seed = score(a_pred, labels, metric) - score(b_pred, labels, metric)
    rng, seed_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)  # the example draws as before
    diffs, seed_diffs = np.empty(samples), np.empty(samples)
    for i in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        resampled = score(a_pred[:, index], labels[index], metric) - score(b_pred[:, index], labels[index], metric)
        diffs[i] = resampled.mean()
        seed_diffs[i] = resampled[seed_rng.integers(0, len(a), len(a))].mean()
    low, high = np.percentile(diffs, [2.5, 97.5])
    seeds_low, seeds_high = np.percentile(seed_diffs, [2.5, 97.5])
    return {"diff": float(per_seed.mean()), "low": float(low), "high": float(high), "seeds_low": float(seeds_low),
            "seeds_high": float(seeds_high), "per_seed": [float(d) for d in per_seed], "seeds": len(a),
            "examples": len(labels)}


def load_records(root: Path) -> dict[str, dict]:
    """run name -> record of every results.json under `root` (one directory per cell)."""
    records = {}
    for path in sorted(Path(root).glob("*/results.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        record["run_dir"] = str(path.parent)
        records[path.parent.name] = record
    return records


def completed(records: dict[str, dict], cell: Cell) -> dict | None:
    record = records.get(cell.run_name)
    return record if record and record.get("status") == "completed" else None


def lr_factors_of(protocol: dict, method: str) -> list[float]:
    """The learning-rate grid of `method`: the core methods' `lr_factors`; a seed method's `seed_method_lr_factors`
    (its paper rates are T5's, so that grid reaches below them), or its paper value alone when that is null."""
    if method in protocol.get("seed_methods") or []:
        return list(protocol.get("seed_method_lr_factors") or [1])
    return list(protocol["lr_factors"])


def selection_for(records: dict[str, dict], protocol: dict, task: str, method: str,
                  variant: str = PAPER) -> Selection | None:
    runs = {f: completed(records, Cell(task, method, variant, f, protocol["selection_seed"]))
            for f in lr_factors_of(protocol, method)}
    if any(r is None for r in runs.values()):
        return None
    return select(runs, primary_metric(next(iter(runs.values()))), protocol["budget_tolerance"])


def long_horizon_cells(protocol: dict, records: dict[str, dict], task: str, seeds: list[int]) -> list[tuple[Cell | None, str]]:
    """The `study.long_horizon` ablation (a longer run at the selected learning rate) of every core method whose
    selected run was still improving at its last evaluation: its step budget is the horizon, not a plateau."""
    variant = protocol.get("long_horizon")
    cells: list[tuple[Cell | None, str]] = []
    for method in protocol["core_methods"] if variant else []:
        chosen = selection_for(records, protocol, task, method)
        if chosen is None:
            cells.append((None, f"{variant} of {method} on {task} (waits for its learning-rate selection; runs only "
                                "if the selected run's budget is its horizon)"))
        elif chosen.at_horizon:
            cells += [(Cell(task, method, variant, chosen.lr_factor, seed),
                       f"{variant}: {method}'s selected run had not plateaued at its horizon") for seed in seeds]
    return cells


def selected_method_cells(protocol: dict, records: dict[str, dict], task: str, methods: list[str],
                          why: str) -> list[tuple[Cell | None, str]]:
    """Each method's learning-rate grid at the selection seed, then its other seeds at the chosen factor (None
    while the grid is incomplete; a one-point grid, e.g. a seed method's paper value alone, needs no selection)."""
    cells: list[tuple[Cell | None, str]] = []
    for method in methods:
        cells += [(Cell(task, method, PAPER, factor, protocol["selection_seed"]), why)
                  for factor in lr_factors_of(protocol, method)]
    for method in methods:
        grid = lr_factors_of(protocol, method)
        chosen = grid[0] if len(grid) == 1 else getattr(selection_for(records, protocol, task, method), "lr_factor", None)
        cells += [(Cell(task, method, PAPER, chosen, seed) if chosen is not None else None,
                   f"seeds of {method} on {task} (waits for its learning-rate selection)")
                  for seed in protocol["seeds"] if seed != protocol["selection_seed"]]
    return cells


def row_budget(protocol: dict, records: dict[str, dict], cell: Cell) -> tuple[int, bool] | None:
    """The step budget of `cell`'s row, read off its selection seed's holdout curve, and whether it is that curve's
    last evaluation; None while that run has not completed. The plan trims seeds by it, the report reports it."""
    selector = completed(records, replace(cell, seed=protocol["selection_seed"]))
    if selector is None:
        return None
    return budget_of(curve(selector, primary_metric(selector), "holdout"), protocol["budget_tolerance"])


def trimmed(protocol: dict, records: dict[str, dict], cell: Cell | None) -> Cell | None:
    """A seed other than the selection seed, once its row's budget is known: trained to that budget, holdout
    unscored (only the selection seed's holdout curve is read). Otherwise the cell as it is."""
    if cell is None or cell.seed == protocol["selection_seed"] or cell.method == ZERO_SHOT:
        return cell
    budget = row_budget(protocol, records, cell)
    return cell if budget is None else replace(cell, stop_at_step=budget[0], score_holdout=False)


def plan(protocol: dict, records: dict[str, dict]) -> list[tuple[Cell | None, str]]:
    """Every cell in the order the study runs them (the primary task first; per task: zero-shot, learning-rate
    selection, the other seeds, the selection seed's long-horizon runs, ablations, selection ablations, the seed
    methods, the other seeds of the long-horizon runs), each with why it waits, or None as a cell when its position
    depends on a selection not made yet (the string says which)."""
    cells: list[tuple[Cell | None, str]] = []
    seeds = list(protocol["seeds"])
    other_seeds = [seed for seed in seeds if seed != protocol["selection_seed"]]
    for task in protocol["tasks"]:
        cells.append((Cell(task, ZERO_SHOT, PAPER, 1, protocol["selection_seed"]), "zero-shot"))
        cells += selected_method_cells(protocol, records, task, protocol["core_methods"], "selection")
        # whether the horizon was long enough is worth knowing before the ablations; its other seeds come last
        cells += long_horizon_cells(protocol, records, task, [protocol["selection_seed"]])
        for method, variants in (protocol.get("ablations") or {}).items():
            chosen = selection_for(records, protocol, task, method)
            for variant in variants:
                for seed in seeds:
                    cells.append((Cell(task, method, variant, chosen.lr_factor, seed) if chosen else None,
                                  f"ablation {variant} of {method} on {task} (waits for its learning-rate selection)"))
        # ablations of what selection sees (e.g. the holdout slice): the whole grid again, at the selection seed
        for method, variants in ((protocol.get("selection_ablations") or {}).get(task) or {}).items():
            for variant in variants:
                for factor in protocol["lr_factors"]:
                    cells.append((Cell(task, method, variant, factor, protocol["selection_seed"]),
                                  f"selection ablation {variant} of {method}"))
        cells += selected_method_cells(protocol, records, task, protocol.get("seed_methods") or [],
                                       "selection of a seed method")
        cells += [(cell, why) for cell, why in long_horizon_cells(protocol, records, task, other_seeds) if cell]
    return [(trimmed(protocol, records, cell), why) for cell, why in cells]
