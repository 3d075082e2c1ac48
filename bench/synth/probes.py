"""Probe sets of the synthetic world.

- :func:`synthetic_probe`: scenes with per-pixel concept labels, exported once in the Broden
  format into the content-addressed cache and read back with the real Broden loader, so the
  default run exercises the same code path as real Broden.
- :func:`synthetic_heldout_probe`: single-label images of ten broad concept classes (the
  offline stand-in for CIFAR), generated in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.probes.base import ProbeSet

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from bench.cache import Cache

log = logging.getLogger(__name__)

#: Default world seed of the synthetic Broden probe (distinct from the targets' training seeds
#: and from their evaluation seed, so dissection runs on images no target was trained on).
PROBE_SEED = 271_828
#: 2000 images: recording every default layer of a synthetic target takes a few seconds.
PROBE_IMAGES = 2000
HELDOUT_IMAGES = 1000
#: Relative frequency of some object colours in the probe (1 for the others). Real probe sets
#: have a long tail of rare concepts; here three colours are rare (about 0.3% of the probe's
#: pixels each, against 1.5% for the others), so a unit for a disjunction of two of them covers
#: about the share of positions a dissection reads (its top 0.5%). The targets train on the
#: uniform world.
PROBE_COLOR_WEIGHTS: dict[str, float] = {"purple": 0.12, "orange": 0.12, "black": 0.12}


def synthetic_probe(
    root: str | Path | None = None,
    *,
    download: bool = False,
    n_images: int = PROBE_IMAGES,
    seed: int = PROBE_SEED,
    size: int = 64,
    cache: Cache | None = None,
    **options: Any,
) -> ProbeSet:
    """The synthetic Broden set (scenes ``0..n_images-1`` of world ``seed``).

    Exported on first use into ``cache`` (stage ``synth-broden``; ``root`` overrides the cache
    directory), then loaded with :class:`bench.probes.broden.BrodenProbe` (``options`` such as
    ``categories`` go to it). ``download`` is accepted for the factory signature; nothing is
    ever downloaded.
    """
    from bench.cache import Cache
    from bench.probes.broden import BrodenProbe
    from bench.synth.broden_export import EXPORT_VERSION, write_broden
    from bench.synth.world import GENERATOR_VERSION

    if n_images < 1:
        raise UsageError(f"Expected n_images >= 1, got {n_images}.")
    parts = {
        "generator_version": GENERATOR_VERSION,
        "export_version": EXPORT_VERSION,
        "n_images": int(n_images),
        "seed": int(seed),
        "size": int(size),
        "color_weights": dict(sorted(PROBE_COLOR_WEIGHTS.items())),
    }

    def write(directory: Path) -> None:
        write_broden(
            directory,
            n_images=int(n_images),
            seed=int(seed),
            size=int(size),
            color_weights=PROBE_COLOR_WEIGHTS,
        )

    cache = Cache(root) if root is not None else (cache if cache is not None else Cache())
    path, hit = cache.get_or_create("synth-broden", parts, write)
    if not hit:
        log.info("exported the synthetic Broden set (%d images) to %s", n_images, path)
    probe = BrodenProbe(path, **options)
    probe.name = "synthetic"
    return probe


class SyntheticHeldoutProbe(ProbeSet):
    """Held-out concept classes (:mod:`bench.synth.heldout`): ``labels`` int64 [N],
    ``class_names`` the ten concepts; images are already framed (``fixed_geometry``)."""

    name = "synthetic-heldout"
    fixed_geometry = True
    has_segmentations = False

    def __init__(self, *, n_images: int = HELDOUT_IMAGES, seed: int | None = None, size: int = 64):
        from bench.synth.heldout import HELDOUT_CLASSES, HELDOUT_SEED, heldout_images
        from bench.synth.world import GENERATOR_VERSION

        self.seed = HELDOUT_SEED if seed is None else int(seed)
        self.size = int(size)
        self._images, self._labels = heldout_images(int(n_images), self.seed, self.size)
        self._class_names = list(HELDOUT_CLASSES)
        self._identity = {
            "kind": "synthetic-heldout",
            "generator_version": GENERATOR_VERSION,
            "n_images": int(n_images),
            "seed": self.seed,
            "size": self.size,
        }

    def __len__(self) -> int:
        return len(self._labels)

    def load_image(self, i: int) -> Image.Image:
        from PIL import Image

        return Image.fromarray(self._images[i])

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)


def synthetic_heldout_probe(
    root: str | Path | None = None,
    *,
    download: bool = False,
    n_images: int = HELDOUT_IMAGES,
    seed: int | None = None,
    size: int = 64,
) -> ProbeSet:
    """The held-out classes probe (``root`` and ``download`` are unused: it is generated)."""
    return SyntheticHeldoutProbe(n_images=n_images, seed=seed, size=size)
