"""NetDissect's tally and IoU: ``bench.dissect`` against a NetDissect-Lite-style loop.

Both sides see the same data: the synthetic probe written in the real Broden format
(``bench.synth.broden_export.write_broden``, seed 271828, ``--images`` / ``PERF_IMAGES`` images,
default 300), ``synth.resnet``'s activation maps of ``layer1``, ``layer2`` and ``layer3`` (a
three-layer run) recorded once with ``store_maps=True``, and NetDissect's per-unit thresholds
(``NETDISSECT_QUANTILE``).

- **Baseline**: a per-image, per-unit Python/numpy loop in the style of NetDissect-Lite's
  ``tally_job`` (written here, not copied). Every segmentation is decoded into memory before the
  clock starts. Per image: concatenate its pixel label layers, list its image-level labels, count
  label totals. Per unit whose map maximum exceeds its threshold: upsample that one map to the
  segmentation size with PIL's bilinear ``resize`` (mode 'F'), threshold it, and ``np.bincount``
  the labels under the mask (intersections), the mask area, and Lite's per-category activation
  counts (a category counts when a label whose primary category it is falls inside the mask, or
  when the image has a whole-image label of it). Then ``IoU = both / (units_cat[:, primary] +
  labels - both)``. Concept masks are sets, as in ``bench.dissect``: a label repeated in two
  layers at one pixel counts once there, and a pixel label that is also a whole-image label of
  the image is covered by the whole-image label (each whole-image label counts ``sh * sw``).
- **Ours**: ``bench.dissect.tally_units(maps, thresholds, table, device="cpu")`` then
  ``netdissect_iou(tally, table, "lite")``, best of ``--repeats`` (default 3).

Two ratios, side by side:

- **warm** (the concept table cached, as on every run after the first): the baseline's tally
  loops (segmentations already in memory) against our tallies.
- **cold** (a first run on a new probe set): the baseline decodes every segmentation PNG in the
  original's style (PIL ``Image.open``, then ``R + 256*G``; NetDissect-Lite does this again in
  each layer's tally) and runs its loops; ours builds the concept table from the files
  (``build_concept_table`` with its default workers: in this process for small probe sets,
  else worker processes, one per available core) and runs its tallies. The cold ratio charges
  the baseline one decode per layer, as the original does; the stricter variants (one decode
  for all layers; numba's one-time start-up, about a second, charged to ours) are printed too,
  with the share of our table build that PNG decoding alone takes (a floor for any table build
  on these files) and the cold ratio a build that only decoded would give. Both ratios are
  also printed in CPU time (user + system, the table's worker processes included), which a
  shared machine disturbs less than wall time.

Equality: the largest ``|IoU difference|`` over every unit and concept must be <= 1e-6 (codes
mapped to label numbers) for the warm comparison and for the IoUs from the cold-built table;
otherwise the script returns 1. Targets: warm at least 20x, cold at least 10x. Prints
``MISSED`` for a missed target (exit 0: a report, not a test).

``python -m perf.netdissect_perf --help`` for options.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 271828
LAYERS = ("layer2", "layer3")
#: The layers of this benchmark's own run (a three-layer dissection, as in issue 16).
RUN_LAYERS = ("layer1", "layer2", "layer3")
DEFAULT_IMAGES = 300
TARGET_RATIO = 20.0
COLD_TARGET_RATIO = 10.0
IOU_TOLERANCE = 1e-6


# --- the shared world (also used by perf.compexp_perf) -----------------------------------------


@dataclass
class World:
    """One synthetic Broden export, the recorded maps, the preloaded segmentations and our
    concept table, with what each cost."""

    probe: Any
    layers: tuple[str, ...]
    maps: dict[str, np.ndarray]  # layer -> float32 [N, U, h, w]
    thresholds: dict[str, np.ndarray]  # layer -> float32 [U]
    segs: list[Any]  # probe.segmentation(i) for every image
    concepts: list[Any]  # probe.concepts(), sorted by label number
    table: Any  # bench.dissect.ConceptTable
    seconds: dict[str, float]

    @property
    def n_images(self) -> int:
        return len(self.segs)

    @property
    def seg_size(self) -> tuple[int, int]:
        return tuple(self.probe.seg_size)  # type: ignore[return-value]


def images_from_env(default: int = DEFAULT_IMAGES) -> int:
    return int(os.environ.get("PERF_IMAGES", default))


def make_world(directory: str | Path, n_images: int, layers: tuple[str, ...] = LAYERS) -> World:
    """Write the export into ``directory``, record ``layers``, preload the segmentations and
    build the concept table (each step timed)."""
    from bench.dissect import build_concept_table
    from bench.evidence import NETDISSECT_QUANTILE
    from bench.probes.broden import BrodenProbe
    from bench.record import record
    from bench.synth.broden_export import write_broden
    from bench.targets import load_target

    seconds: dict[str, float] = {}
    root = Path(directory) / "broden"
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_broden(root, n_images=n_images, seed=SEED)
    seconds["export"] = time.perf_counter() - t
    probe = BrodenProbe(root)
    t = time.perf_counter()
    target = load_target("synth.resnet")
    evidence = record(
        target, probe, list(layers), quantiles=(NETDISSECT_QUANTILE,), store_maps=True
    )
    seconds["record"] = time.perf_counter() - t
    maps = {layer: np.asarray(evidence[layer].maps, dtype=np.float32) for layer in layers}
    thresholds = {
        layer: np.asarray(evidence[layer].threshold(NETDISSECT_QUANTILE), dtype=np.float32)
        for layer in layers
    }
    t, c = time.perf_counter(), cpu_seconds()
    segs = baseline_read_segmentations(probe)
    seconds["preload"] = time.perf_counter() - t
    seconds["preload_cpu"] = cpu_seconds() - c
    # numba's start-up (its first compiled function in a process, about a second) is paid once
    # by any run, by the tally if not by the table: timed apart, outside the table's clock.
    import scipy.sparse  # noqa: F401

    t = time.perf_counter()
    numba_start_up()
    seconds["numba"] = time.perf_counter() - t
    t, c = time.perf_counter(), cpu_seconds()
    table = build_concept_table(probe)
    seconds["table"] = time.perf_counter() - t
    seconds["table_cpu"] = cpu_seconds() - c
    return World(
        probe=probe,
        layers=tuple(layers),
        maps=maps,
        thresholds=thresholds,
        segs=segs,
        concepts=sorted(probe.concepts(), key=lambda c: c.number),
        table=table,
        seconds=seconds,
    )


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (the table
    build's worker processes, counted once they have exited)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def numba_start_up() -> None:
    """Load numba and the compiled kernels a table build runs (our PNG decoder and the shard
    reduction), compiling them first if this code has not been compiled yet (after an install
    or a code change): build the concept table of a two-image export in a temporary directory.
    Without this, a first run after a code change timed that compilation as part of our table
    build (cold 1.4x instead of 14x at 300 images)."""
    from bench.dissect import build_concept_table
    from bench.probes.broden import BrodenProbe
    from bench.synth.broden_export import write_broden

    with tempfile.TemporaryDirectory(prefix="netdissect-perf-warm-") as d:
        write_broden(d, n_images=2, seed=SEED)
        build_concept_table(BrodenProbe(d), workers=1)


def baseline_decode_png(path: Path) -> np.ndarray:
    """int32 [H, W] label numbers of one segmentation PNG, decoded as NetDissect-Lite's loader
    does (``imread``: PIL, then ``R + 256*G``)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb[:, :, 0].astype(np.int32) + 256 * rgb[:, :, 1].astype(np.int32)


