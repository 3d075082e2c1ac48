"""The probe-set contract: images, optional per-pixel concept segmentations, optional labels."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True, kw_only=True, slots=True)
class Concept:
    """A segmentation label of a probe set.

    ``number`` is the unified label number (Broden ``label.csv``; 0 is "unlabelled" and never a
    concept). ``name`` is the clean name shown in labels ("red"), ``raw_name`` the name as the data
    spells it ("red-c"). ``category`` is the primary category: where the label has the most
    coverage (Broden's ``c_<category>.csv``, as NetDissect-Lite reads it; without those files,
    where ``label.csv`` counts it most). ``categories`` lists every category it occurs in.
    """

    number: int
    name: str
    raw_name: str
    category: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Segmentation:
    """Concept labels of one image.

    ``pixel``: category -> int32 ``[L, sh, sw]`` label numbers (L layers: several labels can cover
    one pixel, as Broden's part layers do; 0 is unlabelled). ``image``: category -> label numbers
    that hold for the whole image (scene, texture).
    """

    pixel: dict[str, np.ndarray]
    image: dict[str, tuple[int, ...]]


class ProbeSet(abc.ABC):
    """A sequence of RGB images the target is run on.

    ``fixed_geometry``: the images are already framed for dissection (Broden, synthetic): they are
    only resized to the network's input size, never cropped, so that segmentations stay aligned.
    Otherwise (ImageNet val, CIFAR) the target's own resize and centre crop apply.
    """

    name: str = "probe"
    fixed_geometry: bool = False
    has_segmentations: bool = False

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able identity of the content (goes into cache keys): changes when any image may."""

    # --- segmentations (has_segmentations) ---------------------------------------------------

    @property
    def seg_size(self) -> tuple[int, int]:
        raise NotImplementedError(f"Probe set {self.name!r} has no segmentations.")

    def categories(self) -> list[str]:
        return []

    def concepts(self) -> list[Concept]:
        return []

    def segmentation(self, i: int) -> Segmentation:
        raise NotImplementedError(f"Probe set {self.name!r} has no segmentations.")

    # --- labels (classification probes such as CIFAR) -----------------------------------------

    @property
    def labels(self) -> np.ndarray | None:
        """int64 ``[N]`` class index of each image, or ``None``."""
        return None

    @property
    def class_names(self) -> list[str] | None:
        return None
