"""INVERT's search: a whole beam step scored at once against one formula at a time.

- **Ours**: ``bench.search.beam_search`` with ``methods.invert.search.AurocObjective``: for each
  beam entry, the memberships of every ``F AND a`` / ``F OR a`` built at once and scored by
  ``metrics.faithfulness.auroc_of_labels`` (one rank vector, one matrix product).
- **Baseline**: the original's approach: the same beam search with every candidate built and
  scored on its own (membership, checks, AUROC from the mid-ranks of the activations computed for
  that formula, as a per-formula AUROC call does).

Both run on the same random world (image-level labels of ``--concepts`` concepts over
``--images`` images, units driven by a planted formula); the script checks that both return the
same formula (same membership) and AUROC per unit, and prints the time ratio and each side's
peak traced memory. ``python -m perf invert``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import numpy as np

BEAM_SIZE = 5
MAX_LENGTH = 3
MAX_FRACTION = 0.5


def make_world(n_images: int, n_concepts: int, n_units: int, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_images, n_concepts + 1), dtype=bool)
    rates = rng.uniform(0.02, 0.3, size=n_concepts)
    labels[:, 1:] = rng.random((n_images, n_concepts)) < rates
    acts = np.empty((n_units, n_images))
    for u in range(n_units):
        a, b, c = rng.choice(np.arange(1, n_concepts + 1), size=3, replace=False)
        planted = (labels[:, a] | labels[:, b]) & ~labels[:, c]
        acts[u] = np.round(planted * 1.0 + rng.normal(0, 0.5, n_images), 2)
    return labels, acts


def ours(labels: np.ndarray, acts: np.ndarray) -> list[tuple[Any, float]]:
    from bench.search import beam_search
    from methods.invert.search import AurocObjective

    out = []
    for u in range(acts.shape[0]):
        obj = AurocObjective(labels, acts[u], max_fraction=MAX_FRACTION)
        found = beam_search(obj, beam_size=BEAM_SIZE, max_length=MAX_LENGTH, key=obj.key)
        out.append((obj.membership(found.best.tree), found.best.value))
    return out


def one_auroc(scores: np.ndarray, member: np.ndarray) -> float:
    """AUROC of one labelling, ranks computed for this call (as a per-formula metric does)."""
    from scipy.stats import rankdata

    n_pos = int(member.sum())
    n_neg = member.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[member].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def baseline(labels: np.ndarray, acts: np.ndarray) -> list[tuple[Any, float]]:
    """The same search, every candidate on its own."""
    n, c1 = labels.shape
    atoms = [labels[:, a] for a in range(c1)] + [~labels[:, a] for a in range(c1)]
    is_atom = [a not in (0, c1) for a in range(2 * c1)]
    out = []
    for u in range(acts.shape[0]):
        s = acts[u]

        def ok(m: np.ndarray) -> bool:
            return bool(m.any() and not m.all() and m.mean() <= MAX_FRACTION)

        prim = []
        for a in range(2 * c1):
            v = one_auroc(s, atoms[a]) if is_atom[a] else float("nan")
            prim.append(v if np.isfinite(v) else -np.inf)
        order = sorted(range(2 * c1), key=lambda a: -prim[a])  # stable
        beam = [(atoms[a], prim[a]) for a in order if np.isfinite(prim[a]) and ok(atoms[a])]
        beam = beam[:BEAM_SIZE]
        for _ in range(MAX_LENGTH - 1):
            cands = list(beam)
            for f, _score in beam:
                for a in range(2 * c1):
                    for op in ("and", "or"):
                        if not is_atom[a]:
                            continue
                        m = f & atoms[a] if op == "and" else f | atoms[a]
                        if not ok(m) or np.array_equal(m, f):
                            continue
                        cands.append((m, one_auroc(s, m)))
            ranked = sorted(range(len(cands)), key=lambda i: -cands[i][1])
            new, seen = [], set()
            for i in ranked:
                if len(new) == BEAM_SIZE:
                    break
                key = np.packbits(cands[i][0]).tobytes()
                if key in seen:
                    continue
                seen.add(key)
                new.append(cands[i])
            beam = new
        out.append(beam[0])
    return out


def measure(fn: Any, *args: Any) -> tuple[float, int, Any]:
    tracemalloc.start()
    t = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf invert", description=__doc__)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--concepts", type=int, default=100)
    p.add_argument("--units", type=int, default=2)
    args = p.parse_args([] if argv is None else argv)
    labels, acts = make_world(args.images, args.concepts, args.units)
    print(
        f"world: {args.images} images, {args.concepts} concepts ({2 * args.concepts} atoms), "
        f"{args.units} units; beam {BEAM_SIZE}, length {MAX_LENGTH}"
    )
    base_s, base_peak, base = measure(baseline, labels, acts)
    ours_s, ours_peak, found = measure(ours, labels, acts)
    same = all(
        np.array_equal(m1, m2) and abs(v1 - v2) <= 1e-12
        for (m1, v1), (m2, v2) in zip(found, base, strict=True)
    )
    print(f"baseline (one formula at a time): {base_s:.2f} s, peak {base_peak / 2**20:.1f} MiB")
    print(f"ours (a beam step at once):       {ours_s:.2f} s, peak {ours_peak / 2**20:.1f} MiB")
    print(f"ratio: {base_s / ours_s:.1f}x")
    print(f"equality: same formula membership and AUROC on every unit: {'ok' if same else 'FAIL'}")
    print("ok" if same else "FAIL")
    return 0 if same else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