def baseline_read_segmentations(probe: Any) -> list[Any]:
    """Every image's :class:`Segmentation` of a :class:`BrodenProbe`, read in the original's
    style: one PIL decode per PNG listed in ``index.csv``."""
    from bench.probes.base import Segmentation

    out = []
    for row in probe._rows:
        pixel = {
            cat: np.stack([baseline_decode_png(probe.root / "images" / rel) for rel in rels])
            for cat, rels in row.pixel.items()
        }
        out.append(Segmentation(pixel=pixel, image=dict(row.image_labels)))
    return out


def png_decode_floor(probe: Any) -> tuple[float, float]:
    """(wall, CPU) seconds to read and decode every segmentation PNG with our decoder alone (one
    process): the part of a table build no reduction can remove."""
    from bench.probes.broden import decode_segmentation_png

    paths = [probe.root / "images" / rel for row in probe._rows for v in row.pixel.values()
             for rel in v]  # fmt: skip
    decode_segmentation_png(paths[0])  # compiled outside the clock
    t, c = time.perf_counter(), cpu_seconds()
    for path in paths:
        decode_segmentation_png(path)
    return time.perf_counter() - t, cpu_seconds() - c


def pil_upsample(fmap: np.ndarray, seg_size: tuple[int, int]) -> np.ndarray:
    """float32 [sh, sw]: one [h, w] map resized bilinearly by PIL (mode 'F'), as NetDissect-Lite's
    ``imresize(..., mode='F')`` and CompExp's ``Image.fromarray(...).resize(...)``."""
    from PIL import Image

    sh, sw = seg_size
    img = Image.fromarray(np.ascontiguousarray(fmap, dtype=np.float32), mode="F")
    return np.asarray(img.resize((sw, sh), Image.BILINEAR))


