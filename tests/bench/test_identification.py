"""Identification scores (bench.suites.identification) on hand examples."""

from __future__ import annotations

import numpy as np
import pytest

from bench.results import MethodInfo
from bench.schema import Description, UnitRef
from bench.suites.base import MethodLabels, ScoreOptions
from bench.suites.identification import identification_metrics, identification_values


def test_ranks_on_a_hand_example() -> None:
    # row 0: own 0.9 is best -> rank 1; row 1: one other (0.8) above own 0.5 -> rank 2;
    # row 2: own 0.3 ties with one other, one above -> ranks 2 and 3 share 2.5
    s = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.6, 0.3, 0.3]])
    top1, rr = identification_values(s)
    np.testing.assert_allclose(rr, [1.0, 0.5, 1 / 2.5])
    np.testing.assert_allclose(top1, [1.0, 0.0, 0.0])
    # a tie at the top: expected top-1 with random tie-breaking
    top1, rr = identification_values(np.array([[0.5, 0.5], [0.1, 0.7]]))
    np.testing.assert_allclose(top1, [0.5, 1.0])
    np.testing.assert_allclose(rr, [1 / 1.5, 1.0])


def test_constant_label_scores_chance_and_own_names_score_one() -> None:
    names = ["red circle", "blue square", "green star", "water", "grass", "striped triangle"]
    units = [UnitRef(layer="fc", index=i) for i in range(len(names))]
    own = MethodLabels(
        info=MethodInfo(name="own", version="1"),
        descriptions={u: Description(unit=u, label=names[u.index]) for u in units},
    )
    const = MethodLabels(info=MethodInfo(name="const", version="1"), constant="depictions")
    top1, mrr = identification_metrics(
        {"own": own, "const": const},
        units,
        {u: (names[u.index],) for u in units},
        options=ScoreOptions(n_resamples=100, device="cpu"),
        device="cpu",
    )
    n = len(units)
    assert all(v == 1.0 for v in top1.values["own"].values())
    assert all(v == 1.0 for v in mrr.values["own"].values())
    # one label for every unit: its similarities rank the units once, so over the units the
    # ranks are a permutation of 1..n (ties aside): chance on average
    assert np.mean([top1.values["const"][u] for u in units]) == pytest.approx(1 / n)
    harmonic = sum(1 / k for k in range(1, n + 1))
    assert np.mean([mrr.values["const"][u] for u in units]) == pytest.approx(harmonic / n)
