"""MILAN's exemplars (reference/methods.md 1.2), computed from the shared evidence.

For each unit, its ``k = 15`` top probe images by spatial max (``LayerEvidence.top("max")``),
each with a binary mask of where the unit fires strongly:

- ``images``  uint8 ``[U, k, 3, H, W]``: the probe images as the target saw them, after its
  preprocessing's resize and centre crop (or the plain resize of ``fixed_geometry`` probes),
  before normalisation. ``H = W`` is the target's input size.
- ``masks``   uint8 ``[U, k, 1, H, W]``, 0/1: the unit's activation map at that image, upsampled
  to ``H x W`` with ``F.interpolate(mode="bilinear", align_corners=False)``, strictly above the
  unit's 0.99 quantile over every spatial position of every probe image at the layer's native
  resolution (:data:`bench.evidence.MILAN_QUANTILE`, recorded with the evidence).

Deviation from the original (reference 1.2): MILAN upsamples with ``grid_sample`` (bilinear,
``padding_mode="zeros"``, ``align_corners=True``) on a half-pixel-centred grid. Inside the image
that equals ``F.interpolate(bilinear, align_corners=False)`` to float precision, but within about
half an upsampling factor (``H / h / 2`` pixels) of the border the original blends towards zero
padding, while ``F.interpolate`` replicates the edge value. Our masks can therefore be slightly
larger along image borders where a unit fires at the edge of its map; they are identical
elsewhere.

Work is done in chunks of units sized by ``memory_budget`` (the float32 upsampled maps dominate),
each probe image is loaded and preprocessed once per chunk (plus a small cache across chunks),
and :func:`write_exemplars` streams a layer into the MILANNOTATIONS files (``ids.csv``,
``masks.npy``, ``images.npy``) through memory maps, so nothing holds a whole layer in memory.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import RequirementError, UsageError
from bench.evidence import MILAN_QUANTILE, QuantileSpec
from bench.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np

    from bench.evidence import Evidence, LayerEvidence
    from bench.probes.base import ProbeSet
    from bench.targets import Preprocessing

log = logging.getLogger(__name__)

#: Bump when the exemplars computed from the same evidence change (part of cache keys).
EXEMPLARS_VERSION = "1"
#: MILAN's number of exemplars per unit (``compute(k=15)``).
DEFAULT_K = 15
#: Bytes of working memory per chunk of units (upsampled float32 maps, images and masks).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Preprocessed probe images kept across chunks (each is ``3 * H * W`` bytes).
VIEW_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True, kw_only=True, slots=True)
class Exemplars:
    """Exemplars of some units of one layer (U units, k exemplars each, H x W images).

    ``units`` int64 [U] unit indices (0-based); ``ids`` int64 [U, k] probe indices, best first;
    ``activations`` float32 [U, k] their spatial max; ``thresholds`` float32 [U] the mask
    threshold of each unit; ``images`` uint8 [U, k, 3, H, W]; ``masks`` uint8 [U, k, 1, H, W].
    """

    layer: str
    units: np.ndarray
    ids: np.ndarray
    activations: np.ndarray
    thresholds: np.ndarray
    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.units)


# --- the functional core ----------------------------------------------------------------------


def upsample_masks(
    maps: np.ndarray, thresholds: np.ndarray, size: tuple[int, int] | int
) -> np.ndarray:
    """MILAN's exemplar masks: ``maps`` float32 [U, k, h, w] bilinearly upsampled to ``size``
    (``align_corners=False``) and compared with ``thresholds`` [U] (strictly greater).

    Returns uint8 0/1 ``[U, k, 1, H, W]``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    out_h, out_w = (size, size) if isinstance(size, int) else size
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4:
        raise UsageError(f"Expected activation maps [U, k, h, w], got shape {maps.shape}.")
    u, k, h, w = maps.shape
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    if thr.shape[0] != u:
        raise UsageError(f"Expected {u} thresholds (one per unit), got {thr.shape[0]}.")
    x = torch.from_numpy(np.ascontiguousarray(maps)).reshape(u * k, 1, h, w)
    if (h, w) != (out_h, out_w):
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    x = x.reshape(u, k, 1, out_h, out_w)
    masks = x > torch.from_numpy(thr).view(u, 1, 1, 1, 1)
    return masks.to(torch.uint8).numpy()


