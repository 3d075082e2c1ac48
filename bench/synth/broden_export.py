"""Write synthetic scenes as a probe set in the real Broden directory format.

Layout (``/work/shared/reference/formats.md``; NetDissect's ``joinseg.py`` documents the same)::

    index.csv        image,split,ih,iw,sh,sw,color,object,pattern,material,scene
    label.csv        number,name,category,frequency,coverage,syns
    category.csv     name,first,last,count,frequency
    c_<category>.csv code,number,name,frequency,coverage
    images/synth/000000.png            the RGB image (lossless)
    images/synth/000000_<category>.png its labels, number = R + 256 * G (0: unlabelled)

Pixel categories (``color``, ``object``, ``pattern``, ``material``) are PNG paths relative to
``images/``, left empty where the image has no label of that category, as Broden does; ``scene``
is an image-level label number. Label numbers are the catalogue's (:mod:`bench.synth.concepts`),
so every export numbers concepts the same way; every catalogue concept is listed in
``label.csv``. ``frequency`` counts images, ``coverage`` sums the fraction of each image covered
(1 per image for scenes). Splits: every fifth image is ``val``, the others ``train``.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.errors import UsageError
from bench.synth import concepts as C
from bench.synth import world as W

log = logging.getLogger(__name__)

#: Bump when the exported files change for the same scenes.
EXPORT_VERSION = 1
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw", *C.CATEGORIES)


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """int [H, W] label numbers -> uint8 [H, W, 3] with number = R + 256 * G."""
    lab = np.asarray(labels, dtype=np.int64)
    if lab.min(initial=0) < 0 or lab.max(initial=0) >= 1 << 16:
        raise UsageError(f"Expected label numbers in 0..65535, got {lab.min()}..{lab.max()}.")
    out = np.zeros((*lab.shape, 3), dtype=np.uint8)
    out[..., 0] = lab % 256
    out[..., 1] = lab // 256
    return out


def decode_labels(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W, 4]) -> int32 [H, W] label numbers (R + 256 * G)."""
    a = np.asarray(rgb)
    return a[..., 0].astype(np.int32) + 256 * a[..., 1].astype(np.int32)


def write_broden(
    directory: str | os.PathLike[str],
    *,
    n_images: int,
    seed: int,
    size: int = W.DEFAULT_SIZE,
    color_weights: Mapping[str, float] | None = None,
) -> Path:
    """Write the export into the existing, empty ``directory`` (not atomic: see
    :func:`export_broden`). Scene ``i`` is scene ``i`` of world ``seed`` (drawn with
    ``color_weights``, see :func:`bench.synth.world.sample_scene`)."""
    from PIL import Image

    if n_images < 1:
        raise UsageError(f"Expected n_images >= 1, got {n_images}.")
    root = Path(directory)
    img_dir = root / "images" / "synth"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_concepts = len(C.CATALOGUE)
    # [number, category] image counts and coverage sums.
    freq = np.zeros((n_concepts + 1, len(C.CATEGORIES)), dtype=np.int64)
    cover = np.zeros((n_concepts + 1, len(C.CATEGORIES)), dtype=np.float64)
    rows = []
    for i in range(n_images):
        r = W.render(W.sample_scene(W.scene_rng(seed, i), color_weights=color_weights), size)
        stem = f"synth/{i:06d}"
        Image.fromarray(r.image).save(root / "images" / f"{stem}.png", compress_level=1)
        row = {
            "image": f"{stem}.png",
            "split": "val" if i % 5 == 4 else "train",
            "ih": size,
            "iw": size,
            "sh": size,
            "sw": size,
        }
        for j, cat in enumerate(C.PIXEL_CATEGORIES):
            lab = r.labels[cat]
            counts = np.bincount(lab.ravel(), minlength=n_concepts + 1)
            present = np.flatnonzero(counts[1:]) + 1
            if present.size == 0:
                row[cat] = ""
                continue
            freq[present, j] += 1
            cover[present, j] += counts[present] / lab.size
            rel = f"{stem}_{cat}.png"
            Image.fromarray(encode_labels(lab)).save(root / "images" / rel, compress_level=1)
            row[cat] = rel
        j_scene = C.CATEGORIES.index("scene")
        freq[r.scene_label, j_scene] += 1
        cover[r.scene_label, j_scene] += 1.0
        row["scene"] = str(r.scene_label)
        rows.append(row)

    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        index = csv.DictWriter(f, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
        index.writeheader()
        index.writerows(rows)

    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for c in C.CATALOGUE:
            j = C.CATEGORIES.index(c.category)
            w.writerow(
                [
                    c.number,
                    c.raw_name,
                    f"{c.category}({freq[c.number, j]})",
                    int(freq[c.number].sum()),
                    f"{cover[c.number].sum():f}",
                    "",
                ]
            )

    with open(root / "category.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "first", "last", "count", "frequency"])
        for j, cat in enumerate(C.CATEGORIES):
            nums = [C.number(v) for v in C.values(cat)]
            w.writerow([cat, min(nums), max(nums), len(nums), int(freq[nums, j].sum())])

    for j, cat in enumerate(C.CATEGORIES):
        with open(root / f"c_{cat}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, name in enumerate(C.values(cat), start=1):
                c = C.concept(name)
                w.writerow(
                    [code, c.number, c.raw_name, int(freq[c.number, j]), f"{cover[c.number, j]:f}"]
                )
    log.info("wrote a synthetic Broden set of %d images to %s", n_images, root)
    return root


def export_broden(
    directory: str | os.PathLike[str],
    *,
    n_images: int,
    seed: int,
    size: int = W.DEFAULT_SIZE,
    color_weights: Mapping[str, float] | None = None,
) -> Path:
    """Export scenes ``0..n_images-1`` of world ``seed`` as a Broden directory at ``directory``.

    Written into a temporary sibling directory and renamed into place, so a reader never sees
    half an export. ``directory`` must not exist or be empty.
    """
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(
            f"Expected a new or empty directory to export into, got {target} "
            "with files in it; pick another directory or remove it."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_broden(tmp, n_images=n_images, seed=seed, size=size, color_weights=color_weights)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
