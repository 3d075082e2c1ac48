"""A pixel-level recogniser of the synthetic world: what the synthetic captioner sees.

It reads only pixels: no scene, seed or label map. It knows the world's vocabulary the way a
captioner trained on the world would: the palette (``bench.synth.world.COLOR_RGB`` and the darker
pattern shades), what each background material looks like (colour statistics measured once on
rendered textures), and the six shapes (templates drawn from their definitions).

For an RGB image (any size; crops and generated images included):

1. **Material**: background pixels (those no object explains) are compared, by their mean and
   spread of colour, with each material's measured statistics.
2. **Objects**: each pixel is matched to the nearest palette shade (a colour's base or pattern
   tone, allowing the world's brightness jitter). Per colour, the matched pixels are opened with
   a 3x3 square (thin lines such as brick mortar vanish), split into 8-connected regions, and
   regions smaller than ``min_area`` are dropped. Colours the world never draws on the detected
   material (``bench.synth.world.CLASHES``: green on grass, white on snow, ...) are ignored, since
   there they are texture rather than objects.
3. **Pattern** of a region: the share of its pixels in the darker tone (plain below 0.1); among
   patterned regions, dotted below 0.36, else striped when the dark blobs are elongated and
   checkered when they are compact (measured after undoing any stretch of the image, below).
4. **Shape** of a region: its pixel coordinates are normalised by their mean and per-axis
   standard deviation, which undoes the anisotropic stretch a resized crop applies (every world
   shape has isotropic second moments), and compared by IoU with each shape's template at a few
   rotations.

:meth:`WorldRecogniser.caption` renders the result with the world's caption grammar
(``bench.synth.text``): "a large red striped circle and a small blue square on grass".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bench.synth import concepts as C
from bench.synth import text as T
from bench.synth import world as W

#: Brightness jitter of the world's objects (``SceneObject.shade``) plus blending slack.
SHADE_RANGE = (0.8, 1.15)
#: Largest RGB distance from a palette tone at which a pixel counts as that colour.
MATCH_DISTANCE = 20.0
#: Dark-tone share below which a region is plain, and below which a patterned one is dotted.
PLAIN_BELOW = 0.1
DOTTED_BELOW = 0.36
#: Area-weighted elongation (ratio of principal standard deviations) of the dark blobs above
#: which a pattern reads as stripes.
STRIPE_ELONGATION = 2.2
#: Normalised template grid: half-width (in standard deviations) and points per side.
GRID_HALF = 2.4
GRID_POINTS = 36
#: Shape area at radius 1 (numerically from the world's shape tests), for size words.
_SIZE_LIMITS = (0.135, 0.195)  # radius fraction: small < 0.135 <= medium < 0.195 <= large


@dataclass(frozen=True, kw_only=True, slots=True)
class SeenObject:
    """One recognised object. ``area``: fraction of the image; ``x``, ``y``: centre as fractions
    of the width and height; ``radius``: equivalent radius as a fraction of the image side."""

    shape: str
    color: str
    pattern: str
    area: float
    x: float
    y: float
    radius: float
    shape_score: float

    @property
    def size(self) -> str:
        if self.radius < _SIZE_LIMITS[0]:
            return "small"
        return "medium" if self.radius < _SIZE_LIMITS[1] else "large"


@dataclass(frozen=True, kw_only=True, slots=True)
class SeenScene:
    """What is visible: the background material (``None`` when too little background shows)
    and the objects, largest first."""

    material: str | None
    objects: tuple[SeenObject, ...]


def _shape_template_points(shape: str, angle: float) -> np.ndarray:
    """bool [GRID_POINTS, GRID_POINTS]: the shape on the normalised grid (centroid at 0, unit
    standard deviation per axis), rotated by ``angle``."""
    fine = np.linspace(-1.4, 1.4, 281)
    v, u = np.meshgrid(fine, fine, indexing="ij")
    ca, sa = math.cos(angle), math.sin(angle)
    # The world draws a pixel when its offset, rotated into the object's frame, is inside.
    inside = W._shape_mask(shape, u * ca + v * sa, -u * sa + v * ca)
    ys, xs = np.nonzero(inside)
    mx, my = fine[xs].mean(), fine[ys].mean()
    sx, sy = fine[xs].std(), fine[ys].std()
    g = np.linspace(-GRID_HALF, GRID_HALF, GRID_POINTS)
    gv, gu = np.meshgrid(g, g, indexing="ij")
    px = mx + gu * sx
    py = my + gv * sy
    return W._shape_mask(shape, px * ca + py * sa, -px * sa + py * ca)


_ANGLES: dict[str, tuple[float, ...]] = {
    "circle": (0.0,),
    "square": tuple(np.linspace(-0.17, 0.17, 5)),
    "diamond": tuple(np.linspace(-0.17, 0.17, 5)),
    "cross": tuple(np.linspace(-0.17, 0.17, 5)),
    "triangle": tuple(np.linspace(-0.26, 0.26, 7)),
    "star": tuple(np.linspace(0.0, 2 * math.pi / 5, 8, endpoint=False)),
}


@lru_cache(maxsize=1)
def _templates() -> tuple[tuple[str, ...], np.ndarray]:
    """Shape names and their templates, bool [T, G*G] (T = every shape at every angle)."""
    names, rows = [], []
    for shape in C.SHAPES:
        for a in _ANGLES[shape]:
            names.append(shape)
            rows.append(_shape_template_points(shape, float(a)).ravel())
    return tuple(names), np.stack(rows)


@lru_cache(maxsize=1)
def _palette() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Tone colour names, tone RGB float [P, 3], and whether each tone is a pattern tone."""
    names, rgb, alt = [], [], []
    for c in C.COLORS:
        names += [c, c]
        rgb += [W.COLOR_RGB[c], W.PATTERN_RGB[c]]
        alt += [False, True]
    return tuple(names), np.asarray(rgb, dtype=np.float64), np.asarray(alt)


