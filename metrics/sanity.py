"""Sanity tests for metrics (NeuronEval, Oikarinen et al. 2025): does the score of the correct
label drop when the label is made worse?

Each test compares, on units whose truth is known, a metric's score of the correct concept with
its score after a perturbation that makes the explanation worse:

* **missing labels**: half of the concept's positive inputs are dropped (set absent) at random;
* **extra labels**: random negatives become positives with probability ``p / (1 - p)`` (``p`` the
  concept's positive rate), which about doubles the positives;
* **permutation**: each unit gets another unit's concept (a derangement);
* **constant**: every unit gets the same concept (the one most frequent among the units).

A unit passes a test when the perturbed score is lower than the correct one by more than
``epsilon`` after dividing by the metric's range (NeuronEval's epsilon = 0.001; for an unbounded
metric such as MAD or WPMI, the interquartile range of the correct scores, :func:`score_scale`);
a metric passes a test when at least ``threshold`` (default 90%) of the units with a defined score
pass. Units where either score is undefined (NaN) are counted and left out.

**Text metrics** (BERTScore, sentence and CLIP cosine: a label against reference texts) have no
concept presence to drop or add, so the missing- and extra-labels tests do not apply to them
(:data:`TEXT_NOT_APPLICABLE`). The other two do (:func:`text_test_scores`): each unit's correct
label is scored against its references, then another unit's correct label (a derangement) and a
constant label against the same references.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.errors import DataError

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_THRESHOLD",
    "FAITHFULNESS_NOT_APPLICABLE",
    "SANITY_TESTS",
    "TEXT_NOT_APPLICABLE",
    "TEXT_TESTS",
    "SanityOutcome",
    "TextTestScores",
    "add_positives",
    "derange",
    "drop_positives",
    "judge",
    "label_test_scores",
    "run_label_tests",
    "score_scale",
    "text_test_scores",
    "unit_passes",
]

DEFAULT_EPSILON = 0.001
DEFAULT_THRESHOLD = 0.9
SANITY_TESTS = ("missing_labels", "extra_labels", "permutation", "constant")
#: The tests that apply to text metrics, and why the others do not. ``frequent_label`` is for
#: text only: the most frequent of the units' own labels (an annotation set's generic answer,
#: "objects") given to every unit; for presence metrics ``constant`` already is that test.
TEXT_TESTS = ("permutation", "constant", "frequent_label")
FAITHFULNESS_NOT_APPLICABLE = {
    "frequent_label": "for a presence metric the constant test already gives every unit the "
    "most frequent concept among the units"
}
TEXT_NOT_APPLICABLE = {
    test: "a text metric compares a label with reference texts, not with per-image concept "
    "presence, so there are no positive labels to drop or add"
    for test in ("missing_labels", "extra_labels")
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SanityOutcome:
    """One metric under one test: how many units passed, out of how many were judged."""

    test: str
    metric: str
    passed_units: int
    judged_units: int
    undefined_units: int
    threshold: float
    epsilon: float

    @property
    def rate(self) -> float | None:
        return self.passed_units / self.judged_units if self.judged_units else None

    @property
    def passed(self) -> bool:
        rate = self.rate
        return rate is not None and rate >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "metric": self.metric,
            "passed": self.passed,
            "rate": self.rate,
            "passed_units": self.passed_units,
            "judged_units": self.judged_units,
            "undefined_units": self.undefined_units,
            "threshold": self.threshold,
            "epsilon": self.epsilon,
        }


def drop_positives(presence: Any, rng: np.random.Generator, frac: float = 0.5) -> np.ndarray:
    """``bool [U, N]``: each row's positives (presence > 0.5), with ``frac`` of them removed at
    random (at least one kept when a row has any)."""
    y = np.asarray(presence, dtype=np.float64) > 0.5
    out = y.copy()
    noise = rng.random(y.shape)
    for_drop = y & (noise < frac)
    # keep at least one positive per row so the score stays defined
    keep_one = y & ~np.any(y & ~for_drop, axis=1, keepdims=True)
    if keep_one.any():
        first = np.argmax(keep_one, axis=1)
        rows = np.flatnonzero(keep_one.any(axis=1))
        for_drop[rows, first[rows]] = False
    out[for_drop] = False
    return out


def add_positives(presence: Any, rng: np.random.Generator) -> np.ndarray:
    """``bool [U, N]``: each row's positives plus random negatives turned positive with
    probability ``p / (1 - p)``, ``p`` the row's positive rate (about doubles the positives)."""
    y = np.asarray(presence, dtype=np.float64) > 0.5
    p = y.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(p < 1.0, p / (1.0 - p), 0.0)
    return y | (~y & (rng.random(y.shape) < np.clip(q, 0.0, 1.0)))


