"""Bootstrap statistics over units: confidence intervals, paired comparisons, significance groups.

Everything resamples *units* (or classes) with replacement, seeded, so the same inputs and seed
give the same interval bit for bit. Intervals are percentile intervals of the resampled means
(Efron & Tibshirani 1993, ch. 13). A paired comparison resamples the same units for both
methods, i.e. it bootstraps the per-unit differences; the two-sided p-value is
``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` with the usual ``(1 + count) / (1 + B)`` correction,
which matches the percentile interval: the ``1 - alpha`` interval excludes 0 exactly when
``p < alpha`` (up to that correction).

Methods are compared on the same units in the same order; a suite drops units that any method
failed on before calling these (they raise on NaN rather than guess).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import DataError, NonFiniteError

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "Interval",
    "PairedComparison",
    "SignificanceGroups",
    "bootstrap_ci",
    "bootstrap_means",
    "ceiling_normalised",
    "paired_bootstrap",
    "significance_groups",
]

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
#: Most resampled values held in memory at once (indices + values), to bound memory for
#: thousands of units times ten thousand resamples.
_CHUNK_ELEMENTS = 2_000_000


def _as_values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise DataError(f"{what}: expected a 1-D list of per-unit values, got shape {v.shape}.")
    if v.size == 0:
        raise DataError(f"{what}: expected at least one value, got none.")
    if not np.all(np.isfinite(v)):
        bad = int(np.count_nonzero(~np.isfinite(v)))
        raise NonFiniteError(
            f"{what}: expected finite values, got {bad} NaN or infinite of {v.size}; "
            "drop failed units first."
        )
    return v


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise DataError(f"Expected a confidence level in (0, 1), got {confidence}.")
    if n_resamples < 1:
        raise DataError(f"Expected at least one bootstrap resample, got {n_resamples}.")


def bootstrap_means(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``.

    ``float [N] -> float64 [n_resamples]``. The resample indices depend only on ``N``,
    ``n_resamples`` and ``seed``, so two methods scored on the same units get the same
    resamples (common random numbers).
    """
    v = _as_values(values, "bootstrap")
    _check_settings(0.5, n_resamples)
    n = v.size
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = v[idx].mean(axis=1)
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Interval:
    """A mean with its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int
    n_resamples: int
    seed: int
    method: str = "percentile bootstrap over units"

    def __contains__(self, x: object) -> bool:
        return isinstance(x, (int, float)) and self.low <= x <= self.high

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "n": self.n,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "method": self.method,
        }


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Mean of ``values`` and its percentile bootstrap interval (95% by default), seeded."""
    _check_settings(confidence, n_resamples)
    v = _as_values(values, "bootstrap_ci")
    means = bootstrap_means(v, n_resamples=n_resamples, seed=seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(
        mean=math.fsum(v.tolist()) / v.size,
        low=float(low),
        high=float(high),
        confidence=confidence,
        n=int(v.size),
        n_resamples=n_resamples,
        seed=seed,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PairedComparison:
    """``a - b`` on the same units: the mean difference, its interval, a two-sided p-value."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_value: float
    confidence: float
    n: int
    n_resamples: int
    seed: int
    method: str = "paired percentile bootstrap over units"

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "confidence": self.confidence,
            "n": self.n,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "method": self.method,
        }


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Compare two methods scored on the same units, in the same order.

    Resamples units once for both (equivalently, bootstraps ``a - b``). The p-value is
    two-sided for "no difference in mean".
    """
    _check_settings(confidence, n_resamples)
    va = _as_values(a, "paired_bootstrap (a)")
    vb = _as_values(b, "paired_bootstrap (b)")
    if va.size != vb.size:
        raise DataError(
            f"paired_bootstrap: expected both methods scored on the same units, got {va.size} "
            f"and {vb.size} values."
        )
    d = va - vb
    means = bootstrap_means(d, n_resamples=n_resamples, seed=seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    below = (1 + int(np.count_nonzero(means <= 0.0))) / (n_resamples + 1)
    above = (1 + int(np.count_nonzero(means >= 0.0))) / (n_resamples + 1)
    p = min(1.0, 2.0 * min(below, above))
    mean_a = math.fsum(va.tolist()) / va.size
    mean_b = math.fsum(vb.tolist()) / vb.size
    return PairedComparison(
        mean_a=mean_a,
        mean_b=mean_b,
        difference=math.fsum(d.tolist()) / d.size,
        low=float(low),
        high=float(high),
        p_value=p,
        confidence=confidence,
        n=int(d.size),
        n_resamples=n_resamples,
        seed=seed,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SignificanceGroups:
    """Methods ranked by mean and grouped by significance.

    ``group[m] == 1`` for the best method and every method whose difference from it is not
    significant (``p >= alpha``); group 2 is led by the best remaining method, and so on.
    ``versus_best[m]`` is the paired comparison of the best with ``m``, oriented so that a
    positive difference means the best is better (absent for the best itself).
    No multiple-comparison correction is applied: with many methods, read group 1 as
    "not shown to be worse", not as "equal".
    """

    order: tuple[str, ...]
    best: str
    group: dict[str, int]
    means: dict[str, float]
    versus_best: dict[str, PairedComparison] = field(default_factory=dict)
    alpha: float = 0.05
    higher_is_better: bool = True
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @property
    def tied_with_best(self) -> tuple[str, ...]:
        """Methods in group 1 (the best included), best first."""
        return tuple(m for m in self.order if self.group[m] == 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "best": self.best,
            "group": self.group,
            "means": self.means,
            "versus_best": {k: v.to_json() for k, v in self.versus_best.items()},
            "alpha": self.alpha,
            "higher_is_better": self.higher_is_better,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
        }


def significance_groups(
    per_unit: Mapping[str, Sequence[float] | np.ndarray],
    *,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> SignificanceGroups:
    """Group methods (name -> per-unit values on the same units) by paired bootstrap.

    The best method (highest mean, or lowest with ``higher_is_better=False``; ties broken by
    name) leads group 1 with every method not significantly different from it at ``alpha``;
    the best of the rest leads group 2, and so on.
    """
    if not per_unit:
        raise DataError("significance_groups: expected at least one method, got none.")
    if not 0.0 < alpha < 1.0:
        raise DataError(f"Expected a significance level in (0, 1), got {alpha}.")
    arrays = {name: _as_values(v, f"significance_groups ({name})") for name, v in per_unit.items()}
    sizes = {name: a.size for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(
            "significance_groups: expected every method scored on the same units, got "
            + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items()))
            + " values."
        )
    means = {name: math.fsum(a.tolist()) / a.size for name, a in arrays.items()}
    sign = 1.0 if higher_is_better else -1.0
    order = tuple(sorted(arrays, key=lambda m: (-sign * means[m], m)))
    best = order[0]
    confidence = 1.0 - alpha

    def compare(leader: str, other: str) -> PairedComparison:
        a, b = (arrays[leader], arrays[other]) if higher_is_better else (
            arrays[other], arrays[leader],
        )  # fmt: skip
        return paired_bootstrap(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)

    versus_best = {m: compare(best, m) for m in order[1:]}
    group: dict[str, int] = {}
    remaining = list(order)
    g = 0
    while remaining:
        g += 1
        leader = remaining[0]
        members = [leader]
        for m in remaining[1:]:
            cmp = versus_best[m] if leader == best else compare(leader, m)
            if cmp.p_value >= alpha:
                members.append(m)
        for m in members:
            group[m] = g
        remaining = [m for m in remaining if m not in group]
    return SignificanceGroups(
        order=order,
        best=best,
        group=group,
        means=means,
        versus_best=versus_best,
        alpha=alpha,
        higher_is_better=higher_is_better,
        n_resamples=n_resamples,
        seed=seed,
    )


def ceiling_normalised(
    method: float, baseline: float, ceiling: float, *, higher_is_better: bool = True
) -> float | None:
    """``(method - baseline) / (ceiling - baseline)``: 0 at the constant baseline (``depictions``),
    1 at the ceiling. ``None`` when the ceiling is not better than the baseline (the scale would
    be undefined or inverted: a method better than the baseline would come out negative)."""
    for name, v in (("method", method), ("baseline", baseline), ("ceiling", ceiling)):
        if not math.isfinite(v):
            raise NonFiniteError(f"ceiling_normalised: expected a finite {name} score, got {v}.")
    gap = ceiling - baseline
    if (gap <= 0.0) if higher_is_better else (gap >= 0.0):
        return None
    return (method - baseline) / gap
