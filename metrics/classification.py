"""AUROC and AUPRC (average precision) of a score used as a one-class classifier.

Both are computed directly, with ties handled the standard way:

* **AUROC** is the Mann-Whitney statistic: the probability that a random positive scores above a
  random negative, a tie counting one half. Computed from mid-ranks, so ``O(n log n)``.
* **AUPRC** is average precision without interpolation, ``sum_k (R_k - R_{k-1}) P_k``, over the
  thresholds at the *distinct* score values: items with equal scores enter together, so the
  order of tied items cannot change the result (this is scikit-learn's
  ``average_precision_score``).

Evaluation research (Oikarinen et al. 2025) finds AUPRC passes sanity checks that AUROC fails;
suites report both. ``scores`` and ``labels`` are 1-D: ``float [N]`` and ``bool/{0,1} [N]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.errors import DataError, NonFiniteError
from metrics.result import MetricResult

__all__ = [
    "AUPRC_SETTINGS",
    "AUROC_SETTINGS",
    "auprc",
    "auprc_result",
    "auroc",
    "auroc_result",
    "average_precision",
    "midranks",
]

AUROC_SETTINGS: dict[str, Any] = {
    "definition": "Mann-Whitney U / (n_pos * n_neg)",
    "ties": "a tied positive/negative pair counts 1/2 (mid-ranks)",
}
AUPRC_SETTINGS: dict[str, Any] = {
    "definition": "average precision, sum_k (R_k - R_k-1) * P_k, no interpolation",
    "ties": "thresholds at distinct score values; tied items enter together",
}


def _check(scores: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y_raw = np.asarray(labels)
    if s.ndim != 1 or y_raw.ndim != 1:
        raise DataError(
            f"{what}: expected 1-D scores and labels, got shapes {s.shape} and {y_raw.shape}."
        )
    if s.shape != y_raw.shape:
        raise DataError(
            f"{what}: expected as many labels as scores, got {y_raw.shape[0]} labels for "
            f"{s.shape[0]} scores."
        )
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise NonFiniteError(f"{what}: expected finite scores, got {bad} NaN or infinite.")
    if y_raw.dtype == np.bool_:
        y = y_raw
    else:
        ok = np.isin(y_raw, (0, 1))
        if not np.all(ok):
            example = y_raw[~ok][0]
            raise DataError(f"{what}: expected labels that are 0/1 or bool, got {example!r}.")
        y = y_raw.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            f"{what}: expected at least one positive and one negative, got {n_pos} positives "
            f"and {y.size - n_pos} negatives."
        )
    return s, y


def midranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (ascending), tied values sharing the mean of their ranks.

    ``float64 [N] -> float64 [N]``; ``midranks([3, 1, 3]) == [2.5, 1, 2.5]``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    boundaries = np.flatnonzero(np.diff(sorted_v)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    # ranks start+1 .. end (inclusive) average to (start + 1 + end) / 2
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[Any] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` predicting ``labels`` (ties count 1/2).

    Raises :class:`~bench.errors.DataError` when one class is missing (AUROC is undefined).
    """
    s, y = _check(scores, labels, "AUROC")
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    ranks = midranks(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1.0) / 2.0
    return u / (n_pos * n_neg)


def average_precision(
    scores: Sequence[float] | np.ndarray, labels: Sequence[Any] | np.ndarray
) -> float:
    """Average precision (area under the precision-recall curve, step-wise, no interpolation).

    Thresholds are the distinct score values, highest first; items with equal scores are
    admitted together. Raises :class:`~bench.errors.DataError` when one class is missing.
    """
    s, y = _check(scores, labels, "AUPRC")
    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    sorted_y = y[order]
    tp = np.cumsum(sorted_y, dtype=np.float64)
    fp = np.cumsum(~sorted_y, dtype=np.float64)
    last_of_group = np.concatenate((np.flatnonzero(np.diff(sorted_s)), [s.size - 1]))
    tp_t = tp[last_of_group]
    fp_t = fp[last_of_group]
    precision = tp_t / (tp_t + fp_t)
    recall = tp_t / tp[-1]
    recall_before = np.concatenate(([0.0], recall[:-1]))
    return float(np.sum((recall - recall_before) * precision))


auprc = average_precision


def auroc_result(
    scores: Sequence[Any],
    labels: Sequence[Any],
) -> MetricResult:
    """AUROC of several classifiers (one per item: a class and its chosen unit's scores)."""
    if len(scores) != len(labels):
        raise DataError(
            f"AUROC: expected one label array per score array, got {len(labels)} for {len(scores)}."
        )
    values = tuple(auroc(s, y) for s, y in zip(scores, labels, strict=True))
    return MetricResult(metric="auroc", values=values, settings=dict(AUROC_SETTINGS))


def auprc_result(
    scores: Sequence[Any],
    labels: Sequence[Any],
) -> MetricResult:
    """AUPRC (average precision) of several classifiers, one per item."""
    if len(scores) != len(labels):
        raise DataError(
            f"AUPRC: expected one label array per score array, got {len(labels)} for {len(scores)}."
        )
    values = tuple(average_precision(s, y) for s, y in zip(scores, labels, strict=True))
    return MetricResult(metric="auprc", values=values, settings=dict(AUPRC_SETTINGS))
