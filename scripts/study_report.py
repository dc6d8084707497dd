"""The offline study's table and figures from its run records (called by scripts/collect_results.py).

    python scripts/collect_results.py --runs results/offline_study/runs --experiment offline_study --out results

writes offline_study.{md,csv,tex}, offline_study_curves.{png,pdf} (validation score against steps, one line per
method at its selected learning rate, the seeds' range as a band) and offline_study_params.{png,pdf} (score at
the budget against trainable parameters, with 95 % bootstrap intervals). Everything is computed from whatever
records have completed; the cells still missing are listed. Selection looks at the holdout scores only.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from plot_results import MARKERS, METHOD_LABELS, TASK_LABELS, save, style_panel  # noqa: E402

from lopa.records import atomic_write  # noqa: E402
from lopa.study import (  # noqa: E402
    PAPER,
    ZERO_SHOT,
    Cell,
    Selection,
    completed,
    correct_matrix,
    curve,
    format_factor,
    lr_factors_of,
    paired_bootstrap,
    plan,
    row_budget,
    score,
    selection_for,
)

BOOTSTRAP_METRICS = ("accuracy", "f1")


@dataclass
class Row:
    """One line of the table: a method (or an ablation of one) on a task, at one learning rate."""

    task: str
    method: str
    variant: str
    lr_factor: float | None = None
    lr: float | None = None
    grid: dict = field(default_factory=dict)  # lr_factor -> best holdout score (selection seed)
    budget: int | None = None
    at_horizon: bool = False  # the budget is the selector's last evaluation: no plateau within the horizon
    records: list[dict] = field(default_factory=list)  # completed seeds, in seed order
    params: int | None = None
    how: str = ""  # how the learning rate was set

    @property
    def label(self) -> str:
        name = METHOD_LABELS.get(self.method, self.method)
        return name if self.variant == PAPER else f"{name} ({self.variant.replace('_', ' ')})"

    def seed_scores(self, metric: str) -> dict[int, float]:
        """seed -> validation score (%) at the budget step, for the seeds that reached it."""
        values = {}
        for record in self.records:
            evaluation = next((e for e in record["evaluations"] if e["step"] == self.budget), None)
            if evaluation is not None and metric in evaluation:
                values[record["seed"]] = 100 * evaluation[metric]
        return values

    def scores(self, metric: str) -> list[float]:
        return list(self.seed_scores(metric).values())

    def steps(self) -> list[int]:
        return [self.budget] * len(self.records)


def metrics_of(task: str) -> list[str]:
    return ["accuracy", "f1"] if task.endswith("mrpc") else ["accuracy"]


def row_for(records: dict, study: dict, task: str, method: str, variant: str, factor: float | None, how: str) -> Row:
    """The row of `method`/`variant` at `factor`: its budget from the selection seed's holdout curve."""
    row = Row(task, method, variant, factor, how=how)
    if factor is None:
        return row
    seed_records = [completed(records, Cell(task, method, variant, factor, seed)) for seed in study["seeds"]]
    row.records = [r for r in seed_records if r is not None]
    selector = completed(records, Cell(task, method, variant, factor, study["selection_seed"]))
    if selector is not None:
        if method != ZERO_SHOT:
            row.budget, row.at_horizon = row_budget(study, records, Cell(task, method, variant, factor))
        else:
            row.budget = 0
        row.lr = selector["config"]["trainer"]["lr"]
    if row.records:
        row.params = row.records[0]["parameters"]["trainable"]
    return row


def selected_row(records: dict, study: dict, task: str, method: str, variant: str) -> tuple[Selection | None, Row]:
    """The row of `method`/`variant` at the learning rate its own grid selects on the holdout (the grid so far
    while the selection is incomplete)."""
    chosen = selection_for(records, study, task, method, variant)
    how = "selected on the holdout" if variant == PAPER else "selected again, on this variant's holdout"
    row = row_for(records, study, task, method, variant, chosen.lr_factor if chosen else None, how)
    if chosen:
        row.grid = chosen.holdout_scores
        return chosen, row
    for factor in lr_factors_of(study, method):
        done = completed(records, Cell(task, method, variant, factor, study["selection_seed"]))
        if done:
            row.grid[factor] = max(s for _, s in curve(done, done["primary_metric"], "holdout"))
    return None, row


