"""Exemplar strips: a unit's top probe images with the regions where it fires outlined.

One PNG per unit, ``<run_dir>/exemplars/<layer>-<index>.png``, shared by every suite of the run
and referenced from each :class:`~bench.results.UnitResult` as ``../exemplars/<file>`` (relative
to ``<run_dir>/suites/<suite>.json``). The images and masks are MILAN's exemplars
(:func:`bench.exemplars.compute_exemplars`: the top images by spatial max, masks above the
unit's 0.99 quantile), computed from the run's recorded evidence: strips are drawn only when
that evidence is still in the cache (nothing is re-recorded for a picture), and a strip on disk
is reused. Tiles are about :data:`TILE` pixels (small images are enlarged by an integer factor
with nearest-neighbour sampling, large ones reduced), the outline is drawn on the tile.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.schema import UnitRef, atomic_write

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache
    from bench.evidence import Evidence

log = logging.getLogger(__name__)

EXEMPLARS_DIR = "exemplars"
TILE = 112
GAP = 2
#: Cyan: a colour the synthetic world never paints, and rare in photographs.
OUTLINE_RGB = (0, 255, 255)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def strip_file(unit: UnitRef) -> str:
    """The strip's file name: ``<layer>-<index>.png``, the layer made file-name safe (with a
    short hash when it had to be changed, so two layers never share a file)."""
    layer = _UNSAFE.sub("_", unit.layer)
    if layer != unit.layer or layer.startswith("."):
        digest = hashlib.sha256(unit.layer.encode("utf-8")).hexdigest()[:8]
        layer = f"{layer.lstrip('.') or 'layer'}~{digest}"
    return f"{layer}-{unit.index}.png"


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """bool ``[H, W]``: pixels of ``mask`` with a 4-neighbour outside it (or on the image
    border), grown inwards to ``width`` pixels."""
    import numpy as np

    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~inner


def _tile(image: np.ndarray, mask: np.ndarray, tile: int) -> np.ndarray:
    """uint8 ``[T, T, 3]`` of ``image`` (``[3, H, W]``) with ``mask`` (``[1, H, W]``) outlined."""
    import numpy as np
    from PIL import Image

    img = np.ascontiguousarray(np.transpose(image, (1, 2, 0)))
    m = np.asarray(mask).reshape(mask.shape[-2:]).astype(bool)
    h = img.shape[0]
    if h < tile:
        f = max(1, round(tile / h))
        img = np.repeat(np.repeat(img, f, axis=0), f, axis=1)
        m = np.repeat(np.repeat(m, f, axis=0), f, axis=1)
    elif h > tile:
        size = (tile, tile)
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size)) > 127
    out = img.copy()
    out[outline(m, width=2 if out.shape[0] >= 96 else 1)] = OUTLINE_RGB
    return out


def strip_png(images: np.ndarray, masks: np.ndarray, *, tile: int = TILE) -> bytes:
    """PNG bytes of exemplars side by side: ``images`` uint8 ``[k, 3, H, W]``, ``masks`` uint8
    0/1 ``[k, 1, H, W]``. Deterministic: the same arrays give the same bytes."""
    import numpy as np
    from PIL import Image

    tiles = [_tile(i, m, tile) for i, m in zip(images, masks, strict=True)]
    t = tiles[0].shape[0]
    width = len(tiles) * t + (len(tiles) - 1) * GAP
    canvas = np.full((t, width, 3), 255, dtype=np.uint8)
    for j, part in enumerate(tiles):
        x = j * (t + GAP)
        canvas[:, x : x + t] = part
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def images_strip_png(images: Sequence[np.ndarray], *, tile: int = TILE) -> bytes:
    """PNG bytes of ``images`` (uint8 ``[H, W, 3]`` each, one size) side by side, :data:`GAP`
    pixels apart: kept at their size up to ``tile`` pixels (a page may enlarge them), reduced
    to ``tile`` above it. Deterministic: the same arrays give the same bytes."""
    import numpy as np
    from PIL import Image

    if not images:
        raise ValueError("Expected at least one image for a strip, got none.")
    tiles = []
    for im in images:
        arr = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
        if arr.shape[0] > tile or arr.shape[1] > tile:
            img = Image.fromarray(arr).resize((tile, tile), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
        tiles.append(arr)
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("Expected images of one size in a strip.")
    canvas = np.full((h, len(tiles) * w + (len(tiles) - 1) * GAP, 3), 255, dtype=np.uint8)
    for j, part in enumerate(tiles):
        canvas[:, j * (w + GAP) : j * (w + GAP) + w] = part
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class RunExemplars:
    """Writes (or finds) the strips of a run's units; call with units, get relative paths."""

    def __init__(
        self,
        run_dir: Path,
        state: dict[str, Any],
        cache: Cache,
        *,
        count: int = 6,
        progress: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.state = state
        self.cache = cache
        self.count = count
        self.progress = progress
        self._evidence: Evidence | None = None
        self._tried = False

    def path(self, unit: UnitRef) -> Path:
        return self.run_dir / EXEMPLARS_DIR / strip_file(unit)

    def __call__(self, units: Sequence[UnitRef]) -> dict[UnitRef, str]:
        missing = [u for u in units if not self.path(u).is_file()]
        if missing:
            self._write(missing)
        return {u: f"../{EXEMPLARS_DIR}/{strip_file(u)}" for u in units if self.path(u).is_file()}

    def _load(self) -> Evidence | None:
        if self._tried:
            return self._evidence
        self._tried = True
        try:
            self._evidence = self._load_evidence()
        except BenchError as e:
            log.warning("No exemplar strips for %s: %s", self.run_dir, e)
        return self._evidence

    def _load_evidence(self) -> Evidence | None:
        from bench.probes import load_probe
        from bench.record import cached_run_evidence
        from bench.targets import load_target

        config = self.state.get("config") or {}
        layers = list(config.get("layers") or [])
        if not layers or not config.get("target") or not config.get("probe"):
            return None
        target = load_target(
            config["target"], weights=config.get("weights"), download=False, cache=self.cache
        )
        probe = load_probe(
            config["probe"],
            config.get("probe_root"),
            options=config.get("probe_options") or {},
            cache=self.cache,
        )
        evidence = cached_run_evidence(self.cache, target, probe, layers, config)
        if evidence is None:
            log.info(
                "The run's recorded evidence is no longer in %s; no new exemplar strips.",
                self.cache.root,
            )
        return evidence

    def _write(self, units: Sequence[UnitRef]) -> None:
        from bench.exemplars import compute_exemplars
        from bench.progress import progress_bar

        evidence = self._load()
        if evidence is None:
            return
        by_layer: dict[str, list[int]] = {}
        recorded = {name: set(le.recorded_units.tolist()) for name, le in evidence.layers.items()}
        for u in units:  # only units the run recorded (all of them, or its --units)
            if u.index in recorded.get(u.layer, ()):
                by_layer.setdefault(u.layer, []).append(u.index)
        out_dir = self.run_dir / EXEMPLARS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        with progress_bar(
            total=sum(len(v) for v in by_layer.values()),
            desc="exemplar strips",
            enabled=self.progress,
        ) as bar:
            for layer, indices in by_layer.items():
                ex = compute_exemplars(evidence, layer, indices, k=self.count)
                for j, index in enumerate(ex.units.tolist()):
                    data = strip_png(ex.images[j], ex.masks[j])
                    dest = self.path(UnitRef(layer=layer, index=int(index)))
                    atomic_write(dest, data, fsync=False)
                    bar.update(1)