def pixel_layers(seg: Any, seg_size: tuple[int, int]) -> np.ndarray:
    """int64 [L, sh * sw]: every pixel label layer of one image, all categories concatenated."""
    sh, sw = seg_size
    layers = [np.asarray(a).reshape(-1, sh * sw) for a in seg.pixel.values()]
    if not layers:
        return np.zeros((0, sh * sw), dtype=np.int64)
    return np.concatenate(layers).astype(np.int64, copy=False)


def scalar_labels(seg: Any) -> list[int]:
    """The image-level label numbers of one image (every category), without repeats."""
    return sorted({int(x) for numbers in seg.image.values() for x in numbers if int(x) > 0})


def counted_layers(pixels: np.ndarray, scalars: list[int]) -> np.ndarray:
    """``pixels`` with the entries that must not be counted zeroed (set semantics): a label that
    an earlier layer already puts on the same pixel, or one that is a whole-image label."""
    out = pixels.copy()
    for k in range(1, len(out)):
        for j in range(k):
            out[k][pixels[k] == pixels[j]] = 0
    if scalars and len(out):
        out[np.isin(out, scalars)] = 0
    return out


# --- the baseline ---------------------------------------------------------------------------


def baseline_tally(
    maps: np.ndarray,
    thresholds: np.ndarray,
    segs: list[Any],
    concepts: list[Any],
    categories: list[str],
    seg_size: tuple[int, int],
) -> dict[str, np.ndarray]:
    """NetDissect-Lite's ``tally_job`` loop over images and units (see the module docstring).

    Returns label-number-indexed ``both`` [U, L], ``labels`` [L], ``units`` [U] and
    ``units_cat`` [U, n_categories], with L = largest label number + 1.
    """
    n, u = maps.shape[:2]
    sh, sw = seg_size
    n_labels = max(c.number for c in concepts) + 1
    cat_index = {c: k for k, c in enumerate(categories)}
    labelcat = np.zeros((n_labels, len(categories)), dtype=np.int64)
    for c in concepts:
        labelcat[c.number, cat_index[c.category]] = 1
    tally_both = np.zeros((u, n_labels), dtype=np.int64)
    tally_labels = np.zeros(n_labels, dtype=np.int64)
    tally_units = np.zeros(u, dtype=np.int64)
    tally_units_cat = np.zeros((u, len(categories)), dtype=np.int64)
    for i in range(n):
        seg = segs[i]
        scalars = scalar_labels(seg)
        pixels = counted_layers(pixel_layers(seg, seg_size), scalars)
        counts = np.bincount(pixels.ravel(), minlength=n_labels)[:n_labels]
        counts[0] = 0
        tally_labels += counts
        for s in scalars:
            tally_labels[s] += sh * sw
        scalar_cat = labelcat[scalars].sum(axis=0) if scalars else 0
        features = maps[i]
        for unit in range(u):
            fmap = features[unit]
            thr = thresholds[unit]
            if not fmap.max() > thr:
                continue
            mask = (pil_upsample(fmap, seg_size) > thr).ravel()
            area = int(np.count_nonzero(mask))
            tally_units[unit] += area
            tally_cat = np.zeros(len(categories), dtype=np.int64) + scalar_cat
            if len(pixels):
                both = np.bincount(pixels[:, mask].ravel(), minlength=n_labels)[:n_labels]
                both[0] = 0
                tally_both[unit] += both
                # Whole-image labels zeroed above are added through ``scalar_cat``; repeats do
                # not change which categories are present.
                tally_cat += both @ labelcat
            for s in scalars:
                tally_both[unit, s] += area
            tally_units_cat[unit] += area * (tally_cat > 0)
    return {
        "both": tally_both,
        "labels": tally_labels,
        "units": tally_units,
        "units_cat": tally_units_cat,
        "labelcat": labelcat,
    }


def baseline_iou(tally: dict[str, np.ndarray]) -> np.ndarray:
    """float64 [U, L] indexed by label number: Lite's IoU (0 where the denominator is 0)."""
    both = tally["both"].astype(np.float64)
    primary = tally["labelcat"].argmax(axis=1)
    den = tally["units_cat"][:, primary] + tally["labels"][None, :] - both
    out = np.zeros_like(both)
    np.divide(both, den, out=out, where=den > 0)
    return out


