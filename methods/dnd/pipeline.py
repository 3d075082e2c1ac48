"""The target-side pieces of Describe-and-Dissect: the images the network saw, and the pooled
activations of a layer on new images (crops, generated images), batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from bench.targets import Preprocessing, Target


def network_view(img: Image.Image, pre: Preprocessing, *, fixed_geometry: bool) -> np.ndarray:
    """uint8 [S, S, 3]: ``img`` framed as the target's preprocessing frames it (resize, and
    centre crop unless ``fixed_geometry``), before normalisation. Activation maps recorded on
    the probe are aligned with this view."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode(pre.interpolation)
    img = img.convert("RGB")
    s = pre.input_size
    if fixed_geometry or pre.resize is None:
        if img.size != (s, s):
            img = TF.resize(img, [s, s], interpolation=mode)
    else:
        img = TF.resize(img, pre.resize, interpolation=mode)
        img = TF.center_crop(img, [s, s])
    return np.asarray(img, dtype=np.uint8).copy()


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (bicubic; :func:`bench.imaging.resize_image`)."""
    from bench.imaging import resize_image as resize

    return resize(arr, size)


def crop_image(view: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``(x0, y0, x1, y1)`` region of ``view``, resized to ``size`` x ``size`` (bicubic)."""
    x0, y0, x1, y1 = box
    return resize_image(np.ascontiguousarray(view[y0:y1, x0:x1]), size)


def layer_means(
    target: Target,
    layer: str,
    images: Sequence[np.ndarray],
    *,
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """float32 [N, U]: the spatial mean of each unit of ``layer`` on each image (uint8
    [H, W, 3], resized to the target's input size; normalised by its preprocessing). The core's
    :func:`bench.imaging.pooled_on_images`, which the ``generated`` suite uses too."""
    from bench.imaging import pooled_on_images

    return pooled_on_images(
        target, [layer], images, pool="mean", device=device, batch_size=batch_size
    )[layer]
