"""CompExp's beam search: ``methods.compexp.search.BeamSearch`` against the original's approach.

Same data as ``perf.netdissect_perf``: the synthetic probe in the real Broden format (seed
271828, ``--images`` / ``PERF_IMAGES`` images, default 300), ``synth.resnet``'s maps of ``layer2``
and ``layer3``, NetDissect's thresholds. Per layer, the subset is the first ``--units`` /
``PERF_UNITS`` (default 4) units whose mask is not empty.

- **Baseline** (the original's approach, in numpy; written here, not copied): each unit's
  full-dataset boolean mask [N * sh * sw] (PIL bilinear upsampling, mode 'F', of every map whose
  maximum exceeds the threshold) and each concept's full-dataset mask (its pixels in any label
  layer, or the whole image for an image-level label), then the beam search scoring ONE candidate
  at a time: build its mask with numpy boolean ops and count ``|unit and F|`` and ``|F|``. The
  beam: the top 5 non-zero single concepts (ties by label number), then 2 rounds expanding every
  entry F with ``F OR L``, ``F AND L``, ``F AND NOT L`` for every concept L (``A op A`` skipped
  when the entry is the single leaf A), score = IoU * penalty ** (length - 1) with penalty 1,
  the old beam kept in the candidate set, ties broken by insertion order (old beam first, then
  expansions in (entry, label number, OR/AND/AND NOT) order). One liberty that only makes the
  baseline faster than the original (which re-evaluates every candidate from its leaf masks):
  each beam entry's mask is built once per round.
- **Ours**: ``BeamSearch(table, SignatureAlgebra(table), tally.hist, tally.unit_area, beam_size=5,
  max_length=3, length_penalty=1.0).search(u)`` from the shared tally (timed separately), fresh
  objects on each of ``--repeats`` (default 3) runs, best taken; for the subset and for every
  unit of the layer.

Checks, per unit of the subset: the same best IoU (to 1e-9), the same formula (JSON trees with
codes mapped to label numbers; when formulas differ but the IoUs are exactly equal, that is
reported as a tie and accepted), the same number of scored candidates, and the baseline's unit
mask area equal to the tally's. Returns 1 when any check fails. Target: per unit, ours at least
50x faster. Prints ``MISSED`` for a missed target (exit 0: a report, not a test).

``python -m perf.compexp_perf --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from perf.netdissect_perf import (
    SEED,
    World,
    best_of,
    images_from_env,
    make_world,
    pil_upsample,
    pixel_layers,
    scalar_labels,
)

BEAM_SIZE = 5
MAX_LENGTH = 3
PENALTY = 1.0
DEFAULT_UNITS = 4
TARGET_RATIO = 50.0
IOU_TOLERANCE = 1e-9
OPERATORS = ("or", "and", "and not")


# --- the baseline -----------------------------------------------------------------------------


def unit_mask(maps: np.ndarray, threshold: float, unit: int, seg_size: tuple[int, int]):
    """bool [N * sh * sw]: the unit's mask over the whole probe set."""
    sh, sw = seg_size
    out = np.zeros((maps.shape[0], sh * sw), dtype=bool)
    for i in range(maps.shape[0]):
        fmap = maps[i, unit]
        if fmap.max() > threshold:
            out[i] = (pil_upsample(fmap, seg_size) > threshold).ravel()
    return out.ravel()


def concept_masks(world: World) -> dict[int, np.ndarray]:
    """Label number -> bool [N * sh * sw] for every concept, in label-number order."""
    sh, sw = world.seg_size
    s = sh * sw
    numbers = [c.number for c in world.concepts]
    index = {n: k for k, n in enumerate(numbers)}
    masks = np.zeros((len(numbers), world.n_images, s), dtype=bool)
    for i, seg in enumerate(world.segs):
        for layer in pixel_layers(seg, world.seg_size):
            for label in np.unique(layer):
                k = index.get(int(label))
                if k is not None:
                    masks[k, i] |= layer == label
        for label in scalar_labels(seg):
            k = index.get(label)
            if k is not None:
                masks[k, i] = True
    return {n: masks[k].ravel() for n, k in index.items()}