def target_view(
    probe: ProbeSet,
    indices: Sequence[int] | np.ndarray,
    preprocessing: Preprocessing,
    *,
    fixed_geometry: bool | None = None,
) -> np.ndarray:
    """Probe images ``indices`` as the target saw them: uint8 ``[n, 3, S, S]``.

    The image goes through ``preprocessing.transform`` exactly as the recorder fed it to the
    target (same resize, crop and interpolation) and the normalisation is undone, so the pixels
    are the resized image's own values. ``fixed_geometry`` defaults to the probe's.
    """
    import numpy as np
    import torch

    fixed = bool(probe.fixed_geometry) if fixed_geometry is None else fixed_geometry
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
    size = preprocessing.input_size
    out = np.empty((len(indices), 3, size, size), dtype=np.uint8)
    for j, i in enumerate(indices):
        x = preprocessing.transform(probe.load_image(int(i)), fixed_geometry=fixed)
        # transform computes (v / 255 - mean) / std in float32; inverting it is exact to 1e-4
        # of a grey level, so rounding recovers the resized image's uint8 value.
        v = (x * std + mean).mul_(255.0).round_().clamp_(0, 255)
        out[j] = v.to(torch.uint8).numpy()
    return out


# --- from evidence ------------------------------------------------------------------------------


def _resolve(
    evidence: Evidence, layer: str, preprocessing: Preprocessing | None
) -> tuple[LayerEvidence, Preprocessing]:
    ev = evidence.layer(layer)
    if preprocessing is None:
        if evidence.target is None:
            raise RequirementError(
                "Exemplars need the target's preprocessing (to show the images as the target "
                "saw them), but this evidence has no target; pass preprocessing=..."
            )
        preprocessing = evidence.target.preprocessing
    return ev, preprocessing


def _thresholds(ev: LayerEvidence, quantile: QuantileSpec) -> np.ndarray:
    if quantile.key not in ev.thresholds:
        raise RequirementError(
            f"Exemplar masks need the per-unit quantile {quantile.key} of layer '{ev.layer}', "
            f"but the evidence holds {sorted(ev.thresholds) or 'none'}; record with "
            f"quantiles including it (bench.evidence.MILAN_QUANTILE for MILAN)."
        )
    return ev.thresholds[quantile.key]


def _units(ev: LayerEvidence, units: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """The layer's unit indices asked for (default: every recorded unit)."""
    import numpy as np

    if units is None:
        return ev.recorded_units
    arr = np.asarray(units, dtype=np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= ev.num_units)]
    if bad.size:
        raise UsageError(
            f"Layer '{ev.layer}' has {ev.num_units} units (0-{ev.num_units - 1}); "
            f"got unit {int(bad[0])}."
        )
    return arr