def build_rows(records: dict, study: dict) -> list[Row]:
    rows = []
    for task in study["tasks"]:
        rows.append(row_for(records, study, task, ZERO_SHOT, PAPER, 1, "none (evaluation only)"))
        selections = {}
        for method in study["core_methods"]:
            selections[method], row = selected_row(records, study, task, method, PAPER)
            rows.append(row)
        long_horizon = study.get("long_horizon")
        for method in study["core_methods"] if long_horizon else []:
            chosen = selections[method]
            if chosen and chosen.at_horizon:
                rows.append(row_for(records, study, task, method, long_horizon, chosen.lr_factor,
                                    f"{METHOD_LABELS.get(method, method)}'s selected"))
        for method, variants in (study.get("ablations") or {}).items():
            chosen = selections.get(method)
            for variant in variants:
                rows.append(row_for(records, study, task, method, variant, chosen.lr_factor if chosen else None,
                                    f"{METHOD_LABELS.get(method, method)}'s selected"))
        for method, variants in ((study.get("selection_ablations") or {}).get(task) or {}).items():
            rows += [selected_row(records, study, task, method, variant)[1] for variant in variants]
        for method in study.get("seed_methods") or []:
            if study.get("seed_method_lr_factors"):
                rows.append(selected_row(records, study, task, method, PAPER)[1])
            else:
                rows.append(row_for(records, study, task, method, PAPER, 1, "paper value (not selected)"))
    return rows


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_score(values: list[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_grid(row: Row) -> str:
    if not row.grid:
        return "–"
    return ", ".join(f"×{format_factor(f)}: {100 * s:.1f}" for f, s in sorted(row.grid.items()))


def format_budget(row: Row) -> str:
    if row.budget is None:
        return "–"
    return f"{row.budget} (horizon)" if row.at_horizon else str(row.budget)


def score_interval(row: Row, metric: str, samples: int) -> tuple[float, float] | None:
    """95 % bootstrap interval of the row's mean score over seeds (examples resampled)."""
    if not row.records or metric not in BOOTSTRAP_METRICS or row.budget is None:
        return None
    predictions, labels = correct_matrix(row.records, row.steps())
    rng = np.random.default_rng(0)
    draws = [score(predictions[:, i], labels[i], metric).mean()
             for i in (rng.integers(0, len(labels), len(labels)) for _ in range(samples))]
    low, high = np.percentile(draws, [2.5, 97.5])
    return 100 * low, 100 * high


def compare(task: str, a: Row | None, b: Row | None, metric: str, samples: int) -> dict:
    """Paired bootstrap of row a − row b on `metric`, over the seeds both have (no numbers where none)."""
    result = {"task": task, "metric": metric}
    if a and b and a.records and b.records and a.budget is not None and b.budget is not None:
        seeds = sorted({r["seed"] for r in a.records} & {r["seed"] for r in b.records})
        a_runs = [r for r in a.records if r["seed"] in seeds]
        b_runs = [r for r in b.records if r["seed"] in seeds]
        if seeds:
            result.update(paired_bootstrap(a_runs, [a.budget] * len(seeds), b_runs, [b.budget] * len(seeds), metric,
                                           samples))
    return result


def comparisons(rows: list[Row], study: dict) -> list[dict]:
    """Paired bootstrap intervals, per task and metric: the study's method differences, then each ablation against
    the method row it changes (over the seeds both have: a one-seed ablation is paired with that seed only)."""
    by_key = {(r.task, r.method, r.variant): r for r in rows}
    pairs = [((a, PAPER), (b, PAPER)) for a, b in study["comparisons"]]
    pairs += [((method, variant), (method, PAPER))
              for method, variants in (study.get("ablations") or {}).items() for variant in variants]
    results = []
    for task in study["tasks"]:
        for (a_method, a_variant), (b_method, b_variant) in pairs:
            a, b = by_key.get((task, a_method, a_variant)), by_key.get((task, b_method, b_variant))
            for metric in metrics_of(task):
                results.append({**compare(task, a, b, metric, study["bootstrap_samples"]),
                                "a": Row(task, a_method, a_variant).label, "b": Row(task, b_method, b_variant).label,
                                "a_method": a_method, "a_variant": a_variant, "b_method": b_method})
    return results


def majority_rate(rows: list[Row], task: str) -> float | None:
    for row in rows:
        if row.task == task and row.records and "eval_labels" in row.records[0]:
            labels = row.records[0]["eval_labels"]
            return 100 * max(labels.count(c) for c in set(labels)) / len(labels)
    return None


def separable(rows: list[Row], task: str, margin: float = 2.0) -> bool | None:
    """Whether full FT beats the majority class by more than `margin` points: if not, the task cannot rank methods."""
    full = next((r for r in rows if r.task == task and r.method == "full_ft" and r.variant == PAPER), None)
    majority = majority_rate(rows, task)
    if full is None or not full.scores("accuracy") or majority is None:
        return None
    return statistics.mean(full.scores("accuracy")) > majority + margin


def frame(rows: list[Row], comps: list[dict]) -> pd.DataFrame:
    lines = []
    for row in rows:
        for metric in metrics_of(row.task):
            values = row.scores(metric)
            mean, std = mean_std(values)
            lines.append({"kind": "score", "task": row.task.split("/")[-1], "method": row.method, "variant": row.variant,
                          "metric": metric, "mean": mean, "std": std, "n_seeds": len(values),
                          "seeds": " ".join(str(r["seed"]) for r in row.records),
                          "per_seed": " ".join(f"{value:.4f}" for value in row.seed_scores(metric).values()),
                          "lr": row.lr,
                          "lr_factor": row.lr_factor, "lr_grid": format_grid(row), "lr_rule": row.how,
                          "budget_steps": row.budget, "budget_at_horizon": row.at_horizon,
                          "trainable_params": row.params})
    for comp in comps:
        lines.append({"kind": "difference", "task": comp["task"].split("/")[-1],
                      "method": f"{comp['a_method']}-{comp['b_method']}", "variant": comp["a_variant"],
                      "metric": comp["metric"],
                      "mean": 100 * comp["diff"] if "diff" in comp else None,
                      "ci_low": 100 * comp["low"] if "low" in comp else None,
                      "ci_high": 100 * comp["high"] if "high" in comp else None, "n_seeds": comp.get("seeds", 0),
                      "seeds_ci_low": 100 * comp["seeds_low"] if comp.get("seeds", 0) > 1 else None,
                      "seeds_ci_high": 100 * comp["seeds_high"] if comp.get("seeds", 0) > 1 else None,
                      "per_seed": " ".join(f"{100 * d:.4f}" for d in comp.get("per_seed", []))})
    return pd.DataFrame(lines)


def wall_time(done: list[dict]) -> str:
    """The records' summed wall time, saying when it undercounts: a resumed run recorded before checkpoints carried
    the earlier processes' time (`earlier_wall_time_s`) counts only its last process."""
    hours = sum(r.get("wall_time_s", 0) for r in done) / 3600
    last_leg_only = sum(1 for r in done if r.get("resumed_from") and "earlier_wall_time_s" not in r)
    if not last_leg_only:
        return f"{hours:.1f} hours of wall time"
    return (f"{hours:.1f} hours of wall time, an undercount: {last_leg_only} resumed run(s) recorded only their last "
            "process's time")


def machine_name(machine: dict) -> str:
    """Host, cores, CPU and torch: whether bf16 was native changes wall times several-fold (older records lack the CPU)."""
    bf16 = {True: ", native bf16", False: ", bf16 emulated"}.get(machine.get("cpu_bf16"), "")
    cpu = f", {machine['cpu']}{bf16}" if machine.get("cpu") else ""
    return f"{machine.get('hostname')} ({machine.get('cpu_count')} CPU cores{cpu}, torch {machine.get('torch')})"


def markdown(rows: list[Row], comps: list[dict], missing: list[str], study: dict, records: dict, command: str) -> str:
    done = [r for r in records.values() if r.get("status") == "completed"]
    commits = sorted({str(r.get("git_commit"))[:7] for r in done})
    machines = sorted({machine_name(r["machine"]) for r in done if r.get("machine")})
    paper_runs = [r for r in done if r["config"].get("variant") == PAPER] or done
    first = paper_runs[0]["config"] if paper_runs else {}
    trainer = first.get("trainer", {})
    out = ["# offline_study", "",
           f"Made by `{command}` from {len(done)} completed run records ({wall_time(done)}) on "
           f"{', '.join(machines) or '–'}; code at commit(s) {', '.join(commits) or '–'}.", "",
           f"Protocol (configs/experiment/offline_study.yaml): {first.get('model', {}).get('name', '?')} with "
           f"{first.get('encoder', {}).get('name', '?')} as instance encoder; batch {trainer.get('batch_size')}, "
           f"horizon {trainer.get('max_steps')} steps, evaluation every {trainer.get('eval_every')} steps on the "
           f"validation split (reported) and on {first.get('eval', {}).get('holdout')} training examples held out "
           f"from training (selection). Learning rate = the method's paper value × a factor in "
           f"{{{', '.join(format_factor(f) for f in study['lr_factors'])}}}, picked by the best holdout score of seed "
           f"{study['selection_seed']}; the step budget is the first evaluation of that run within "
           f"{100 * study['budget_tolerance']:g} point(s) of its best holdout score, and the score reported is the "
           f"validation score at that step (not the best validation step), mean ± std over seeds "
           f"{', '.join(map(str, study['seeds']))} (seeds other than {study['selection_seed']} may stop at the budget: "
           f"the schedule still spans the horizon). Intervals: 95 % bootstrap over validation examples "
           f"({study['bootstrap_samples']} resamples), paired by seed and example for differences. A budget marked "
           f"\"(horizon)\" is the run's last evaluation: its holdout curve was still rising, so the horizon, not a "
           f"plateau, set it" + (f"; such a method gets a `{study['long_horizon']}` row (configs/ablation/), the same "
                                 f"learning rate run longer." if study.get("long_horizon") else ".")
           + (f" The seed methods' paper rates are T5's, so their grid reaches below them: "
              f"{{{', '.join(format_factor(f) for f in study['seed_method_lr_factors'])}}} × the paper value, "
              "selected the same way (for ACCEPT and DePT the factor scales the prompt's rate; the added update keeps "
              "its own)." if study.get("seed_method_lr_factors") else "")
           + (" A row \"selected again\" changes what selection sees (another holdout slice, configs/ablation/): "
              f"its whole grid is rerun at seed {study['selection_seed']} only."
              if study.get("selection_ablations") else ""), ""]
    for task in study["tasks"]:
        name = TASK_LABELS.get(task.split("/")[-1], task)
        majority = majority_rate(rows, task)
        verdict = separable(rows, task)
        out += [f"## {name}", ""]
        if majority is not None:
            note = {True: "full FT is clear of it, so the task can rank methods",
                    False: "**full FT does not beat it by more than 2 points: this task does not rank methods here**",
                    None: "full FT not yet run"}[verdict]
            out += [f"Majority class: {majority:.2f} %; {note}.", ""]
        metrics = metrics_of(task)
        # per seed: a one-seed ablation is read against the same seed of the row it changes
        head = ["method", "params", "LR rule", "LR grid (holdout best, %)", "LR", "budget (steps)",
                f"seed: {metrics[0]} (val., %)", *[f"{m} (val., %)" for m in metrics], f"95 % CI of {metrics[0]}"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in (r for r in rows if r.task == task):
            interval = score_interval(row, metrics[0], study["bootstrap_samples"])
            out.append("| " + " | ".join([
                row.label, f"{row.params:,}" if row.params is not None else "–", row.how, format_grid(row),
                f"{row.lr:g}" if row.lr else "–", format_budget(row),
                ", ".join(f"{seed}: {value:.1f}" for seed, value in row.seed_scores(metrics[0]).items()) or "–",
                *[format_score(row.scores(m)) for m in metrics],
                f"[{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "–"]) + " |")
        out += ["", "| difference | metric | mean (points) | per seed | 95 % CI, examples resampled | "
                "95 % CI, seeds and examples resampled | seeds | examples |", "|---|---|---|---|---|---|---|---|"]
        for comp in (c for c in comps if c["task"] == task):
            label = f"{comp['a']} − {comp['b']}"
            if "diff" in comp:
                out.append(f"| {label} | {comp['metric']} | {100 * comp['diff']:+.2f} | "
                           + " ".join(f"{100 * d:+.1f}" for d in comp["per_seed"]) + " | "
                           f"[{100 * comp['low']:+.2f}, {100 * comp['high']:+.2f}] | "
                           + (f"[{100 * comp['seeds_low']:+.2f}, {100 * comp['seeds_high']:+.2f}]"
                              if comp["seeds"] > 1 else "– (one seed)") + f" | {comp['seeds']} | {comp['examples']} |")
            else:
                out.append(f"| {label} | {comp['metric']} | – | – | – | – | 0 | – |")
        if any("diff" in c for c in comps if c["task"] == task):
            spread = [std for row in rows if row.task == task and row.variant == PAPER
                      for std in [mean_std(row.scores(metrics[0]))[1]] if std is not None]
            out += ["", "The first interval holds the seeds fixed: how sure these seeds' mean difference is. The second "
                    "also resamples the seed pairs, so a difference whose sign depends on the seed gets a wide interval "
                    "(coarse with 3 seeds). A one-seed difference has only the first: it resamples examples, not "
                    "seeds" + (f" (the method rows' seed-to-seed std of {metrics[0]}: {min(spread):.1f} to "
                               f"{max(spread):.1f} points)" if spread else "") + ", a lead for more seeds, not a finding."]
        out.append("")
    scales = [(r["method"], r["config"].get("variant"), r["prompt_scale"]) for r in done if r.get("prompt_scale")]
    if scales:
        out += ["## Prompt scale", "", "Mean row norm, at the start and end of training, of the shared prompt (PT's "
                "table, LoPA's Z_S) and of the prompt the FM is given (on one holdout batch, eval mode: LoPA's "
                "Z_S ∘ σ(u vᵀ), S-IDPG's generated rows), beside the FM's token embeddings'; moved: "
                "‖final − initial‖ / ‖initial‖; spread: how much the input prompt differs between inputs, mean "
                "‖P_b − P̄‖ / ‖P̄‖ over the batch (0 for a static prompt). Runs: the records that carry each "
                "measurement (older records have no input prompt's, nor how far a prompt moved).", "",
                "| method | variant | runs | shared prompt: initial | final | moved | runs | input prompt: initial "
                "| final | moved | spread: initial | final | token embedding row norm |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        grouped = defaultdict(list)
        for method, variant, scale in scales:
            grouped[(method, variant)].append(scale)

        def mean_of(values: list[float], digits: int = 2) -> str:
            return f"{statistics.mean(values):.{digits}f}" if values else "–"

        def norms(group: list[dict], name: str) -> list[str]:
            having = [s for s in group if f"{name}_row_norm" in s["initial"]]
            moved = [s["final"][f"{name}_relative_change"] for s in having if f"{name}_relative_change" in s["final"]]
            return [str(len(having)), mean_of([s["initial"][f"{name}_row_norm"] for s in having]),
                    mean_of([s["final"][f"{name}_row_norm"] for s in having]), mean_of(moved, 3)]

        for (method, variant), group in sorted(grouped.items()):
            spread = [mean_of([s[when]["input_prompt_instance_spread"] for s in group
                               if "input_prompt_instance_spread" in s[when]], 3) for when in ("initial", "final")]
            cells = [METHOD_LABELS.get(method, method), variant, *norms(group, "prompt"), *norms(group, "input_prompt"),
                     *spread, f"{group[0]['initial']['token_embedding_row_norm']:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Missing cells", ""]
    out += [f"- {line}" for line in missing] or ["none"]
    return "\n".join(out) + "\n"


def latex(frame_: pd.DataFrame) -> str:
    scores = frame_[frame_.kind == "score"]
    out = [r"\begin{tabular}{llllrrl}", r"\toprule", r"task & method & variant & metric & LR & budget & score \\",
           r"\midrule"]
    for _, r in scores.iterrows():
        value = "--" if pd.isna(r["mean"]) else (f"{r['mean']:.2f}" + ("" if pd.isna(r["std"]) else f" $\\pm$ {r['std']:.2f}"))
        lr = "--" if pd.isna(r["lr"]) else f"{r['lr']:g}"
        budget = "--" if pd.isna(r["budget_steps"]) else str(int(r["budget_steps"]))
        out.append(f"{r['task']} & {r['method'].replace('_', ' ')} & {r['variant'].replace('_', ' ')} & {r['metric']} & "
                   f"{lr} & {budget} & {value} \\\\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def finish(fig: plt.Figure, axes, title: str, out_dir: Path, stem: str) -> list[Path]:
    """The first panel's legend below the panels, the title, and the figure saved."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=9)
    return save(fig, out_dir, stem)


def plot_curves(rows: list[Row], study: dict, out_dir: Path) -> list[Path]:
    tasks = study["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in (r for r in rows if r.task == task and r.variant == PAPER and r.records and r.method != ZERO_SHOT):
            metric = row.records[0]["primary_metric"]
            curves = [dict(curve(r, metric)) for r in row.records]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[100 * c[s] for s in steps] for c in curves])
            line, = ax.plot(steps, values.mean(0), marker=MARKERS.get(row.method, "o"), markersize=3,
                            label=f"{row.label} (lr {row.lr:g})")
            if len(curves) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
            # seeds trained only to the budget (the study's trimmed seeds): the longest curve goes on, dashed
            longest = max(curves, key=len)
            beyond = [s for s in sorted(longest) if s >= steps[-1]] if steps else []
            if len(beyond) > 1:
                ax.plot(beyond, [values.mean(0)[-1]] + [100 * longest[s] for s in beyond[1:]], linestyle="--",
                        linewidth=0.8, color=line.get_color())
            if row.budget is not None:
                ax.axvline(row.budget, color=line.get_color(), linestyle=":", linewidth=0.8)
        zero = next((r for r in rows if r.task == task and r.method == ZERO_SHOT and r.records), None)
        if zero:
            ax.axhline(100 * zero.records[0]["evaluations"][0]["accuracy"], color="grey", linestyle="--", label="zero-shot")
        style_panel(ax, task, "optimiser step", "validation score (%)")
    return finish(fig, axes, "Offline study: learning curves (seeds' range as band, dotted: step budget; dashed: one seed past the budget)", out_dir,
                  "offline_study_curves")


def plot_params(rows: list[Row], study: dict, out_dir: Path) -> list[Path]:
    tasks = study["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = metrics_of(task)[0]
        shown = [r for r in rows if r.task == task and r.records and r.budget is not None and r.scores(metric)]
        variants_seen: dict[str, int] = {}
        for index, row in enumerate(shown):
            mean = statistics.mean(row.scores(metric))
            interval = score_interval(row, metric, study["bootstrap_samples"])
            # an ablation shares its method's parameter count: hollow, and nudged right so the bars do not overlap
            nudge = variants_seen.get(row.method, 0) if row.variant != PAPER else 0
            variants_seen[row.method] = nudge + (row.variant != PAPER)
            x = max(row.params or 0, 1) * 1.35 ** (nudge + (row.variant != PAPER))
            color = plt.cm.tab20(index % 20)
            ax.errorbar([x], [mean], yerr=[[mean - interval[0]], [interval[1] - mean]] if interval else None,
                        marker=MARKERS.get(row.method, "o"), capsize=3, linestyle="none", label=row.label,
                        color=color, markerfacecolor="none" if row.variant != PAPER else color)
        ax.set_xscale("log")
        style_panel(ax, task, "trainable parameters (zero-shot at 1)", f"validation {metric} (%)")
    return finish(fig, axes, "Offline study: score at the step budget against trainable parameters (95 % bootstrap CI)",
                  out_dir, "offline_study_params")


def protocol_of(record: dict) -> dict:
    """The study protocol a record was run under, with keys added to the experiment's `study:` block since then at
    their current values (a record's study block only plans and reports: no run reads it)."""
    from omegaconf import OmegaConf

    current = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "experiment" / "offline_study.yaml").study)
    return {**current, **record["config"]["study"]}


def newest_protocol(records: dict) -> dict:
    """The protocol of the newest record: ablations added to the study after the older records ran are rows too."""
    carriers = [r for r in records.values() if r.get("config", {}).get("study")]
    if not carriers:
        raise ValueError("no record carries the study protocol (config.study)")
    return protocol_of(max(carriers, key=lambda r: r.get("started_at") or ""))


def write_report(records: dict, out_dir: Path, command: str, figures: bool = True) -> list[Path]:
    """Table, CSV, LaTeX and figures of the study in `out_dir`; returns the written paths."""
    study = newest_protocol(records)
    rows = build_rows(records, study)
    comps = comparisons(rows, study)
    missing = []
    for cell, why in plan(study, records):
        if cell is None:
            missing.append(f"waiting: {why}")
        elif not completed(records, cell):
            state = (records.get(cell.run_name) or {}).get("status", "not run")
            missing.append(f"{state}: {cell.run_name} ({why})")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = frame(rows, comps)
    paths = [out_dir / f"offline_study.{ext}" for ext in ("md", "csv", "tex")]
    atomic_write(paths[0], lambda tmp: tmp.write_text(markdown(rows, comps, missing, study, records, command)))
    atomic_write(paths[1], lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(paths[2], lambda tmp: tmp.write_text(latex(table)))
    if figures:
        paths += plot_curves(rows, study, out_dir) + plot_params(rows, study, out_dir)
    return paths
