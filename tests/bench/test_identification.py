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


class _Table:
    """A text encoder that looks texts up in a table of 2-D unit vectors (hand examples)."""

    def __init__(self, table: dict[str, tuple[float, float]]) -> None:
        self.table = table

    def encode(self, texts):  # type: ignore[no-untyped-def]
        return np.array([self.table[t] for t in texts], dtype=np.float64)

    def identity(self) -> dict[str, str]:
        return {"name": "table"}


def test_milannotations_identification_ranks_and_ceiling_by_hand() -> None:
    # Three units with two annotations each; the similarity of a label to a unit is its mean
    # cosine with the unit's annotations (the suite's sentence cosine).
    table = {
        "a1": (1.0, 0.0), "a2": (0.6, 0.8),
        "b1": (0.0, 1.0), "b2": (0.8, 0.6),
        "c1": (-1.0, 0.0), "c2": (0.0, -1.0),
        "la": (0.0, 1.0), "lb": (0.8, 0.6), "lc": (-0.6, -0.8),
    }  # fmt: skip
    a, b, c = (UnitRef(layer="l", index=i) for i in range(3))
    refs = {a: ("a1", "a2"), b: ("b1", "b2"), c: ("c1", "c2")}
    labels = {a: "la", b: "lb", c: "lc"}
    m = MethodLabels(
        info=MethodInfo(name="m", version="1"),
        descriptions={u: Description(unit=u, label=t) for u, t in labels.items()},
    )
    top1, mrr = identification_metrics(
        {"m": m},
        [a, b, c],
        refs,
        options=ScoreOptions(n_resamples=100, device="cpu"),
        device="cpu",
        ceiling=True,
        encoder=_Table(table),
    )
    # la: A 0.4, B 0.8, C -0.5 -> rank 2; lb: A 0.88, B 0.8, C -0.7 -> rank 2;
    # lc: A -0.8, B -0.88, C 0.7 -> rank 1
    assert mrr.values["m"] == pytest.approx({a: 0.5, b: 0.5, c: 1.0})
    assert top1.values["m"] == pytest.approx({a: 0.0, b: 0.0, c: 1.0})
    # Ceiling: a1 as label: own (a2) 0.6, B 0.4, C -0.5 -> rank 1; a2: own (a1) 0.6, B 0.88,
    # C -0.7 -> rank 2. b1: own 0.6, A 0.4, C -0.5 -> 1; b2: own 0.6, A 0.88, C -0.7 -> 2.
    # c1: own 0, A -0.8, B -0.4 -> 1; c2: own 0, A -0.4, B -0.8 -> 1.
    assert mrr.ceiling == pytest.approx({a: 0.75, b: 0.75, c: 1.0})
    assert top1.ceiling == pytest.approx({a: 0.5, b: 0.5, c: 1.0})
    assert mrr.ceiling_note
