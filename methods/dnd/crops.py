"""Step 1 of Describe-and-Dissect: attention crops (paper section 3.1, ``get_attention_crops``).

For each of a unit's top images, the original (``DnD_models.get_attention_crops``,
``shared/reference/methods.md`` 4.2):

1. casts the unit's float activation map to an 8-bit image with ``ToPILImage``, i.e.
   ``act.mul(255).byte()``: truncated towards zero and, above 1, wrapped modulo 256;
2. resizes that byte image to the image size with Pillow's default filter (bicubic);
3. thresholds it with Otsu's method (``cv2.threshold(..., THRESH_BINARY + THRESH_OTSU)``:
   foreground is ``heat > t``);
4. finds the outer contours (``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)``) and takes
   their bounding rectangles;
5. sorts the boxes by area, largest first, with Python's stable sort, and keeps a box when its
   IoU with every kept box is at most 0.5 and with the whole image under 0.8, up to 4.

This module does the same without OpenCV (:func:`otsu_threshold`, :func:`region_boxes`), with
**one deliberate fix** in the default pipeline (:func:`heat_bytes`): a map with values outside
[0, 1] is scaled into [0, 1] before the cast, so nothing wraps (deep-layer activations routinely
exceed 1, and the wrapped map is scrambled: Otsu may keep the background and miss the peak). A
map already within [0, 1] is cast unchanged, so there the default *is* the original.
``legacy_byte_cast=True`` casts every map as the original does, wrap included.

**Regions as OpenCV's outer contours.** A region is an 8-connected component of the foreground
(Suzuki-Abe border following, which ``findContours`` implements, pairs 8-connected foreground
with 4-connected background). ``RETR_EXTERNAL`` returns only the outermost borders: a component
lying inside a hole of another component (a background area the other encloses) is not a region
of its own; the enclosing component's box covers it anyway. So the outer regions and their
boxes are the 8-connected components of the mask with its holes (4-connected background that
does not reach the image frame) filled.

**Order of equal areas.** ``findContours`` scans the image row by row from the top, left to
right, and starts each outer contour at the first pixel of its component it meets: the
component's top-most, then left-most pixel. Each new contour is put at the *head* of the list it
returns, so the list is in *reverse* scan order: the component whose first pixel comes last in
the scan (the bottom-most, then right-most start) comes first (checked against OpenCV 5.1: five
2x2 squares come out bottom-right, bottom-left, middle, top-right, top-left). Sorting by area
with a stable sort keeps that order among equal areas, so of two equal boxes the one whose
region starts lower (or, on the same row, further right) is tried first.

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

_FLT_EPSILON = float(np.finfo(np.float32).eps)


def normalise_map(act: np.ndarray) -> np.ndarray:
    """float [h, w] -> float32 [h, w] in [0, 1], the fix before the byte cast: a map already
    within [0, 1] is returned unchanged; a non-negative map is divided by its maximum; a map
    with negative values is min-max scaled. A map without spread (or not finite) gives zeros."""
    a = np.asarray(act, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        return np.zeros(a.shape, dtype=np.float32)
    if lo >= 0.0 and hi <= 1.0:
        return a.copy()
    if lo >= 0.0:
        return (a / np.float32(hi)).astype(np.float32)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def legacy_byte_map(act: np.ndarray) -> np.ndarray:
    """The original's cast, ``ToPILImage`` on a float tensor: ``act.mul(255).byte()``, the
    product in float32, truncated towards zero and wrapped modulo 256 (so 1.5 -> 382 -> 126)."""
    v = np.trunc(np.asarray(act, dtype=np.float32) * np.float32(255.0)).astype(np.float64)
    return np.mod(v, 256).astype(np.uint8)


def heat_bytes(act: np.ndarray, *, legacy_byte_cast: bool = False) -> np.ndarray:
    """The byte image of a map: the original's cast, after :func:`normalise_map` unless
    ``legacy_byte_cast`` (then values above 1 wrap, as in the original)."""
    a = np.asarray(act, dtype=np.float32)
    return legacy_byte_map(a if legacy_byte_cast else normalise_map(a))


def resize_bytes(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w] -> uint8 [H, W] with Pillow's bicubic filter (``Image.resize``'s default,
    which the original uses); ``size = (H, W)``."""
    from PIL import Image

    img = np.asarray(img, dtype=np.uint8)
    if img.shape == tuple(size):
        return img.copy()
    im = Image.fromarray(img)
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.uint8)


