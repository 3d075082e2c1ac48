"""The faithfulness suite's array computation against a per-unit loop.

All units of one layer at once (:mod:`metrics.faithfulness`, as ``bench.suites.faithfulness``
calls it: ``[units, images]`` arrays, one call per metric) against a Python loop over units that
calls the same metrics on one unit at a time (one row). Random activations (512 units: ResNet-18's
``layer4``) over 2000 images with sparse concept presence, the metrics of the suite (AUROC,
AUPRC, IoU, F1, Pearson, MAD). Checks that both give the same numbers (NaN where undefined) and
prints the time ratio (no target: at 2000 images the sorts dominate both paths, so the ratio is
modest). Exits non-zero only when the numbers differ: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import metrics.faithfulness as mf

METRICS = {
    "auroc": (mf.auroc, False),
    "auprc": (mf.auprc, False),
    "iou": (mf.iou, True),
    "f1": (mf.f1, True),
    "pearson": (mf.pearson, False),
    "mad": (mf.mad, False),
}


def _arrays(a: np.ndarray, c: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    return {n: fn(a, c, alpha) if ta else fn(a, c) for n, (fn, ta) in METRICS.items()}


def _loop(a: np.ndarray, c: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    out = {n: np.empty(a.shape[0]) for n in METRICS}
    for u in range(a.shape[0]):
        for n, (fn, ta) in METRICS.items():
            out[n][u] = (fn(a[u], c[u], alpha) if ta else fn(a[u], c[u]))[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.005)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args([] if argv is None else argv)  # python -m perf passes none
    rng = np.random.default_rng(0)
    c = (rng.random((args.units, args.images)) < rng.uniform(0.01, 0.2, (args.units, 1))) * 1.0
    a = rng.standard_normal((args.units, args.images)) + 1.5 * c
    a = np.maximum(a, 0.0)  # rectified, with ties at zero as real units have
    ratios = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        fast = _arrays(a, c, args.alpha)
        t1 = time.perf_counter()
        slow = _loop(a, c, args.alpha)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    for n in METRICS:
        if not np.allclose(fast[n], slow[n], rtol=1e-12, atol=1e-12, equal_nan=True):
            print(f"DIFFERENT: {n} array and per-unit results differ")
            return 1
    ratio = float(np.median(ratios))
    print(
        f"faithfulness metrics, {args.units} units x {args.images} images: per-unit loop / "
        f"arrays = {ratio:.1f}x (median of {args.rounds}); same numbers for {', '.join(METRICS)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
