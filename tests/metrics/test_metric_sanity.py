"""Metric sanity tests (metrics.sanity): the perturbations do what NeuronEval describes, and the
tests pass a correct metric and fail deliberately broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from metrics import faithfulness as F
from metrics import sanity as S


def _units(seed: int = 0, units: int = 30, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Simulated units that respond to their own concept (1-5% of inputs) plus noise."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.01, 0.05, units)
    concept = (rng.random((units, n)) < freq[:, None]).astype(np.float64)
    acts = concept * rng.normal(3.0, 1.0, (units, n)) + rng.normal(0.0, 1.0, (units, n))
    return acts, concept


def test_drop_positives_halves_positives_and_adds_none() -> None:
    _, c = _units()
    dropped = S.drop_positives(c, np.random.default_rng(1))
    y = c > 0.5
    assert not np.any(dropped & ~y)
    ratio = dropped.sum() / y.sum()
    assert 0.4 < ratio < 0.6
    assert np.all(dropped.sum(axis=1) >= 1)


def test_add_positives_about_doubles_and_keeps_the_originals() -> None:
    _, c = _units()
    added = S.add_positives(c, np.random.default_rng(2))
    y = c > 0.5
    assert np.all(added[y])
    ratio = added.sum() / y.sum()
    assert 1.7 < ratio < 2.3


def test_derangement_has_no_fixed_point() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 3, 10, 50):
        perm = S.derange(n, rng)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))


def test_a_correct_metric_passes_every_test() -> None:
    acts, concept = _units()
    outcomes = S.run_label_tests("pearson", F.pearson, acts, concept, value_range=(-1.0, 1.0))
    assert [o.test for o in outcomes] == list(S.SANITY_TESTS)
    assert all(o.passed for o in outcomes), [o.to_json() for o in outcomes]
    assert all(o.judged_units >= 29 for o in outcomes)


def test_a_metric_blind_to_the_label_fails_every_test() -> None:
    acts, concept = _units()

    def broken(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return a.mean(axis=1)  # ignores the label entirely

    outcomes = S.run_label_tests("broken", broken, acts, concept)
    assert not any(o.passed for o in outcomes)
    assert all(o.passed_units == 0 for o in outcomes)


def test_a_metric_rewarding_frequent_concepts_fails_extra_labels() -> None:
    acts, concept = _units()

    def frequency(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (c > 0.5).mean(axis=1)  # more positives score higher: the constant exploit

    by_test = {o.test: o for o in S.run_label_tests("freq", frequency, acts, concept)}
    assert not by_test["extra_labels"].passed
    assert by_test["missing_labels"].passed


def test_recall_and_precision_each_fail_one_label_test() -> None:
    acts, concept = _units()
    rec = {o.test: o.passed for o in S.run_label_tests("recall", F.recall, acts, concept)}
    prec = {o.test: o.passed for o in S.run_label_tests("precision", F.precision, acts, concept)}
    assert rec["extra_labels"] and not rec["missing_labels"]
    assert prec["missing_labels"] and not prec["extra_labels"]


def test_undefined_scores_are_counted_not_judged() -> None:
    out = S.judge("missing_labels", "m", [0.5, np.nan, 0.9], [0.2, 0.1, 0.95])
    assert (out.passed_units, out.judged_units, out.undefined_units) == (1, 2, 1)
    assert out.rate == pytest.approx(0.5)
    assert not out.passed
