"""Faithfulness: does a label predict what its unit does? Array metrics over many units at once.

Every function compares, for each unit ``u``, the unit's activation over a probe set with the
presence of its label's concept over the same inputs (NeuronEval's ``sim(a_k, c_t)``):

* ``activations``: ``float [U, N]``, one pooled value per unit and input (spatial max or mean);
* ``presence``: ``float [U, N]`` in [0, 1], the concept presence of unit ``u``'s label on each
  input (``[N]`` broadcasts one concept to every unit).

All metrics are computed for every unit in one array operation (no Python loop over units or
inputs); each returns ``float64 [U]``, ``NaN`` where the metric is undefined for that unit (a
label present on no input, or on all), never a stand-in number.

Binarisations follow NeuronEval: the unit is "on" for its top-``alpha`` fraction of inputs
(``ceil(alpha * N)`` inputs, at least one, ties broken by input order so the count is exact),
the concept is "on" where presence > 0.5.

Directions: :func:`auroc` is the CoSy and INVERT direction (presence as the class, the raw
activation as the score); :func:`auroc_unit_as_label` is NeuronEval's "AUC" (the binarised unit
as the class, presence as the score). NeuronEval's names for recall and precision are taken from
the explanation's side: its "recall" divides by the unit's top-alpha set. We keep the usual
information-retrieval names with the *concept* as what is retrieved:
``recall = TP / |concept|``, ``precision = TP / |top-alpha|``, and say so in results.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.errors import DataError, NonFiniteError

__all__ = [
    "DEFAULT_ALPHA",
    "FAITHFULNESS_METRICS",
    "auprc",
    "auroc",
    "auroc_of_labels",
    "auroc_unit_as_label",
    "binarise_presence",
    "cosine",
    "f1",
    "identification",
    "iou",
    "mad",
    "mann_whitney",
    "mann_whitney_labels",
    "pearson",
    "precision",
    "recall",
    "row_midranks",
    "top_alpha",
    "wpmi",
]

#: NeuronEval's and NetDissect's top quantile: 0.5% of inputs.
DEFAULT_ALPHA = 0.005


def _as_pair(activations: Any, presence: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise DataError(f"Expected activations float [U, N], got shape {a.shape}.")
    c = np.asarray(presence, dtype=np.float64)
    if c.ndim == 1:
        c = np.broadcast_to(c[None, :], a.shape)
    if c.shape != a.shape:
        raise DataError(f"Expected presence of shape {a.shape} (or [{a.shape[1]}]), got {c.shape}.")
    if not np.all(np.isfinite(a)):
        bad = np.unique(np.nonzero(~np.isfinite(a))[0])
        raise NonFiniteError(
            f"Expected finite activations, got NaN or infinite values for unit rows "
            f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}."
        )
    if not np.all(np.isfinite(c)) or c.min(initial=0.0) < 0.0 or c.max(initial=0.0) > 1.0:
        raise DataError("Expected concept presence in [0, 1] everywhere.")
    return a, c


def binarise_presence(presence: Any) -> np.ndarray:
    """Concept "on" where presence > 0.5: ``bool`` of presence's shape."""
    return np.asarray(presence, dtype=np.float64) > 0.5


