"""perf/clip_dissect_perf.py's per-unit baseline equals the method's vectorised path at a tiny
size (outputs only, not timings)."""

from __future__ import annotations

import numpy as np

from perf import clip_dissect_perf as P


def test_baseline_loop_equals_the_method() -> None:
    p, acts = P.make_case(300, 700, 24, 32)
    base = P.baseline_soft_wpmi(p.double(), acts.double()).numpy()
    ours = P.ours_soft_wpmi(p, acts).numpy()
    np.testing.assert_allclose(ours, base, rtol=1e-4, atol=1e-3)
    assert (base.argmax(1) == ours.argmax(1)).all()
    assert len(np.unique(ours.argmax(1))) > 1  # the planted directions give varied labels


def test_compare_reports_same_labels() -> None:
    r = P.compare(200, 500, 16, 16, 1)
    assert r["same_labels"] and r["exact_label_matches"] + r["float_ties"] == 16
    assert r["baseline_s"] > 0 and r["ours_s"] > 0 and r["peak_mib_ours"] > 0
