"""Metric sanity tests (metrics.sanity): the perturbations do what NeuronEval describes, and the
tests pass a correct metric and fail deliberately broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import DataError
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


# --- text metrics: the permutation and constant tests ---------------------------------------

#: Six units, three annotations each: what each unit's annotators wrote (a hand case).
ANNOTATED = [
    ("red circles", "round red shapes", "red discs"),
    ("blue squares", "blue boxes", "square shapes that are blue"),
    ("green stripes", "striped green things", "green striped patterns"),
    ("yellow stars", "star shapes in yellow", "a yellow star"),
    ("snowy ground", "snow on the ground", "a snowfield"),
    ("water waves", "the sea", "ocean water"),
]


def _leave_one_out() -> tuple[list[list[str]], list[list[tuple[str, ...]]]]:
    from bench.suites.milannotations import leave_one_out

    pairs = [leave_one_out(texts) for texts in ANNOTATED]
    return [[p[0] for p in ps] for ps in pairs], [[p[1] for p in ps] for ps in pairs]


def _verdicts(scores: dict[str, S.TextTestScores]) -> dict[str, S.SanityOutcome]:
    out = {}
    for test, t in scores.items():
        keep = ~t.same
        out[test] = S.judge(test, "m", t.correct[keep], t.perturbed[keep], value_range=(-1.0, 1.0))
    return out


def test_text_tests_pass_sentence_cosine_and_fail_a_constant_metric() -> None:
    from metrics.text import sentence_cosine

    labels, refs = _leave_one_out()

    def cosine(cands: list[str], references: list[list[str]]) -> np.ndarray:
        return np.asarray(sentence_cosine(cands, references, preset="offline", device="cpu").values)

    def constant(cands: list[str], references: list[list[str]]) -> np.ndarray:
        return np.full(len(cands), 0.7)  # scores every label alike: blind to it

    good = _verdicts(S.text_test_scores(cosine, labels, refs, constant="depictions", seed=0))
    # every annotation differs: there is no frequent label to test
    assert set(good) == {"permutation", "constant"}
    assert all(o.passed and o.judged_units == 6 for o in good.values()), good
    bad = _verdicts(S.text_test_scores(constant, labels, refs, constant="depictions", seed=0))
    assert all(not o.passed and o.passed_units == 0 for o in bad.values()), bad


def test_text_test_scores_pairs_each_unit_with_its_own_references() -> None:
    labels, refs = _leave_one_out()
    calls: list[tuple[list[str], list[list[str]]]] = []

    def overlap(cands: list[str], references: list[list[str]]) -> np.ndarray:
        calls.append((cands, references))
        # Jaccard word overlap with each reference, averaged: a small, exact text metric
        out = []
        for c, rs in zip(cands, references, strict=True):
            w = set(c.split())
            out.append(np.mean([len(w & set(r.split())) / len(w | set(r.split())) for r in rs]))
        return np.array(out)

    scores = S.text_test_scores(overlap, labels, refs, constant="depictions", seed=4)
    assert len(calls) == 1 and len(calls[0][0]) == 3 * 18  # one call: 18 pairs per test
    perm = scores["permutation"]
    # the correct score of a unit is the mean over its held-out annotations (the ceiling)
    w0 = [set(t.split()) for t in ANNOTATED[0]]
    jac = lambda a, b: len(a & b) / len(a | b)  # noqa: E731
    ceiling0 = np.mean([np.mean([jac(w0[i], w0[j]) for j in range(3) if j != i]) for i in range(3)])
    assert perm.correct[0] == pytest.approx(ceiling0)
    # permuted labels are another unit's annotations, in order, against this unit's references
    others = [ANNOTATED.index(tuple(x)) for x in perm.labels]
    assert not any(o == u for u, o in enumerate(others))
    assert sorted(others) == list(range(6))
    assert scores["constant"].labels[2] == ["depictions"] * 3
    assert scores["constant"].perturbed == pytest.approx(np.zeros(6))
    assert not perm.same.any()


def test_text_tests_leave_out_a_unit_whose_perturbed_labels_are_its_own() -> None:
    labels = [["red"], ["red"], ["blue"]]
    refs = [[("red",)], [("red",)], [("blue",)]]

    def exact(cands: list[str], references: list[list[str]]) -> np.ndarray:
        return np.array([float(c in rs) for c, rs in zip(cands, references, strict=True)])

    for seed in range(5):
        scores = S.text_test_scores(exact, labels, refs, constant="red", seed=seed)
        assert scores["constant"].same.tolist() == [True, True, False]
        # "red" is the most frequent label: the units labelled "red" cannot lose to it
        assert scores["frequent_label"].labels == [["red"]] * 3
        assert scores["frequent_label"].same.tolist() == [True, True, False]
        assert scores["frequent_label"].perturbed.tolist() == [1.0, 1.0, 0.0]
        perm = scores["permutation"]
        # units 0 and 1 swapping labels is no worse label: left out, never judged as a failure
        same = [perm.labels[u] == labels[u] for u in range(3)]
        assert perm.same.tolist() == same
    with pytest.raises(DataError, match="one reference list per label"):
        S.text_test_scores(exact, [["a"], ["b"]], [[("a",)], []], constant="c")


def test_one_extreme_unit_does_not_set_an_unbounded_metrics_tolerance() -> None:
    # MAD on synth.resnet: most units near 1-3, one planted unit silent off its concept at 2350.
    correct = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 2350.0])
    perturbed = correct - 0.01  # every unit's score drops a little
    assert S.score_scale(correct) == pytest.approx(np.percentile(correct, 75) - 1.625)
    out = S.judge("missing_labels", "mad", correct, perturbed)
    assert out.passed_units == 6  # with max - min as the range, epsilon would be 2.35
    flat = S.judge("constant", "mad", [1.0, 1.0, 1.0], [1.0, 0.5, 1.0])
    assert flat.passed_units == 1  # no spread: epsilon in units of 1