def top_alpha(activations: Any, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``bool [U, N]``: each unit's ``ceil(alpha * N)`` highest inputs (at least one).

    Ties at the boundary are broken by input order (the earlier input wins), so every unit has
    exactly the same number of inputs on.
    """
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if not 0.0 < alpha <= 1.0:
        raise DataError(f"Expected 0 < alpha <= 1, got {alpha}.")
    n = a.shape[1]
    k = max(1, min(n, math.ceil(alpha * n - 1e-9)))
    order = np.argsort(-a, axis=1, kind="stable")[:, :k]
    on = np.zeros(a.shape, dtype=bool)
    np.put_along_axis(on, order, True, axis=1)
    return on


def row_midranks(values: Any) -> np.ndarray:
    """1-based ascending ranks along the last axis, ties sharing the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    u, n = v.shape
    order = np.argsort(v, axis=1, kind="stable")
    sv = np.take_along_axis(v, order, axis=1)
    pos = np.broadcast_to(np.arange(n, dtype=np.float64), (u, n))
    new_group = np.ones((u, n), dtype=bool)
    new_group[:, 1:] = sv[:, 1:] != sv[:, :-1]
    last = np.ones((u, n), dtype=bool)
    last[:, :-1] = new_group[:, 1:]
    # first index of each element's group (running max of group starts), last likewise backwards
    start = np.maximum.accumulate(np.where(new_group, pos, 0.0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks_sorted = (start + end) / 2.0 + 1.0
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    return ranks


def _auroc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = labels.shape[1] - n_pos
    ranks = row_midranks(scores)
    u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1.0) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def auroc(activations: Any, presence: Any) -> np.ndarray:
    """AUROC with the binarised concept as the class and the activation as the score (CoSy,
    INVERT): the probability that an input with the concept activates the unit more than one
    without it (ties 1/2). ``NaN`` where the concept is on everywhere or nowhere."""
    a, c = _as_pair(activations, presence)
    return _auroc_rows(a, binarise_presence(c))


def auroc_of_labels(scores: Any, labels: Any) -> np.ndarray:
    """AUROC of one score vector against many candidate labellings at once (INVERT's beam step):
    ``scores`` ``float [N]`` (a unit's activations), ``labels`` ``bool [F, N]`` (each candidate
    formula's membership). Rank sums as one matrix product:
    ``U_f = labels_f . r - n_f (n_f + 1) / 2`` with ``r`` the mid-ranks of the
    scores. ``NaN`` for a labelling that is all or nothing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 2 or y.shape[1] != s.shape[0]:
        raise DataError(
            f"Expected scores [N] and labels [F, N], got shapes {s.shape} and {y.shape}."
        )
    if not np.all(np.isfinite(s)):
        raise NonFiniteError("Expected finite scores.")
    r = row_midranks(s)[0]
    n_pos = y.sum(axis=1, dtype=np.float64)
    n_neg = s.shape[0] - n_pos
    u = y.astype(np.float64) @ r - n_pos * (n_pos + 1.0) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def auroc_unit_as_label(
    activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """NeuronEval's "AUC": the unit's top-alpha set as the class, presence as the score."""
    a, c = _as_pair(activations, presence)
    return _auroc_rows(c, top_alpha(a, alpha))


def auprc(activations: Any, presence: Any) -> np.ndarray:
    """Average precision of the activation retrieving the concept's inputs (no interpolation;
    thresholds at distinct activation values, tied inputs entering together, as
    ``sklearn.metrics.average_precision_score``)."""
    a, c = _as_pair(activations, presence)
    y = binarise_presence(c)
    u, n = a.shape
    order = np.argsort(-a, axis=1, kind="stable")
    sa = np.take_along_axis(a, order, axis=1)
    sy = np.take_along_axis(y, order, axis=1)
    tp = np.cumsum(sy, axis=1, dtype=np.float64)
    pos = np.arange(n, dtype=np.float64)
    last = np.ones((u, n), dtype=bool)
    last[:, :-1] = sa[:, 1:] != sa[:, :-1]
    # precision at the end of each input's tie group: AP = mean over positives of it
    end = np.minimum.accumulate(np.where(last, pos, n)[:, ::-1], axis=1)[:, ::-1].astype(np.intp)
    prec_end = np.take_along_axis(tp / (pos + 1.0), end, axis=1)
    n_pos = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (prec_end * sy).sum(axis=1) / n_pos
    out[(n_pos == 0) | (n_pos == n)] = np.nan
    return out


def _counts(
    activations: Any, presence: Any, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, c = _as_pair(activations, presence)
    on = top_alpha(a, alpha)
    y = binarise_presence(c)
    tp = (on & y).sum(axis=1).astype(np.float64)
    return tp, on.sum(axis=1).astype(np.float64), y.sum(axis=1).astype(np.float64)


def iou(activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``TP / (|top-alpha| + |concept| - TP)``; ``NaN`` when the concept is on nowhere."""
    tp, n_on, n_c = _counts(activations, presence, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = tp / (n_on + n_c - tp)
    out[n_c == 0] = np.nan
    return out


def f1(activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN) = 2 TP / (|top-alpha| + |concept|)``."""
    tp, n_on, n_c = _counts(activations, presence, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 2.0 * tp / (n_on + n_c)
    out[n_c == 0] = np.nan
    return out


def recall(activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Share of the concept's inputs in the unit's top-alpha set: ``TP / |concept|``."""
    tp, _, n_c = _counts(activations, presence, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = tp / n_c
    out[n_c == 0] = np.nan
    return out


def precision(activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Share of the unit's top-alpha inputs that show the concept: ``TP / |top-alpha|``."""
    tp, n_on, n_c = _counts(activations, presence, alpha)
    out = tp / n_on
    out[n_c == 0] = np.nan
    return out


def pearson(activations: Any, presence: Any) -> np.ndarray:
    """Pearson correlation of activation and (continuous) presence; ``NaN`` for a constant row."""
    a, c = _as_pair(activations, presence)
    ac = a - a.mean(axis=1, keepdims=True)
    cc = c - c.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (cc * cc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ac * cc).sum(axis=1) / den
    out[den == 0] = np.nan
    return np.clip(out, -1.0, 1.0)


def cosine(activations: Any, presence: Any) -> np.ndarray:
    """Cosine of the activation and presence vectors (NeuronEval's "cos"), clipped to [-1, 1]."""
    a, c = _as_pair(activations, presence)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(c, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * c).sum(axis=1) / den
    out[den == 0] = np.nan
    return np.clip(out, -1.0, 1.0)


def mad(activations: Any, presence: Any) -> np.ndarray:
    """Mean activation on the concept minus off it, over the off-concept standard deviation
    (CoSy's MAD with the probe's off-concept inputs as the control). ``NaN`` when either side is
    empty or the off-concept activations are constant."""
    a, c = _as_pair(activations, presence)
    y = binarise_presence(c)
    n_on = y.sum(axis=1).astype(np.float64)
    n_off = y.shape[1] - n_on
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_on = np.where(y, a, 0.0).sum(axis=1) / n_on
        mean_off = np.where(~y, a, 0.0).sum(axis=1) / n_off
        var_off = np.where(~y, (a - mean_off[:, None]) ** 2, 0.0).sum(axis=1) / n_off
        out = (mean_on - mean_off) / np.sqrt(var_off)
    out[(n_on == 0) | (n_off == 0) | (var_off == 0)] = np.nan
    return out


def wpmi(
    activations: Any, presence: Any, alpha: float = DEFAULT_ALPHA, lam: float = 1.0
) -> np.ndarray:
    """NeuronEval's WPMI: mean over the unit's top-alpha inputs of ``log p(c)`` minus ``lam``
    times the log of the mean presence (``p`` clipped to [1e-6, 1] so an absent concept gives a
    large negative number, not -inf)."""
    a, c = _as_pair(activations, presence)
    on = top_alpha(a, alpha)
    logp = np.log(np.clip(c, 1e-6, 1.0))
    top = (logp * on).sum(axis=1) / on.sum(axis=1)
    return top - lam * np.log(np.clip(c.mean(axis=1), 1e-6, 1.0))


def mann_whitney(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sample Mann-Whitney test per row: ``(auc, u1, p)``, each ``float64 [U]``.

    ``x``: ``float [U, n1]`` (e.g. activations on images generated from the label), ``y``:
    ``float [U, n0]`` (activations on the control images). ``u1`` is the U statistic of ``x``,
    ``auc = u1 / (n1 n0)`` the probability that a generated image beats a control one (ties 1/2),
    ``p`` the two-sided p-value from the normal approximation with tie and continuity
    corrections (``scipy.stats.mannwhitneyu(..., method="asymptotic")``).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if y.ndim == 1:
        y = np.broadcast_to(y[None, :], (x.shape[0], y.shape[0]))
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"Expected as many rows in both samples, got {x.shape[0]} and {y.shape[0]}."
        )
    n1, n0 = x.shape[1], y.shape[1]
    if n1 == 0 or n0 == 0:
        raise DataError(f"Expected two non-empty samples, got {n1} and {n0} values.")
    labels = np.zeros((x.shape[0], n1 + n0), dtype=bool)
    labels[:, :n1] = True
    return mann_whitney_labels(np.concatenate([x, y], axis=1), labels)


def mann_whitney_labels(values: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mann_whitney` with the two samples given as one array and a membership mask:
    ``values`` ``float [U, M]``, ``labels`` ``bool [U, M]`` (``True``: the first sample). Each
    row may split differently (the sanity tests move images between the samples). A row with
    an empty sample gets ``NaN`` for all three."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    y = np.broadcast_to(np.asarray(labels, dtype=bool), v.shape)
    if not np.all(np.isfinite(v)):
        raise NonFiniteError("Expected finite activations in both samples.")
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = v.shape[1] - n1
    n = float(v.shape[1])
    ranks = row_midranks(v)
    u1 = np.where(y, ranks, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2.0
    # tie correction: sum over tie groups of (t^3 - t), from the pooled values
    s = np.sort(v, axis=1)
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    group_id = np.cumsum(new, axis=1) - 1
    sizes = np.zeros(s.shape, dtype=np.float64)
    np.add.at(sizes, (np.arange(s.shape[0])[:, None], group_id), 1.0)
    tie_term = (sizes**3 - sizes).sum(axis=1)
    mu = n1 * n0 / 2.0
    var = n1 * n0 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else np.zeros_like(n1)
    sigma = np.sqrt(np.maximum(var, 0.0))
    u = np.maximum(u1, n1 * n0 - u1)
    from scipy.special import ndtr

    with np.errstate(invalid="ignore", divide="ignore"):
        z = (u - mu - 0.5) / sigma
        p = np.clip(2.0 * ndtr(-z), 0.0, 1.0)
        auc = u1 / (n1 * n0)
    p = np.where(sigma == 0, 1.0, p)
    empty = (n1 == 0) | (n0 == 0)
    return (
        np.where(empty, np.nan, auc),
        np.where(empty, np.nan, u1),
        np.where(empty, np.nan, p),
    )


def identification(similarity: Any) -> tuple[np.ndarray, np.ndarray]:
    """Identification ranks: ``similarity[i, j]`` is how close unit ``i``'s label is to unit
    ``j``'s references. Returns ``(rank, reciprocal_rank)``, ``float64 [U]``: the 1-based rank of
    unit ``i``'s own references among all units' references (ties share the mean rank, so a
    constant label ranks each unit's references by a fixed order and scores chance)."""
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise DataError(f"Expected a square similarity matrix [U, U], got shape {s.shape}.")
    if not np.all(np.isfinite(s)):
        raise NonFiniteError("Expected a finite similarity matrix.")
    own = np.diag(s)[:, None]
    higher = (s > own).sum(axis=1).astype(np.float64)
    ties = (s == own).sum(axis=1).astype(np.float64)  # includes itself
    rank = higher + (ties + 1.0) / 2.0
    return rank, 1.0 / rank


#: name -> (function, whether it takes alpha, its range for sanity-test normalisation)
FAITHFULNESS_METRICS: dict[str, tuple[Any, bool, tuple[float, float] | None]] = {
    "auroc": (auroc, False, (0.0, 1.0)),
    "auprc": (auprc, False, (0.0, 1.0)),
    "iou": (iou, True, (0.0, 1.0)),
    "f1": (f1, True, (0.0, 1.0)),
    "pearson": (pearson, False, (-1.0, 1.0)),
    "mad": (mad, False, None),
    "recall": (recall, True, (0.0, 1.0)),
    "precision": (precision, True, (0.0, 1.0)),
    "auroc_unit_as_label": (auroc_unit_as_label, True, (0.0, 1.0)),
    "cosine": (cosine, False, (-1.0, 1.0)),
    "wpmi": (wpmi, True, None),
}