def chunk_size(k: int, size: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Units per chunk so that a chunk's arrays stay within ``memory_budget`` bytes.

    Per unit: float32 upsampled maps (4 bytes), the mask comparison (1), uint8 images (3) and
    masks (1) for each of its ``k`` exemplars of ``size x size`` pixels.
    """
    per_unit = 9 * k * size * size
    return max(1, int(memory_budget // per_unit))


class ProbeViews:
    """Probe images as a target sees them (uint8 [3, S, S], :func:`target_view`), kept by probe
    index up to ``max_bytes`` (least recently used dropped first). Pass one to several calls of
    :func:`iter_exemplars` (layers, targets with the same preprocessing) to load each image once.
    """

    def __init__(
        self, probe: ProbeSet, preprocessing: Preprocessing, max_bytes: int = VIEW_CACHE_BYTES
    ):
        self.probe = probe
        self.preprocessing = preprocessing
        s = preprocessing.input_size
        self.capacity = max(0, max_bytes // (3 * s * s))
        self.store: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        import numpy as np

        wanted = [int(i) for i in np.unique(indices)]
        missing = [i for i in wanted if i not in self.store]
        fresh = dict(
            zip(missing, target_view(self.probe, missing, self.preprocessing), strict=True)
        )
        out = {}
        for i in wanted:
            if i in fresh:
                out[i] = fresh[i]
                if self.capacity:
                    self.store[i] = fresh[i]
            else:
                out[i] = self.store[i]
                self.store.move_to_end(i)
        while len(self.store) > self.capacity:
            self.store.popitem(last=False)
        return out


def iter_exemplars(
    evidence: Evidence,
    layer: str,
    units: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = DEFAULT_K,
    quantile: QuantileSpec = MILAN_QUANTILE,
    preprocessing: Preprocessing | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    views: ProbeViews | None = None,
    progress: bool = False,
) -> Iterator[Exemplars]:
    """Exemplars of ``units`` (default: every recorded unit) of ``layer``, in chunks of units.

    ``evidence`` must hold the layer's top-k by max with at least ``k`` images (fewer only when
    the probe set has fewer images) and the quantile ``quantile``. The images are
    ``evidence.probe``'s, seen through ``preprocessing`` (default: the evidence's target's).
    """
    import numpy as np

    ev, prep = _resolve(evidence, layer, preprocessing)
    if k < 1:
        raise UsageError(f"Expected k >= 1 exemplars, got {k}.")
    top = ev.top("max")
    recorded = top.indices.shape[1]
    if recorded < k and recorded < len(evidence.probe):
        raise RequirementError(
            f"Expected at least {k} top images per unit in layer '{layer}', but the evidence "
            f"recorded {recorded}; record with k >= {k}."
        )
    k_eff = min(k, recorded)
    thresholds = _thresholds(ev, quantile)
    chosen = _units(ev, units)
    rows_of = ev.rows(chosen)  # rows of the evidence arrays (a subset recording's order)
    size = prep.input_size
    step = chunk_size(k_eff, size, memory_budget)
    if views is None:
        views = ProbeViews(evidence.probe, prep, min(VIEW_CACHE_BYTES, memory_budget))
    elif views.probe is not evidence.probe or views.preprocessing != prep:
        raise UsageError(
            "Expected ProbeViews of the evidence's probe set and preprocessing, got views of "
            f"another ({views.preprocessing} on '{views.probe.name}')."
        )
    with progress_bar(
        total=len(chosen), desc=f"exemplars {layer}", enabled=progress, unit="unit"
    ) as bar:
        for start in range(0, len(chosen), step):
            part = chosen[start : start + step]
            rows = rows_of[start : start + step]
            ids = np.asarray(top.indices[rows, :k_eff], dtype=np.int64)
            masks = upsample_masks(top.maps[rows, :k_eff], thresholds[rows], size)
            found = views.get(ids)
            images = np.empty((len(part), k_eff, 3, size, size), dtype=np.uint8)
            for (a, b), i in np.ndenumerate(ids):
                images[a, b] = found[int(i)]
            yield Exemplars(
                layer=layer,
                units=part.copy(),
                ids=ids,
                activations=np.asarray(top.values[rows, :k_eff], dtype=np.float32),
                thresholds=np.asarray(thresholds[rows], dtype=np.float32),
                images=images,
                masks=masks,
            )
            bar.update(len(part))


def compute_exemplars(
    evidence: Evidence,
    layer: str,
    units: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = DEFAULT_K,
    quantile: QuantileSpec = MILAN_QUANTILE,
    preprocessing: Preprocessing | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    views: ProbeViews | None = None,
    progress: bool = False,
) -> Exemplars:
    """All of :func:`iter_exemplars` in one :class:`Exemplars` (for a moderate number of units:
    a unit's arrays take ``4 * k * H * W`` bytes, 3 MB at 224 px)."""
    import numpy as np

    parts = list(
        iter_exemplars(
            evidence,
            layer,
            units,
            k=k,
            quantile=quantile,
            preprocessing=preprocessing,
            memory_budget=memory_budget,
            views=views,
            progress=progress,
        )
    )
    if len(parts) == 1:
        return parts[0]
    if not parts:  # no units asked for: empty arrays of the right shapes
        ev, prep = _resolve(evidence, layer, preprocessing)
        kk, s = min(k, ev.top("max").indices.shape[1]), prep.input_size
        return Exemplars(
            layer=layer,
            units=np.zeros(0, dtype=np.int64),
            ids=np.zeros((0, kk), dtype=np.int64),
            activations=np.zeros((0, kk), dtype=np.float32),
            thresholds=np.zeros(0, dtype=np.float32),
            images=np.zeros((0, kk, 3, s, s), dtype=np.uint8),
            masks=np.zeros((0, kk, 1, s, s), dtype=np.uint8),
        )
    return Exemplars(
        layer=layer,
        units=np.concatenate([p.units for p in parts]),
        ids=np.concatenate([p.ids for p in parts]),
        activations=np.concatenate([p.activations for p in parts]),
        thresholds=np.concatenate([p.thresholds for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
    )


# --- the MILANNOTATIONS layer files -------------------------------------------------------------


def write_ids_csv(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """``ids.csv`` as MILAN writes it: one row per unit, its k probe indices, no header."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        for row in ids:
            f.write(",".join(str(int(v)) for v in row))
            f.write("\n")


def write_exemplars(
    directory: str | os.PathLike[str],
    evidence: Evidence,
    layer: str,
    *,
    k: int = DEFAULT_K,
    quantile: QuantileSpec = MILAN_QUANTILE,
    preprocessing: Preprocessing | None = None,
    images: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    views: ProbeViews | None = None,
    progress: bool = False,
) -> Path:
    """Write every unit's exemplars of ``layer`` into ``directory`` in the MILANNOTATIONS layout
    (``ids.csv``, ``masks.npy`` and, with ``images``, ``images.npy``; row i is unit i).

    The arrays are streamed into ``.npy`` memory maps chunk by chunk. Returns ``directory``.
    """
    import numpy as np

    out = Path(directory)
    ev, prep = _resolve(evidence, layer, preprocessing)
    if not ev.whole:
        raise RequirementError(
            f"The MILANNOTATIONS layout has a row for every unit of layer '{layer}', but the "
            f"evidence holds {len(ev.recorded_units)} of its {ev.num_units} units; record the "
            "whole layer."
        )
    out.mkdir(parents=True, exist_ok=True)
    k_eff = min(k, ev.top("max").indices.shape[1])
    s = prep.input_size
    n = ev.num_units
    masks_mm = np.lib.format.open_memmap(
        out / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, k_eff, 1, s, s)
    )
    images_mm = None
    if images:
        images_mm = np.lib.format.open_memmap(
            out / "images.npy", mode="w+", dtype=np.uint8, shape=(n, k_eff, 3, s, s)
        )
    ids = np.zeros((n, k_eff), dtype=np.int64)
    for part in iter_exemplars(
        evidence,
        layer,
        None,
        k=k,
        quantile=quantile,
        preprocessing=prep,
        memory_budget=memory_budget,
        views=views,
        progress=progress,
    ):
        lo, hi = int(part.units[0]), int(part.units[-1]) + 1
        masks_mm[lo:hi] = part.masks
        if images_mm is not None:
            images_mm[lo:hi] = part.images
        ids[lo:hi] = part.ids
    masks_mm.flush()
    del masks_mm
    if images_mm is not None:
        images_mm.flush()
        del images_mm
    write_ids_csv(out / "ids.csv", ids)
    return out
