"""Step 1 of Describe-and-Dissect: attention crops (paper section 3.1, ``get_attention_crops``).

For each of a unit's top images: its activation map, upsampled to the image, is thresholded with
Otsu's method; the bounding boxes of the connected regions above the threshold, largest first,
are kept when their IoU with every kept box is at most 0.5 and with the whole image under 0.8,
up to 4 per image. The crops are cut from the image the network saw and resized to its size.

**The normalisation fix.** The original turns the float map into a byte image with
``ToPILImage``, i.e. ``(act * 255).byte()`` on the *unnormalised* activations: every value above
1 wraps modulo 256 (``shared/reference/methods.md`` 4.2), which scrambles deep-layer maps. Here
the map is min-max normalised to [0, 1] first (:func:`normalise_map`); the original cast is kept
as :func:`legacy_byte_map` (``DnDConfig.legacy_byte_cast``) to show the difference.

Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive (OpenCV's ``boundingRect``
``(x, y, x + w, y + h)``); areas are ``(x1 - x0) * (y1 - y0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]

#: The original's limits (``describe_neurons.py`` defaults).
MAX_CROPS = 4
MAX_BOX_OVERLAP = 0.5
MAX_IMAGE_IOU = 0.8


def normalise_map(act: np.ndarray) -> np.ndarray:
    """float [h, w] -> float32 [h, w] in [0, 1] (min-max); a constant map becomes all zeros."""
    a = np.asarray(act, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def to_bytes(norm: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(norm, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def legacy_byte_map(act: np.ndarray) -> np.ndarray:
    """The original's cast: ``(act * 255)`` truncated to an integer and wrapped modulo 256, as
    ``torch.Tensor.byte()`` does on the non-negative activations ``ToPILImage`` receives."""
    v = np.trunc(np.asarray(act, dtype=np.float64) * 255.0)
    return np.mod(v, 256).astype(np.uint8)


def upsample(act: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [h, w] -> float32 [H, W], bilinear (``align_corners=False``)."""
    import torch
    import torch.nn.functional as F

    a = torch.as_tensor(np.asarray(act, dtype=np.float32))[None, None]
    if tuple(a.shape[-2:]) == tuple(size):
        return a[0, 0].numpy().copy()
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def otsu_threshold(img: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the ``t`` maximising the between-class variance of
    ``{<= t}`` and ``{> t}`` (the first such ``t``, as OpenCV); foreground is ``img > t``."""
    hist = np.bincount(np.asarray(img, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    p = hist / total
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(p)
    mu0_sum = np.cumsum(p * levels)
    mu = mu0_sum[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu * w0 - mu0_sum) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0.0
    between[(w0 <= 0) | (w1 <= 1e-12)] = 0.0
    return int(np.argmax(between))


def region_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected regions of ``mask``, largest area first (ties: the
    region met first in row-major order)."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    boxes: list[Box] = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        ys, xs = sl
        boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)))
    order = sorted(range(len(boxes)), key=lambda i: -box_area(boxes[i]))
    return [boxes[i] for i in order]


def box_area(b: Box) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def select_boxes(
    boxes: Sequence[Box],
    size: tuple[int, int],
    *,
    max_crops: int = MAX_CROPS,
    max_overlap: float = MAX_BOX_OVERLAP,
    max_image_iou: float = MAX_IMAGE_IOU,
) -> list[Box]:
    """Keep boxes (in the order given) whose IoU with every kept box is ``<= max_overlap`` and
    with the whole image (``size = (H, W)``) ``< max_image_iou``, up to ``max_crops``."""
    whole: Box = (0, 0, size[1], size[0])
    kept: list[Box] = []
    for b in boxes:
        if len(kept) >= max_crops:
            break
        if box_area(b) == 0:
            continue
        if all(box_iou(b, k) <= max_overlap for k in kept) and box_iou(b, whole) < max_image_iou:
            kept.append(b)
    return kept


def attention_boxes(
    act: np.ndarray,
    size: tuple[int, int],
    *,
    max_crops: int = MAX_CROPS,
    max_overlap: float = MAX_BOX_OVERLAP,
    max_image_iou: float = MAX_IMAGE_IOU,
    legacy_byte_cast: bool = False,
) -> list[Box]:
    """Crop boxes of one image from the unit's activation map ``act`` (float [h, w]) for an
    image of ``size = (H, W)``. A 1x1 map (a fully connected unit) gives no crops, as the
    original skips cropping for FC layers."""
    act = np.asarray(act, dtype=np.float32)
    if act.size <= 1:
        return []
    if legacy_byte_cast:  # cast first, then resize the byte image, as the original
        heat = to_bytes(np.clip(upsample(legacy_byte_map(act) / 255.0, size), 0.0, 1.0))
    else:
        heat = to_bytes(np.clip(upsample(normalise_map(act), size), 0.0, 1.0))
    t = otsu_threshold(heat)
    boxes = region_boxes(heat > t)
    return select_boxes(
        boxes, size, max_crops=max_crops, max_overlap=max_overlap, max_image_iou=max_image_iou
    )
