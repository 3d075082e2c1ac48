"""Cosines are clipped to [-1, 1] where they are computed (issue 13's last item).

The DnD reliable-unit test failed on some CPUs: the cosine of two identical annotations came out a
hair above 1 and passed a threshold of 1.0. ``VECTOR`` is a text embedding whose unit-normalised
dot product with itself is 1.0000000000000002 in float64 on x86 (checked for ``@`` on one row,
on a stack of rows, and ``einsum``): without the clip, each check below sees a value above 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench.schema import UnitRef
from metrics.text import cosine_matrix, text_cosine

VECTOR = np.array([-0.544, -0.316, 0.412, 1.043, -0.129, 1.366, -0.665, 0.352])


class SameVectorEncoder:
    """Every text embeds to ``VECTOR``: every pair of texts is identical to the encoder."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(VECTOR, (len(texts), 1))

    def identity(self) -> dict[str, Any]:
        return {"name": "same-vector"}


def test_cosine_matrix_of_identical_rows_is_exactly_one() -> None:
    rows = np.tile(VECTOR, (3, 1))
    assert np.all(cosine_matrix(rows, rows) == 1.0)
    assert np.all(cosine_matrix(-rows, rows) == -1.0)


def test_text_cosine_of_identical_texts_is_exactly_one() -> None:
    values, per_ref = text_cosine(["a red car"], [("a red car", "cars")], SameVectorEncoder())
    assert values[0] == 1.0 and per_ref == [[1.0, 1.0]]


def test_dnd_reliability_of_identical_annotations_is_exactly_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A unit whose annotations are all the same text has best pair cosine 1.0, not above it,
    so a threshold of 1.0 does not keep it ("above the threshold" is strict)."""
    import bench.suites.text as text_suite
    from bench.suites.milannotations import MilannotationsSuite

    monkeypatch.setattr(text_suite, "encoder_for", lambda *a, **k: (SameVectorEncoder(), ""))
    units = [UnitRef(layer="conv1", index=0), UnitRef(layer="conv1", index=1)]
    annotations = {u: ("a red car", "a red car", "a red car") for u in units}
    ctx = SimpleNamespace(options=SimpleNamespace(progress=False), device="cpu")
    best, settings, _ = MilannotationsSuite(reliable_threshold=1.0)._reliability(
        ctx,  # type: ignore[arg-type]
        annotations,
        units,
    )
    assert all(best[u] == 1.0 for u in units)
    assert settings["reliable_threshold"] == 1.0
    assert not [u for u in units if best[u] > settings["reliable_threshold"]]
