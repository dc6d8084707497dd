"""Task metrics with scikit-learn/scipy, keyed as the `evaluate` package keys them (fractions, not percent)."""

from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from lopa.errors import check_choice

METRICS = {
    "accuracy": lambda preds, refs: float(accuracy_score(refs, preds)),
    "f1": lambda preds, refs: float(f1_score(refs, preds)),  # binary F1 of class 1, as GLUE's MRPC/QQP
    "matthews_correlation": lambda preds, refs: float(matthews_corrcoef(refs, preds)),
    "pearson": lambda preds, refs: float(pearsonr(refs, preds)[0]),
    "spearmanr": lambda preds, refs: float(spearmanr(refs, preds)[0]),
}


def compute_metrics(names: Sequence[str], predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Every named metric of predictions against references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no examples to score")
    for name in names:
        check_choice("metric", name, METRICS)
    return {name: METRICS[name](list(predictions), list(references)) for name in names}