def otsu_threshold(img: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image as OpenCV computes it (``THRESH_OTSU``): over levels
    ``t`` = 0..255, the between-class variance ``q1 q2 (mu1 - mu2)^2`` of ``{<= t}`` and
    ``{> t}`` in double precision with running class means, levels where either class holds
    less than ``FLT_EPSILON`` of the pixels skipped, the first strict maximum kept (0 if none).
    Foreground is ``img > t``."""
    hist = np.bincount(np.asarray(img, dtype=np.uint8).ravel(), minlength=256)
    total = int(hist.sum())
    if total == 0:
        return 0
    scale = 1.0 / total
    mu = 0.0
    for i in range(256):
        mu += i * float(hist[i])
    mu *= scale
    mu1 = q1 = 0.0
    max_sigma = 0.0
    best = 0
    for i in range(256):
        p = float(hist[i]) * scale
        mu1 *= q1
        q1 += p
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            best = i
    return best


def region_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the outer regions of ``mask`` (module docstring: 8-connected components
    not nested in a hole of another), largest area first, equal areas in OpenCV's contour order
    (reverse scan order of each region's top-most, then left-most pixel)."""
    from scipy import ndimage

    fg = np.asarray(mask, dtype=bool)
    if not fg.any():
        return []
    # Fill the holes: background (4-connected) that does not reach the frame. A component
    # nested in a hole merges into the one around it, whose box it cannot enlarge, so the
    # 8-connected components of the filled mask are the outer regions with their boxes.
    bg_labels, _ = ndimage.label(np.pad(~fg, 1, constant_values=True))  # 4-connected
    filled = fg | (bg_labels[1:-1, 1:-1] != bg_labels[0, 0])
    labels, _ = ndimage.label(filled, structure=np.ones((3, 3), dtype=bool))
    found = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        top = int(ys.start)  # the first pixel in the scan: top row, left-most on it
        left = int(xs.start) + int(np.argmax(labels[top, xs] == lab))
        found.append(((top, left), (int(xs.start), int(ys.start), int(xs.stop), int(ys.stop))))
    found.sort(key=lambda f: f[0], reverse=True)  # findContours' list: last-started first
    boxes = [b for _, b in found]
    return sorted(boxes, key=lambda b: -box_area(b))  # stable, as the original's sort


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
    whole: Box | None = None,
) -> list[Box]:
    """Keep boxes (in the order given) whose IoU with every kept box is ``<= max_overlap`` and
    with the whole image ``< max_image_iou``, up to ``max_crops``. The whole image is
    ``(0, 0, W, H)`` for ``size = (H, W)`` unless ``whole`` is given."""
    whole = whole if whole is not None else (0, 0, size[1], size[0])
    kept: list[Box] = []
    for b in boxes:
        if len(kept) >= max_crops:
            break
        if box_area(b) == 0:
            continue
        if all(box_iou(b, k) <= max_overlap for k in kept) and box_iou(b, whole) < max_image_iou:
            kept.append(b)
    return kept


def heatmap(
    act: np.ndarray, size: tuple[int, int], *, legacy_byte_cast: bool = False
) -> np.ndarray:
    """uint8 [H, W]: the byte image of the map (:func:`heat_bytes`) resized bicubically to
    ``size = (H, W)`` (:func:`resize_bytes`), the image Otsu thresholds."""
    return resize_bytes(heat_bytes(act, legacy_byte_cast=legacy_byte_cast), size)


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
    image of ``size = (H, W)`` (module docstring). A 1x1 map (a fully connected unit) gives no
    crops, as the original skips cropping for FC layers. With ``legacy_byte_cast`` the whole
    image is also the original's ``(0, 0, H, W)`` (its width and height swapped, which matters
    only for images that are not square)."""
    act = np.asarray(act, dtype=np.float32)
    if act.size <= 1:
        return []
    heat = heatmap(act, size, legacy_byte_cast=legacy_byte_cast)
    boxes = region_boxes(heat > otsu_threshold(heat))
    whole = (0, 0, size[0], size[1]) if legacy_byte_cast else None
    return select_boxes(
        boxes,
        size,
        max_crops=max_crops,
        max_overlap=max_overlap,
        max_image_iou=max_image_iou,
        whole=whole,
    )
