"""Faithfulness metrics (metrics.faithfulness) against direct computations and reference
implementations (scikit-learn, SciPy, NumPy) on small cases, including ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.errors import DataError, NonFiniteError
from metrics import faithfulness as F


def _case(seed: int = 0, units: int = 7, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # rounded activations give many ties; presence with soft values on both sides of 0.5
    acts = np.round(rng.normal(size=(units, n)), 1)
    presence = np.clip(rng.random((units, n)) * 0.7 + (acts > 0.8) * 0.4, 0, 1)
    return acts, presence


def test_row_midranks_equal_scipy_rankdata() -> None:
    acts, _ = _case()
    np.testing.assert_allclose(F.row_midranks(acts), stats.rankdata(acts, axis=1))


def test_auroc_equals_roc_auc_score_per_unit() -> None:
    acts, presence = _case()
    got = F.auroc(acts, presence)
    want = [roc_auc_score(presence[u] > 0.5, acts[u]) for u in range(len(acts))]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_auroc_unit_as_label_uses_top_alpha_as_class() -> None:
    acts, presence = _case()
    got = F.auroc_unit_as_label(acts, presence, alpha=0.1)
    on = F.top_alpha(acts, 0.1)
    want = [roc_auc_score(on[u], presence[u]) for u in range(len(acts))]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_auprc_equals_average_precision_score_with_ties() -> None:
    acts, presence = _case(seed=3)
    got = F.auprc(acts, presence)
    want = [average_precision_score(presence[u] > 0.5, acts[u]) for u in range(len(acts))]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_top_alpha_count_is_exact_under_ties() -> None:
    acts = np.array([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 3.0, 1.0]])
    on = F.top_alpha(acts, alpha=0.4)  # ceil(0.4 * 5) = 2
    assert on.sum(axis=1).tolist() == [2, 2]
    assert on[0].tolist() == [True, True, False, False, False]  # earlier input wins a tie
    assert on[1].tolist() == [False, True, False, True, False]


def test_iou_f1_recall_precision_equal_explicit_counts() -> None:
    acts, presence = _case(seed=5)
    alpha = 0.1
    for u in range(len(acts)):
        k = math.ceil(alpha * acts.shape[1])
        top = set(np.argsort(-acts[u], kind="stable")[:k].tolist())
        concept = set(np.flatnonzero(presence[u] > 0.5).tolist())
        tp = len(top & concept)
        assert F.iou(acts, presence, alpha)[u] == pytest.approx(tp / len(top | concept))
        assert F.f1(acts, presence, alpha)[u] == pytest.approx(2 * tp / (len(top) + len(concept)))
        assert F.recall(acts, presence, alpha)[u] == pytest.approx(tp / len(concept))
        assert F.precision(acts, presence, alpha)[u] == pytest.approx(tp / len(top))


def test_pearson_and_cosine_equal_numpy() -> None:
    acts, presence = _case(seed=7)
    want = [np.corrcoef(acts[u], presence[u])[0, 1] for u in range(len(acts))]
    np.testing.assert_allclose(F.pearson(acts, presence), want, rtol=1e-10)
    cos = [
        acts[u] @ presence[u] / np.linalg.norm(acts[u]) / np.linalg.norm(presence[u])
        for u in range(len(acts))
    ]
    np.testing.assert_allclose(F.cosine(acts, presence), cos, rtol=1e-10)


def test_correlations_are_clipped_for_identical_vectors() -> None:
    v = np.linspace(0.1, 0.9, 50) ** 3
    assert -1.0 <= F.pearson(v[None], v[None])[0] <= 1.0
    assert -1.0 <= F.cosine(v[None], v[None])[0] <= 1.0


def test_mad_equals_direct_formula() -> None:
    acts, presence = _case(seed=9)
    for u in range(len(acts)):
        on = presence[u] > 0.5
        want = (acts[u][on].mean() - acts[u][~on].mean()) / acts[u][~on].std()
        assert F.mad(acts, presence)[u] == pytest.approx(want, rel=1e-10)


def test_wpmi_equals_direct_formula() -> None:
    acts, presence = _case(seed=11)
    alpha = 0.1
    on = F.top_alpha(acts, alpha)
    for u in range(len(acts)):
        p = np.clip(presence[u], 1e-6, 1)
        want = np.log(p[on[u]]).mean() - np.log(presence[u].mean())
        assert F.wpmi(acts, presence, alpha)[u] == pytest.approx(want, rel=1e-10)


def test_undefined_rows_are_nan_not_numbers() -> None:
    acts = np.array([[0.1, 0.5, 0.9, 0.3], [0.1, 0.5, 0.9, 0.3]])
    presence = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    for fn in (F.auroc, F.auprc, F.iou, F.f1, F.mad):
        out = fn(acts, presence)
        assert math.isnan(out[0]) and not math.isnan(out[1]), fn.__name__


def test_presence_vector_broadcasts_to_every_unit() -> None:
    acts, presence = _case(seed=13)
    one = presence[0]
    np.testing.assert_allclose(F.auroc(acts, one), F.auroc(acts, np.tile(one, (len(acts), 1))))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(DataError, match="presence of shape"):
        F.auroc(np.zeros((2, 5)), np.zeros((3, 5)))
    with pytest.raises(NonFiniteError, match="unit rows \\[1\\]"):
        F.auroc(np.array([[0.0, 1.0], [np.nan, 1.0]]), np.array([0.0, 1.0]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        F.auroc(np.zeros((1, 2)), np.array([0.0, 2.0]))


def test_mann_whitney_equals_scipy_asymptotic() -> None:
    rng = np.random.default_rng(17)
    x = np.round(rng.normal(0.3, 1, size=(5, 30)), 1)
    y = np.round(rng.normal(0.0, 1, size=(5, 45)), 1)
    auc, u1, p = F.mann_whitney(x, y)
    for r in range(5):
        want = stats.mannwhitneyu(x[r], y[r], alternative="two-sided", method="asymptotic")
        assert u1[r] == pytest.approx(want.statistic)
        assert p[r] == pytest.approx(want.pvalue, rel=1e-9)
        labels = np.r_[np.ones(30), np.zeros(45)]
        assert auc[r] == pytest.approx(roc_auc_score(labels, np.r_[x[r], y[r]]))


def test_mann_whitney_with_a_mask_splits_each_row_its_own_way() -> None:
    rng = np.random.default_rng(23)
    v = np.round(rng.normal(0.0, 1, size=(4, 40)), 1)
    labels = rng.random((4, 40)) < np.array([[0.2], [0.5], [0.7], [0.0]])
    auc, u1, p = F.mann_whitney_labels(v, labels)
    for r in range(3):
        x, y = v[r][labels[r]], v[r][~labels[r]]
        want = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
        assert u1[r] == pytest.approx(want.statistic)
        assert p[r] == pytest.approx(want.pvalue, rel=1e-9)
        assert auc[r] == pytest.approx(roc_auc_score(labels[r], v[r]))
    assert np.isnan([auc[3], u1[3], p[3]]).all()  # an empty first sample: undefined


def test_identification_ranks_hand_example() -> None:
    # unit 0's label is closest to its own references; unit 1's ties with unit 2's references;
    # unit 2's label is closest to unit 0's references.
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.5, 0.5], [0.8, 0.1, 0.4]])
    rank, rr = F.identification(sim)
    assert rank.tolist() == [1.0, 1.5, 2.0]
    np.testing.assert_allclose(rr, [1.0, 1 / 1.5, 0.5])


def test_identification_of_a_constant_label_is_chance() -> None:
    rng = np.random.default_rng(19)
    row = rng.random(40)
    rank, rr = F.identification(np.tile(row, (40, 1)))
    assert sorted(rank.tolist()) == list(range(1, 41))
    assert rr.mean() == pytest.approx(sum(1 / k for k in range(1, 41)) / 40)


def test_auroc_of_many_labellings_equals_roc_auc_score_per_formula() -> None:
    rng = np.random.default_rng(23)
    scores = np.round(rng.normal(size=80), 1)
    labels = rng.random((12, 80)) < rng.uniform(0.05, 0.6, (12, 1))
    labels[0] = False  # undefined: no positive
    got = F.auroc_of_labels(scores, labels)
    assert np.isnan(got[0])
    want = [roc_auc_score(labels[f], scores) for f in range(1, 12)]
    np.testing.assert_allclose(got[1:], want, rtol=1e-12)
