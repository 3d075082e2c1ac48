"""perf/invert_perf.py's baseline (one formula at a time) agrees with INVERT's batched search at
a tiny size. Outputs only, not timings."""

from __future__ import annotations

import numpy as np

from perf import invert_perf


def test_invert_baseline_equals_ours() -> None:
    labels, acts = invert_perf.make_world(300, 12, 3, seed=1)
    ours = invert_perf.ours(labels, acts)
    base = invert_perf.baseline(labels, acts)
    for (m1, v1), (m2, v2) in zip(ours, base, strict=True):
        assert np.array_equal(m1, m2)
        assert abs(v1 - v2) <= 1e-12 and v1 > 0.5


def test_benchmark_main_runs(capsys) -> None:
    assert invert_perf.main(["--images", "200", "--concepts", "8", "--units", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio:" in out and out.splitlines()[-1] == "ok"