def baseline_netdissect(world: World, layer: str) -> np.ndarray:
    return baseline_iou(
        baseline_tally(
            world.maps[layer],
            world.thresholds[layer],
            world.segs,
            world.concepts,
            list(world.table.categories),
            world.seg_size,
        )
    )


# --- ours ---------------------------------------------------------------------------------------


def ours_netdissect(world: World, layer: str) -> np.ndarray:
    """float64 [U, C + 1] indexed by concept code."""
    from bench.dissect import netdissect_iou, tally_units

    tally = tally_units(world.maps[layer], world.thresholds[layer], world.table, device="cpu")
    return netdissect_iou(tally, world.table, "lite")


def max_difference(world: World, baseline: np.ndarray, ours: np.ndarray) -> float:
    """Largest |IoU difference| over every unit and concept (codes mapped to label numbers)."""
    numbers = np.array([c.number for c in world.table.concepts], dtype=np.int64)
    ref = np.zeros((baseline.shape[0], len(numbers)), dtype=np.float64)
    inside = numbers < baseline.shape[1]
    ref[:, inside] = baseline[:, numbers[inside]]
    diff = np.abs(ref - ours[:, 1:])
    return float(diff.max()) if diff.size else 0.0


def best_of(repeats: int, fn, *args) -> tuple[float, Any]:
    """(best wall seconds of ``repeats`` calls, the last call's result)."""
    wall, _, out = timed(repeats, fn, *args)
    return wall, out


