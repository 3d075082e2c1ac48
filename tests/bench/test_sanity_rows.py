"""The report card's rows for the generated (CoSy) and identification metrics: the tests pass
the suites' metrics on simulated units whose truth is known and fail deliberately broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from bench.suites.sanity_rows import cosy_scores, generated_test_scores, own_rank
from metrics.sanity import judge, text_test_scores

UNITS, N, N0 = 20, 10, 300


def _cosy_units(seed: int = 0):  # type: ignore[no-untyped-def]
    """Unit ``i`` fires on the images generated from label ``i`` only (the others and the
    control images are noise)."""
    rng = np.random.default_rng(seed)
    own = rng.normal(3.0, 1.0, (UNITS, N))
    others = rng.normal(0.0, 1.0, (UNITS, UNITS, N))

    def on_label(i: int, j: int) -> np.ndarray:
        return own[i] if i == j else others[i, j]

    return on_label, rng.normal(0.0, 1.0, (UNITS, N)), rng.normal(0.0, 1.0, (UNITS, N0))


def _verdicts(per_test, metric, value_range=(0.0, 1.0), sign=1.0):  # type: ignore[no-untyped-def]
    return {
        test: judge(test, metric, sign * c, sign * p, value_range=value_range)
        for test, by_metric in per_test.items()
        for c, p in [by_metric[metric]]
    }


def test_cosy_metrics_pass_the_tests_on_units_that_fire_on_their_labels() -> None:
    on_label, constant, control = _cosy_units()
    per_test = generated_test_scores(on_label, constant, control, seed=1)
    assert list(per_test) == ["missing_labels", "extra_labels", "permutation", "constant"]
    auc = _verdicts(per_test, "auc")
    for test in ("extra_labels", "permutation", "constant"):
        assert auc[test].passed and auc[test].judged_units == UNITS, auc[test]
    # NeuronEval's finding for AUC in the concept-as-label direction (CoSy's): moving half of
    # the few generated images among hundreds of control images barely moves it
    assert not auc["missing_labels"].passed
    # the correct label's scores are the generated suite's: AUC of own images against control
    correct = per_test["permutation"]["auc"][0]
    direct = cosy_scores(
        np.concatenate([np.stack([on_label(i, i) for i in range(UNITS)]), control], axis=1),
        np.arange(N + N0)[None, :].repeat(UNITS, 0) < N,
    )["auc"]
    np.testing.assert_allclose(correct, direct)
    mad = _verdicts(per_test, "mad", None)
    assert all(mad[t].passed for t in ("extra_labels", "permutation", "constant")), mad
    # the p-value is better when lower: the card asks that it rise
    p = _verdicts(per_test, "p_value", sign=-1.0)
    assert p["permutation"].passed and p["constant"].passed


def test_a_cosy_metric_blind_to_the_label_fails_every_test() -> None:
    on_label, constant, control = _cosy_units()

    def blind(x: np.ndarray, on: np.ndarray) -> dict[str, np.ndarray]:
        return {"auc": np.full(x.shape[0], 0.5)}  # the same score whatever the label

    per_test = generated_test_scores(on_label, constant, control, seed=1, score=blind)
    assert all(o.passed_units == 0 and not o.passed for o in _verdicts(per_test, "auc").values())


def test_own_rank_on_a_hand_example() -> None:
    refs = np.eye(3)
    labels = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    # label 2's own references (leave-one-out) differ from unit 2's row: [0, 0.6, 0.8]
    own = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])
    top1, rr = own_rank(labels, own, refs, [0, 1, 2])
    np.testing.assert_allclose(top1, [1.0, 1.0, 1.0])
    # label 1 of unit 0: unit 1's references (0.8) beat its own (0.6): rank 2
    top1, rr = own_rank(labels[1:2], own[0:1], refs, [0])
    assert top1.tolist() == [0.0] and rr.tolist() == [0.5]


WORDS = ["red", "blue", "green", "circle", "square", "star", "stripes", "water"]


def _bag(texts: list[str]) -> np.ndarray:
    """Bag-of-words embeddings (a small exact encoder): normalised word counts."""
    v = np.array([[t.split().count(w) for w in WORDS] for t in texts], dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


CLASSES = ["red circle", "blue square", "green star", "red stripes", "blue water", "green circle"]


def _identification(top: bool):  # type: ignore[no-untyped-def]
    references = _bag(CLASSES)

    def fn(cands: list[str], refs: list[list[str]], owners: list[int]) -> np.ndarray:
        own = np.stack([_bag(r).mean(axis=0) for r in refs])
        top1, rr = own_rank(_bag(cands), own, references, owners)
        return top1 if top else rr

    return fn


@pytest.mark.parametrize("top", [True, False])
def test_identification_passes_permutation_and_a_constant_label_scores_chance(top: bool) -> None:
    scores = text_test_scores(
        _identification(top),
        [[c] for c in CLASSES],
        [[(c,)] for c in CLASSES],
        constant="red",
        seed=0,
        with_owners=True,
    )
    out = {
        t: judge(t, "m", s.correct, s.perturbed, value_range=(0.0, 1.0)) for t, s in scores.items()
    }
    assert out["permutation"].passed and out["permutation"].passed_units == len(CLASSES)
    # "red" ties the two red classes first (rank 1.5, top-1 1/2), the four others after them
    # (rank 2 + 5/2): a fixed order, chance by construction; every unit's score still drops
    assert scores["constant"].perturbed.mean() == pytest.approx(
        2 * 0.5 / 6 if top else (2 / 1.5 + 4 / 4.5) / 6
    )
    assert out["constant"].passed_units == len(CLASSES)


def test_identification_blind_to_the_label_fails() -> None:
    def blind(cands: list[str], refs: list[list[str]], owners: list[int]) -> np.ndarray:
        return np.full(len(cands), 1.0 / len(CLASSES))

    scores = text_test_scores(
        blind, [[c] for c in CLASSES], [[(c,)] for c in CLASSES], constant="x", with_owners=True
    )
    assert all(judge(t, "m", s.correct, s.perturbed).passed_units == 0 for t, s in scores.items())
