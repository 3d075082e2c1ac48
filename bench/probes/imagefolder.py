"""A directory of class folders (ImageNet val laid out as ``<root>/<class>/<image>``).

The order is torchvision ``ImageFolder``'s: class folders sorted by name, then each folder's
files (walked recursively) sorted by name, so indices match files written against that order
(MILAN's ``ids.csv``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError, UsageError
from bench.probes.base import ProbeSet

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """``(class names, [(relative path, class index), ...])`` in ImageFolder order."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples: list[tuple[str, int]] = []
    for idx, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    rel = Path(dirpath, fname).relative_to(root).as_posix()
                    samples.append((rel, idx))
    return classes, samples


class ImageFolderProbe(ProbeSet):
    """Images of ``<root>/<class>/...`` with their class labels; ``max_images`` keeps the first."""

    fixed_geometry = False
    has_segmentations = False

    def __init__(self, root: str | Path, *, max_images: int | None = None):
        self.root = Path(root).expanduser()
        self.name = "imagefolder"
        if not self.root.is_dir():
            raise DataError(
                f"Expected an image folder at {self.root} (one sub-folder per class), "
                "found nothing there."
            )
        if max_images is not None and max_images < 1:
            raise UsageError(f"Expected max_images >= 1 or None, got {max_images}.")
        self.max_images = max_images
        classes, samples = list_image_folder(self.root)
        if not classes:
            raise DataError(
                f"Expected class sub-folders in {self.root}, got none. Lay the images "
                "out as <root>/<class>/<image>."
            )
        if not samples:
            raise DataError(
                f"Expected images ({', '.join(IMG_EXTENSIONS)}) in the class folders "
                f"of {self.root}, got none."
            )
        self._classes = classes
        self._samples = samples[:max_images] if max_images is not None else samples
        self._identity: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def path(self, i: int) -> Path:
        return self.root / self._samples[i][0]

    def load_image(self, i: int) -> Image.Image:
        from PIL import Image, UnidentifiedImageError

        path = self.path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"Expected a readable image at {path}, got an error: {e}.") from e

    @property
    def labels(self) -> np.ndarray:
        import numpy as np

        return np.asarray([label for _, label in self._samples], dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            h = hashlib.sha256()
            for rel, label in self._samples:
                size = (self.root / rel).stat().st_size
                h.update(json.dumps([rel, label, size]).encode())
                h.update(b"\n")
            self._identity = {
                "kind": "imagefolder",
                "sha256": h.hexdigest(),
                "num_images": len(self),
                "num_classes": len(self._classes),
                "max_images": self.max_images,
            }
        return dict(self._identity)