@lru_cache(maxsize=1)
def _material_stats() -> tuple[tuple[str, ...], np.ndarray]:
    """Per material: mean and standard deviation of RGB over a few rendered textures [M, 6]."""
    feats = []
    for m in C.MATERIALS:
        pix = []
        for seed in range(4):
            img = W.render(W.Scene(material=m, objects=(), texture_seed=1000 + seed)).image
            pix.append(img.reshape(-1, 3).astype(np.float64))
        p = np.concatenate(pix)
        feats.append(np.concatenate([p.mean(0), p.std(0)]))
    return C.MATERIALS, np.stack(feats)


def _tone_match(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest palette tone (-1 if none within MATCH_DISTANCE), and
    whether that tone is a pattern tone. ``img`` float [H, W, 3]."""
    names, rgb, alt = _palette()
    p = img.reshape(-1, 3)
    norm2 = (rgb * rgb).sum(1)
    pc = p @ rgb.T  # [N, P]
    s = np.clip(pc / norm2, *SHADE_RANGE)  # best brightness of each tone for each pixel
    # |p - s c|^2 without materialising [N, P, 3]
    d2 = (p * p).sum(1, keepdims=True) - 2.0 * s * pc + s * s * norm2
    best = d2.argmin(1)
    ok = d2[np.arange(len(p)), best] <= MATCH_DISTANCE**2
    idx = np.where(ok, best, -1).reshape(img.shape[:2])
    return idx, np.where(ok, alt[best], False).reshape(img.shape[:2])


class WorldRecogniser:
    """Parses images of the synthetic world into :class:`SeenScene` values (module docstring)."""

    def __init__(self, *, min_area: float = 0.006):
        #: Smallest object, as a fraction of the image.
        self.min_area = min_area

    def parse(self, image: np.ndarray) -> SeenScene:
        """``image``: uint8 [H, W, 3]."""
        from scipy import ndimage

        img = np.asarray(image, dtype=np.float64)
        h, w = img.shape[:2]
        tone, is_alt = _tone_match(img)
        names, _, _ = _palette()
        colour_of_tone = np.asarray([C.COLORS.index(n) for n in names])
        colour = np.where(tone >= 0, colour_of_tone[np.maximum(tone, 0)], -1)
        min_px = max(6, int(round(self.min_area * h * w)))
        opening = np.ones((3, 3), dtype=bool) if min(h, w) >= 24 else np.ones((1, 1), dtype=bool)

        regions: list[tuple[int, np.ndarray]] = []
        for ci in range(len(C.COLORS)):
            mask = colour == ci
            if mask.sum() < min_px:
                continue
            opened = ndimage.binary_opening(mask, structure=opening)
            labels, n = ndimage.label(opened, structure=np.ones((3, 3), dtype=bool))
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            for k in np.nonzero(sizes >= min_px)[0]:
                if k == 0:
                    continue
                # Grow the opened core back into the colour's pixels (star points, thin arms),
                # a few pixels at most, so lines it touches (mortar) are not swallowed.
                grown = ndimage.binary_dilation(labels == k, iterations=2, mask=mask)
                regions.append((ci, grown))

        covered = np.zeros((h, w), dtype=bool)
        for _, m in regions:
            covered |= m
        material = self._material(img, ~ndimage.binary_dilation(covered, iterations=1))
        clash = set(W.CLASHES.get(material, ())) if material else set()

        objects = []
        for ci, m in regions:
            cname = C.COLORS[ci]
            if cname in clash:
                continue
            objects.append(self._object(cname, m, is_alt))
        objects.sort(key=lambda o: (-o.area, o.y, o.x))
        return SeenScene(material=material, objects=tuple(objects[:4]))

    def _material(self, img: np.ndarray, background: np.ndarray) -> str | None:
        if background.sum() < max(8, 0.02 * background.size):
            return None
        p = img[background]
        feat = np.concatenate([p.mean(0), p.std(0)])
        names, stats = _material_stats()
        # Spread counts less than the mean colour: a small patch of texture has less variety.
        weights = np.asarray([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
        d = (((stats - feat) * weights) ** 2).sum(1)
        return names[int(d.argmin())]

    def _object(self, colour: str, mask: np.ndarray, is_alt: np.ndarray) -> SeenObject:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        sx, sy = max(xs.std(), 0.5), max(ys.std(), 0.5)
        shape, score = self._shape(mask, cx, cy, sx, sy)
        pattern = self._pattern(mask, is_alt, sx, sy)
        area = float(mask.sum()) / (h * w)
        # Equivalent radius on a square image of the same area: the world's size scale.
        radius = math.sqrt(area / _UNIT_AREA[shape])
        return SeenObject(
            shape=shape,
            color=colour,
            pattern=pattern,
            area=area,
            x=float(cx / w),
            y=float(cy / h),
            radius=radius,
            shape_score=score,
        )

    @staticmethod
    def _shape(mask: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> tuple[str, float]:
        h, w = mask.shape
        g = np.linspace(-GRID_HALF, GRID_HALF, GRID_POINTS)
        gv, gu = np.meshgrid(g, g, indexing="ij")
        px = np.floor(cx + gu * sx).astype(int)
        py = np.floor(cy + gv * sy).astype(int)
        valid = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        samples = np.zeros(px.shape, dtype=bool)
        samples[valid] = mask[py[valid], px[valid]]
        s = samples.ravel()
        names, templates = _templates()
        inter = (templates & s).sum(1)
        union = (templates | s).sum(1)
        iou = inter / np.maximum(union, 1)
        best = int(iou.argmax())
        return names[best], float(iou[best])

    @staticmethod
    def _pattern(mask: np.ndarray, is_alt: np.ndarray, sx: float, sy: float) -> str:
        from scipy import ndimage

        inner = ndimage.binary_erosion(mask, iterations=1)
        if inner.sum() < 12:
            inner = mask
        dark = is_alt & inner
        frac = dark.sum() / max(inner.sum(), 1)
        if frac < PLAIN_BELOW:
            return "plain"
        if frac < DOTTED_BELOW:
            return "dotted"
        labels, n = ndimage.label(dark)
        # Undo any anisotropic stretch with the object's own spread (isotropic in the world).
        scale = math.sqrt(sx * sy)
        fx, fy = scale / sx, scale / sy
        total, weighted = 0.0, 0.0
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            if len(xs) < 4:
                continue
            cov = np.cov(np.stack([xs * fx, ys * fy]))
            ev = np.linalg.eigvalsh(cov)
            elong = math.sqrt(max(ev[1], 1e-6) / max(ev[0], 0.08))
            weighted += elong * len(xs)
            total += len(xs)
        if total == 0:
            return "dotted"
        return "striped" if weighted / total >= STRIPE_ELONGATION else "checkered"

    def caption(self, image: np.ndarray) -> str:
        """The world's caption of what is visible (module docstring)."""
        return caption_of(self.parse(image))


def _unit_areas() -> dict[str, float]:
    fine = np.linspace(-1.4, 1.4, 281)
    v, u = np.meshgrid(fine, fine, indexing="ij")
    cell = (fine[1] - fine[0]) ** 2
    return {s: float(W._shape_mask(s, u, v).sum() * cell) for s in C.SHAPES}


#: Area of each shape at radius 1 (in radius units squared).
_UNIT_AREA = _unit_areas()


def caption_of(scene: SeenScene) -> str:
    """Caption a recognised scene with the world's grammar (``bench.synth.text.caption``)."""
    objs = tuple(
        W.SceneObject(
            shape=o.shape,
            color=o.color,
            pattern=o.pattern,
            size=o.size,
            x=o.x,
            y=o.y,
            radius=o.radius,
        )
        for o in scene.objects
    )
    if scene.material is not None and objs:
        return T.caption(W.Scene(material=scene.material, objects=objs, texture_seed=0))
    if objs:
        parts = [T.describe_object(o) for o in objs]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if scene.material is not None:
        return f"an empty scene of {scene.material}"
    return "an image"