def timed(repeats: int, fn, *args) -> tuple[float, float, Any]:
    """(best wall seconds, best process CPU seconds: all threads, the last result)."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeats)):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu, out


def compare(world: World, repeats: int = 3) -> list[dict[str, Any]]:
    """Per layer: both times, the active (image, unit) pairs, and the largest IoU difference."""
    rows = []
    for layer in world.layers:
        maps, thr = world.maps[layer], world.thresholds[layer]
        base_s, base_cpu, base = timed(1, baseline_netdissect, world, layer)
        ours_s, ours_cpu, ours = timed(repeats, ours_netdissect, world, layer)
        rows.append(
            {
                "layer": layer,
                "units": int(maps.shape[1]),
                "map": tuple(int(x) for x in maps.shape[2:]),
                "active": int((maps.max(axis=(2, 3)) > thr).sum()),
                "baseline_s": base_s,
                "ours_s": ours_s,
                "baseline_cpu": base_cpu,
                "ours_cpu": ours_cpu,
                "max_diff": max_difference(world, base, ours),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.netdissect_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=images_from_env(), help="probe size")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (ours)")
    args = parser.parse_args([] if argv is None else argv)
    import torch

    from bench.dissect import SHARD_IMAGES, build_concept_table, table_workers

    with tempfile.TemporaryDirectory(prefix="perf-netdissect-") as tmp:
        world = make_world(tmp, args.images, RUN_LAYERS)
        sh, sw = world.seg_size
        print(
            f"synthetic Broden export (seed {SEED}): {world.n_images} images, segmentations "
            f"{sh}x{sw}, {world.table.num_concepts} concepts in {len(world.table.categories)} "
            f"categories ({', '.join(world.table.categories)}), {world.table.num_signatures} "
            f"signatures; target synth.resnet, layers "
            + ", ".join(f"{la} ({world.maps[la].shape[1]} units)" for la in world.layers)
            + f"; torch {torch.__version__}, {torch.get_num_threads()} threads",
            flush=True,
        )
        s = world.seconds
        workers = table_workers(shards=-(-world.n_images // SHARD_IMAGES))
        print(
            f"setup: export {s['export']:.2f} s, record {s['record']:.2f} s, baseline decode of "
            f"every segmentation (PIL) {s['preload']:.2f} s, numba start-up {s['numba']:.2f} s "
            f"(once per process), our concept table {s['table']:.2f} s ("
            + ("in this process" if workers == 1 else f"{workers} worker processes")
            + "; built once per probe set, then cached)",
            flush=True,
        )
        # The table again with another number of workers: the same table, and its time.
        other_workers = 2 if workers == 1 else 1
        t, c = time.perf_counter(), cpu_seconds()
        other = build_concept_table(world.probe, workers=other_workers)
        other_s, other_cpu = time.perf_counter() - t, cpu_seconds() - c
        same_table = tables_equal(other, world.table)
        floor_s, floor_cpu = png_decode_floor(world.probe)
        rows = compare(world, args.repeats)
    print(
        f"{'layer':8s} {'units':>5s} {'map':>7s} {'active pairs':>12s} {'baseline s':>10s} "
        f"{'ours s':>8s} {'ratio':>7s} {'max|dIoU|':>10s}"
    )
    for r in rows:
        print(
            f"{r['layer']:8s} {r['units']:5d} {'x'.join(map(str, r['map'])):>7s} "
            f"{r['active']:12d} {r['baseline_s']:10.3f} {r['ours_s']:8.3f} "
            f"{r['baseline_s'] / r['ours_s']:6.1f}x {r['max_diff']:10.2e}"
        )
    base = sum(r["baseline_s"] for r in rows)
    ours = sum(r["ours_s"] for r in rows)
    table_s = s["table"]
    decode_s = s["preload"]
    n_layers = len(rows)
    warm = base / ours
    cold_base = base + n_layers * decode_s
    cold_ours = ours + table_s
    cold = cold_base / cold_ours
    cold_once = (base + decode_s) / cold_ours
    cold_start = cold_base / (cold_ours + s["numba"])
    base_cpu = sum(r["baseline_cpu"] for r in rows)
    ours_cpu = sum(r["ours_cpu"] for r in rows)
    cold_base_cpu = base_cpu + n_layers * s["preload_cpu"]
    cold_ours_cpu = ours_cpu + s["table_cpu"]
    print(
        f"total: baseline tally {base:.3f} s, ours {ours:.3f} s (tally + IoU, best of "
        f"{args.repeats}); baseline PNG decode {decode_s:.3f} s per pass; our concept table "
        f"{table_s:.3f} s ({workers} worker{'s' if workers > 1 else ''}, CPU "
        f"{s['table_cpu']:.3f} s), {other_s:.3f} s ({other_workers} worker"
        f"{'s' if other_workers > 1 else ''}, CPU {other_cpu:.3f} s; identical: "
        f"{'yes' if same_table else 'NO'})"
    )
    print(
        f"warm (table cached)  baseline/ours: {warm:6.1f}x  (target >= {TARGET_RATIO:.0f}x)  "
        f"{'ok' if warm >= TARGET_RATIO else 'MISSED'}"
    )
    print(
        f"cold (table built)   baseline/ours: {cold:6.1f}x  (target >= {COLD_TARGET_RATIO:.0f}x)"
        f"  {'ok' if cold >= COLD_TARGET_RATIO else 'MISSED'}  [baseline {cold_base:.3f} s: "
        f"{n_layers} layers, each decoding every PNG as the original does; ours "
        f"{cold_ours:.3f} s]"
    )
    print(
        f"cold in CPU time (user + sys, worker processes included): baseline "
        f"{cold_base_cpu:.3f} s, ours {cold_ours_cpu:.3f} s, {cold_base_cpu / cold_ours_cpu:.1f}x"
        f"; warm in CPU time {base_cpu / ours_cpu:.1f}x  [steadier than wall time when the "
        "machine is shared]"
    )
    print(
        f"cold, baseline decoding once for all layers: {cold_once:.1f}x; cold, numba start-up "
        f"({s['numba']:.2f} s) charged to ours: {cold_start:.1f}x  [stricter; information: "
        "fixed costs weigh less on larger probe sets]"
    )
    print(
        f"PNG read + decode alone with our decoder, one process: {floor_s:.3f} s (CPU "
        f"{floor_cpu:.3f} s) = {100 * floor_cpu / max(s['table_cpu'], 1e-9):.0f}% of the table "
        f"build's CPU time (the PIL decode of the baseline: {decode_s:.3f} s); a table build "
        f"that only decoded, in one process, would make cold "
        f"{cold_base / (ours + floor_s):.1f}x (wall)"
    )
    worst = max(r["max_diff"] for r in rows)
    same = worst <= IOU_TOLERANCE and same_table
    print(
        f"equality: max |IoU difference| over all units and concepts {worst:.2e} "
        f"(tolerance {IOU_TOLERANCE:.0e}); the {other_workers}-worker table equals the "
        f"{workers}-worker one: "
        f"{'yes' if same_table else 'NO'}  {'ok' if same else 'FAILED'}",
        flush=True,
    )
    return 0 if same else 1


def tables_equal(a: Any, b: Any) -> bool:
    """Whether two concept tables hold the same signatures, pixel by pixel."""
    return bool(
        np.array_equal(np.asarray(a.sig), np.asarray(b.sig))
        and np.array_equal(a.pixels, b.pixels)
        and (a.members != b.members).nnz == 0
        and np.array_equal(a.sig_categories, b.sig_categories)
        and np.array_equal(a.image_categories, b.image_categories)
        and np.array_equal(a.whole_image_categories, b.whole_image_categories)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