def derange(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    if n < 2:
        raise DataError(f"Expected at least 2 units to shuffle labels across, got {n}.")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def unit_passes(
    correct: Any,
    perturbed: Any,
    *,
    value_range: tuple[float, float] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: ``(passed, defined)``, both ``bool [U]``. A unit passes when both scores are
    defined and the score dropped by more than ``epsilon`` in units of the metric's range (for
    an unbounded metric, :func:`score_scale` of the correct scores)."""
    c = np.asarray(correct, dtype=np.float64)
    p = np.asarray(perturbed, dtype=np.float64)
    if c.shape != p.shape:
        raise DataError(f"Expected matching score arrays, got {c.shape} and {p.shape}.")
    defined = np.isfinite(c) & np.isfinite(p)
    scale = value_range[1] - value_range[0] if value_range is not None else score_scale(c)
    with np.errstate(invalid="ignore"):
        drop = (c - p) / scale
        return defined & (drop > epsilon), defined


def score_scale(correct: Any) -> float:
    """The range an unbounded metric's epsilon is taken in: the interquartile range of the
    correct scores (their max - min when the IQR is 0; 1 when that is 0 too).

    Not max - min: one extreme unit would set the tolerance for all. On synth.resnet a planted
    unit that is silent off its concept (off-concept std 1.4e-4) has MAD 2350 while the median
    unit's is 1.8; max - min made epsilon 2.35, more than most units' whole score."""
    c = np.asarray(correct, dtype=np.float64)
    finite = c[np.isfinite(c)]
    if finite.size < 2:
        return 1.0
    q25, q75 = np.percentile(finite, [25.0, 75.0])
    for scale in (float(q75 - q25), float(finite.max() - finite.min())):
        if scale > 0:
            return scale
    return 1.0


def judge(
    test: str,
    metric: str,
    correct: Any,
    perturbed: Any,
    *,
    value_range: tuple[float, float] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    threshold: float = DEFAULT_THRESHOLD,
) -> SanityOutcome:
    """Count the units whose score dropped by more than ``epsilon`` (in units of the metric's
    range; for an unbounded metric, of :func:`score_scale` of the correct scores)."""
    passes, defined = unit_passes(correct, perturbed, value_range=value_range, epsilon=epsilon)
    passed = int(np.count_nonzero(passes))
    return SanityOutcome(
        test=test,
        metric=metric,
        passed_units=passed,
        judged_units=int(defined.sum()),
        undefined_units=int((~defined).sum()),
        threshold=threshold,
        epsilon=epsilon,
    )


def run_label_tests(
    metric: str,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    activations: Any,
    presence: Any,
    *,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[SanityOutcome]:
    """The four tests for a presence-based metric ``fn(activations [U, N], presence [U, N])``.

    ``presence`` is the correct concept of each unit; the permutation and constant tests reuse the
    other units' concepts, so the rows should be distinct concepts of distinct units."""
    out = []
    for test, (correct, perturbed) in label_test_scores(
        fn, activations, presence, seed=seed
    ).items():
        out.append(
            judge(
                test,
                metric,
                correct,
                perturbed,
                value_range=value_range,
                epsilon=epsilon,
                threshold=threshold,
            )
        )
    return out


def label_test_scores(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    activations: Any,
    presence: Any,
    *,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """test -> ``(correct, perturbed)`` scores ``float64 [U]`` of ``fn`` under the four tests
    (:data:`SANITY_TESTS`). For ``constant``, the units whose own concept is the constant one are
    left out of both arrays (they cannot lose to it), so its arrays may be shorter."""
    a = np.asarray(activations, dtype=np.float64)
    c = np.asarray(presence, dtype=np.float64)
    rng = np.random.default_rng(seed)
    correct = fn(a, c)
    variants = {
        "missing_labels": drop_positives(c, rng).astype(np.float64),
        "extra_labels": add_positives(c, rng).astype(np.float64),
        "permutation": c[derange(len(c), rng)],
    }
    binary = c > 0.5
    # the constant exploit: the most common concept among the units, given to every unit
    counts = binary.sum(axis=1)
    variants["constant"] = np.broadcast_to(c[int(np.argmax(counts))], c.shape)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for test, perturbed in variants.items():
        if test == "constant":
            # a unit whose own concept is the constant one cannot lose to it: leave it out
            same = np.all(c == variants["constant"], axis=1)
            scores = fn(a, perturbed)
            out[test] = (correct[~same], scores[~same])
        else:
            out[test] = (correct, fn(a, perturbed))
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class TextTestScores:
    """One text test: per unit the correct and the perturbed label's score (``float64 [U]``,
    each the mean over the unit's (label, references) pairs) and ``same`` (``bool [U]``): the
    perturbed labels are the correct ones, letter for letter, so the unit cannot lose to them
    and is left out of the verdict (as the constant test leaves out the constant's own unit)."""

    correct: np.ndarray
    perturbed: np.ndarray
    same: np.ndarray
    #: The perturbed labels of each unit (one per pair), for the record.
    labels: list[list[str]]


def text_test_scores(
    fn: Callable[..., Any],
    candidates: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    *,
    constant: str,
    seed: int = 0,
    with_owners: bool = False,
) -> dict[str, TextTestScores]:
    """test -> :class:`TextTestScores` of a text metric under :data:`TEXT_TESTS`.

    Unit ``u`` has pairs ``(candidates[u][i], references[u][i])``: its correct label(s) and the
    reference texts each is scored against (a final-layer unit: its class name against the
    class's reference; an annotated unit: each annotation held out against the others). Its
    score is the mean over its pairs. ``permutation`` scores, against the same references, the
    correct labels of another unit (a seeded derangement of the units; pair ``i`` takes the other
    unit's label ``i``, cycling when it has fewer); ``constant`` scores ``constant``;
    ``frequent_label`` the most frequent of all the units' correct labels (the first to reach
    the count), left out of the result when no label occurs twice (then there is none).

    ``fn(candidates, references)`` scores a flat list of labels against their reference lists
    (``float [len(candidates)]``); it is called once, with every pair of every test. With
    ``with_owners=True`` it is called as ``fn(candidates, references, owners)``, ``owners[k]`` the
    unit whose references ``references[k]`` are (a metric that ranks a label against every
    unit's references, such as identification, needs to know which unit is its own).
    """
    n = len(candidates)
    if len(references) != n:
        raise DataError(
            f"Expected one list of reference lists per unit, got {len(references)} for {n} units."
        )
    for u, (cs, rs) in enumerate(zip(candidates, references, strict=True)):
        if not cs or len(cs) != len(rs):
            raise DataError(
                f"Expected unit {u} to have at least one label and one reference list per "
                f"label, got {len(cs)} labels and {len(rs)} reference lists."
            )
    rng = np.random.default_rng(seed)
    perm = derange(n, rng)
    variants = {
        "permutation": [
            [candidates[perm[u]][i % len(candidates[perm[u]])] for i in range(len(candidates[u]))]
            for u in range(n)
        ],
        "constant": [[constant] * len(candidates[u]) for u in range(n)],
    }
    counts = Counter(str(c) for cs in candidates for c in cs)
    frequent, times = counts.most_common(1)[0]
    if times > 1:
        variants["frequent_label"] = [[frequent] * len(candidates[u]) for u in range(n)]
    flat_c: list[str] = []
    flat_r: list[list[str]] = []
    owner: list[int] = []
    for labels in [candidates, *variants.values()]:
        for u in range(n):
            for i, cand in enumerate(labels[u]):
                flat_c.append(str(cand))
                flat_r.append([str(r) for r in references[u][i]])
                owner.append(u)
    raw = fn(flat_c, flat_r, owner) if with_owners else fn(flat_c, flat_r)
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (len(flat_c),):
        raise DataError(
            f"Expected the text metric to return {len(flat_c)} values, got shape {values.shape}."
        )
    sizes = np.array([len(c) for c in candidates])
    per_test = len(flat_c) // (1 + len(variants))
    owners = np.asarray(owner[:per_test])

    def per_unit(part: np.ndarray) -> np.ndarray:
        return np.bincount(owners, weights=part, minlength=n) / sizes

    correct = per_unit(values[:per_test])
    out: dict[str, TextTestScores] = {}
    for j, (test, labels) in enumerate(variants.items(), start=1):
        same = np.array([list(labels[u]) == list(candidates[u]) for u in range(n)])
        out[test] = TextTestScores(
            correct=correct,
            perturbed=per_unit(values[j * per_test : (j + 1) * per_test]),
            same=same,
            labels=[list(x) for x in labels],
        )
    return out