def tree_length(tree: Any) -> int:
    if tree[0] == "leaf":
        return 1
    if tree[0] == "not":
        return 1 + tree_length(tree[1])
    return sum(tree_length(t) for t in tree[1:])


def evaluate(tree: Any, masks: dict[int, np.ndarray]) -> np.ndarray:
    op = tree[0]
    if op == "leaf":
        return masks[tree[1]]
    if op == "not":
        return ~evaluate(tree[1], masks)
    a, b = evaluate(tree[1], masks), evaluate(tree[2], masks)
    return a & b if op == "and" else a | b


def baseline_search(
    unit: np.ndarray,
    masks: dict[int, np.ndarray],
    *,
    beam_size: int = BEAM_SIZE,
    max_length: int = MAX_LENGTH,
    penalty: float = PENALTY,
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(best, best single concept, candidates scored); entries are dicts with ``tree`` (over
    label numbers), ``score``, ``iou`` and ``length``."""
    unit_area = int(np.count_nonzero(unit))

    def iou(mask: np.ndarray) -> float:
        inter = int(np.count_nonzero(mask & unit))
        den = int(np.count_nonzero(mask)) + unit_area - inter
        return inter / den if den > 0 else 0.0

    def entry(tree: Any, value: float) -> dict[str, Any]:
        length = tree_length(tree)
        return {"tree": tree, "score": value * penalty ** (length - 1), "iou": value,
                "length": length}  # fmt: skip

    numbers = list(masks)
    prims = {n: iou(masks[n]) for n in numbers}
    scored = len(numbers)
    ranked = sorted(numbers, key=lambda n: -prims[n])  # stable: ties by label number
    single = entry(["leaf", ranked[0]], prims[ranked[0]])
    beam = [entry(["leaf", n], prims[n]) for n in ranked if prims[n] > 0][:beam_size]
    if not beam:
        return single, single, scored
    for _ in range(max_length - 1):
        candidates = {json.dumps(b["tree"]): b for b in beam}
        for b in beam:
            fmask = evaluate(b["tree"], masks)
            for n in numbers:
                if b["tree"][0] == "leaf" and b["tree"][1] == n:
                    continue
                leaf = ["leaf", n]
                for op in OPERATORS:
                    if op == "or":
                        tree, mask = ["or", b["tree"], leaf], fmask | masks[n]
                    elif op == "and":
                        tree, mask = ["and", b["tree"], leaf], fmask & masks[n]
                    else:
                        tree, mask = ["and", b["tree"], ["not", leaf]], fmask & ~masks[n]
                    scored += 1
                    key = json.dumps(tree)
                    if key not in candidates:
                        candidates[key] = entry(tree, iou(mask))
        beam = sorted(candidates.values(), key=lambda e: -e["score"])[:beam_size]
    return beam[0], single, scored


# --- ours ---------------------------------------------------------------------------------------


def ours_tally(world: World, layer: str):
    from bench.dissect import tally_units

    return tally_units(world.maps[layer], world.thresholds[layer], world.table, device="cpu")


def ours_search(world: World, tally: Any, units: list[int]) -> list[tuple[Any, Any, int]]:
    from bench.dissect import SignatureAlgebra
    from methods.compexp.search import BeamSearch

    search = BeamSearch(
        world.table,
        SignatureAlgebra(world.table),
        tally.hist,
        tally.unit_area,
        beam_size=BEAM_SIZE,
        max_length=MAX_LENGTH,
        length_penalty=PENALTY,
    )
    return [search.search(u) for u in units]


def to_numbers(tree: Any, table: Any) -> list[Any]:
    if tree[0] == "leaf":
        return ["leaf", int(table.concepts[int(tree[1]) - 1].number)]
    return [tree[0], *(to_numbers(t, table) for t in tree[1:])]


def pick_units(unit_area: np.ndarray, n: int) -> list[int]:
    """The first ``n`` units whose mask is not empty."""
    return [int(u) for u in np.flatnonzero(np.asarray(unit_area) > 0)[:n]]


def compare(world: World, layer: str, n_units: int, repeats: int = 3) -> dict[str, Any]:
    """Both searches on the layer's subset of units, ours on every unit, and the checks."""
    tally_s, tally = best_of(repeats, ours_tally, world, layer)
    units = pick_units(tally.unit_area, n_units)
    maps, thr = world.maps[layer], world.thresholds[layer]
    t = time.perf_counter()
    masks = concept_masks(world)
    concept_s = time.perf_counter() - t
    t = time.perf_counter()
    unit_masks = {u: unit_mask(maps, float(thr[u]), u, world.seg_size) for u in units}
    unit_mask_s = time.perf_counter() - t
    base, base_s = {}, {}
    for u in units:
        t = time.perf_counter()
        base[u] = baseline_search(unit_masks[u], masks)
        base_s[u] = time.perf_counter() - t
    ours_s, ours = best_of(repeats, ours_search, world, tally, units)
    all_units = list(range(int(maps.shape[1])))
    all_s, _ = best_of(repeats, ours_search, world, tally, all_units)
    checks = []
    for u, (found, single, n_scored) in zip(units, ours, strict=True):
        b_best, b_single, b_scored = base[u]
        ours_tree = to_numbers(found.tree, world.table)
        same_tree = json.dumps(ours_tree) == json.dumps(b_best["tree"])
        same_iou = abs(found.iou - b_best["iou"]) <= IOU_TOLERANCE
        tie = not same_tree and found.iou == b_best["iou"]
        checks.append(
            {
                "unit": u,
                "area": int(tally.unit_area[u]),
                "area_ok": int(np.count_nonzero(unit_masks[u])) == int(tally.unit_area[u]),
                "baseline_iou": b_best["iou"],
                "ours_iou": found.iou,
                "baseline_tree": b_best["tree"],
                "ours_tree": ours_tree,
                "same_tree": same_tree,
                "tie": tie,
                "ok_iou": same_iou,
                "single_ok": abs(single.iou - b_single["iou"]) <= IOU_TOLERANCE,
                "scored": (b_scored, n_scored),
                "baseline_s": base_s[u],
            }
        )
    return {
        "layer": layer,
        "units": units,
        "n_all": len(all_units),
        "tally_s": tally_s,
        "concept_masks_s": concept_s,
        "unit_masks_s": unit_mask_s,
        "baseline_search_s": sum(base_s.values()),
        "ours_s": ours_s,
        "ours_all_s": all_s,
        "checks": checks,
    }


def names_of(tree: Any, names: dict[int, str]) -> str:
    op = tree[0]
    if op == "leaf":
        return names.get(tree[1], str(tree[1]))
    if op == "not":
        return f"NOT {names_of(tree[1], names)}"
    return f"({names_of(tree[1], names)} {op.upper()} {names_of(tree[2], names)})"


def check_ok(c: dict[str, Any]) -> bool:
    return (
        c["area_ok"]
        and c["ok_iou"]
        and c["single_ok"]
        and (c["same_tree"] or c["tie"])
        and c["scored"][0] == c["scored"][1]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.compexp_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=images_from_env(), help="probe size")
    parser.add_argument(
        "--units",
        type=int,
        default=int(os.environ.get("PERF_UNITS", DEFAULT_UNITS)),
        help="units per layer searched by both sides",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (ours)")
    args = parser.parse_args([] if argv is None else argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="perf-compexp-") as tmp:
        world = make_world(tmp, args.images)
        sh, sw = world.seg_size
        print(
            f"synthetic Broden export (seed {SEED}): {world.n_images} images, segmentations "
            f"{sh}x{sw} ({world.n_images * sh * sw:,} pixels per mask), "
            f"{world.table.num_concepts} concepts, {world.table.num_signatures} signatures; "
            f"target synth.resnet, layers "
            + ", ".join(f"{la} ({world.maps[la].shape[1]} units)" for la in world.layers)
            + f"; beam {BEAM_SIZE}, max length {MAX_LENGTH}, penalty {PENALTY}; subset: first "
            f"{args.units} units with a non-empty mask per layer; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        print(f"our concept table: {world.seconds['table']:.3f} s (one-time, cached per probe)")
        results = [compare(world, layer, args.units, args.repeats) for layer in world.layers]
    names = {c.number: c.name for c in world.concepts}
    ok = True
    worst = float("inf")
    print(
        f"{'layer':8s} {'unit':>4s} {'area':>6s} {'baseline s':>10s} {'IoU base':>9s} "
        f"{'IoU ours':>9s} {'scored':>6s}  formula"
    )
    for r in results:
        for c in r["checks"]:
            ok = ok and check_ok(c)
            flag = "" if check_ok(c) else "  DIFFERENT"
            tie = "  [tie: equal IoU, other formula]" if c["tie"] else ""
            print(
                f"{r['layer']:8s} {c['unit']:4d} {c['area']:6d} {c['baseline_s']:10.3f} "
                f"{c['baseline_iou']:9.5f} {c['ours_iou']:9.5f} {c['scored'][1]:6d}  "
                f"{names_of(c['ours_tree'], names)}{tie}{flag}"
            )
            if c["tie"] or not check_ok(c):
                print(f"{'':33s} baseline: {names_of(c['baseline_tree'], names)}")
    print(
        f"{'layer':8s} {'units':>5s} {'tally s':>8s} {'base masks s':>12s} "
        f"{'base s/unit':>11s} {'ours s/unit':>11s} {'ratio':>7s} {'ours s/unit (all)':>17s}"
    )
    for r in results:
        n = len(r["units"])
        if not n:
            print(f"{r['layer']:8s} no unit with a non-empty mask")
            continue
        base_u = r["baseline_search_s"] / n
        ours_u = r["ours_s"] / n
        ratio = base_u / ours_u
        worst = min(worst, ratio)
        print(
            f"{r['layer']:8s} {n:5d} {r['tally_s']:8.3f} "
            f"{r['concept_masks_s'] + r['unit_masks_s']:12.3f} {base_u:11.4f} {ours_u:11.5f} "
            f"{ratio:6.0f}x {r['ours_all_s'] / r['n_all']:17.5f}"
        )
    print(
        "  tally s: our shared tally of the layer (every unit), excluded from ours; base masks "
        "s: the baseline's concept masks plus the subset's unit masks, excluded from the "
        "baseline; ours s/unit (all): ours over every unit of the layer"
    )
    for r in results:
        n = len(r["units"])
        if not n:
            continue
        ratio = r["baseline_search_s"] / r["ours_s"]
        base_setup = r["concept_masks_s"] + r["unit_masks_s"] + r["baseline_search_s"]
        ours_setup = world.seconds["table"] + r["tally_s"] + r["ours_s"]
        print(
            f"{r['layer']}: baseline/ours search per unit {ratio:.0f}x (target >= "
            f"{TARGET_RATIO:.0f}x)  {'ok' if ratio >= TARGET_RATIO else 'MISSED'}; "
            f"with setup, (baseline masks + search) / (our table + tally + search) over the "
            f"{n} units: {base_setup / ours_setup:.1f}x"
        )
    n_checks = sum(len(r["checks"]) for r in results)
    ties = sum(c["tie"] for r in results for c in r["checks"])
    print(
        f"equality: {n_checks} units, same best IoU (tolerance {IOU_TOLERANCE:.0e}), same "
        f"formula ({ties} exact ties with another formula), same single-concept IoU, same "
        f"candidate count, same unit mask area  {'ok' if ok else 'FAILED'}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
