"""Seeded procedural scenes with per-pixel concept labels (DESIGN section 6).

A :class:`Scene` is a small value: a background material and 1-3 objects (shape, colour,
pattern, size, position). :func:`render` turns it into an RGB image and label maps; it is a pure
function of the scene and the image side, so a scene (or the seed it was sampled from) is enough
to reproduce an image bit for bit. Rendering is plain numpy: a 64 px image takes well under a
millisecond or two.

Labels, as catalogue numbers (:mod:`bench.synth.concepts`; 0 is unlabelled):

- ``object``: shape of the top-most object at the pixel, 0 on the background;
- ``color``: colour of that object, **0 on the background** (materials have their own
  category, so a "green" unit is about green objects, never about grass);
- ``pattern``: pattern of that object ("plain" included), 0 on the background;
- ``material``: background material where no object covers the pixel, 0 under objects;
- ``scene`` (image level): the scene name of the material (``SCENE_OF_MATERIAL``).

The first object of ``Scene.objects`` is the main object: medium or large, drawn last (on top);
the others are small distractors (at most ``DISTRACTOR_RATIO`` of its radius).
Objects are placed so that they overlap little, so every listed object is visible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bench.errors import UsageError
from bench.synth import concepts as C

#: Bump when the images or labels produced for a given seed change (part of cache keys).
GENERATOR_VERSION = 1
DEFAULT_SIZE = 64

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
    "white": (245, 245, 240),
    "black": (25, 25, 30),
}


# The second shade patterns are drawn in: a darker tone of the same hue, so a pattern pixel
# still reads as the object's colour (lighter for black, which has no darker tone).
def _pattern_shade(name: str, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    if name == "black":
        return (105, 105, 110)
    if name == "white":
        return (165, 165, 160)
    r, g, b = (int(round(v * 0.55)) for v in rgb)
    return (r, g, b)


PATTERN_RGB: dict[str, tuple[int, int, int]] = {
    name: _pattern_shade(name, rgb) for name, rgb in COLOR_RGB.items()
}
# Object colours never drawn on a background of nearly the same colour (they would vanish).
CLASHES: dict[str, tuple[str, ...]] = {
    "grass": ("green",),
    "sky": ("blue", "white"),
    "water": ("blue",),
    "sand": ("yellow",),
    "snow": ("white",),
    "brick": (),
    "wood": (),
}
#: Pattern geometry in pixels at 64 px.
PATTERN_SCALE: dict[str, float] = {
    "stripe_period": 6.0,
    "dot_period": 7.0,
    "dot_radius": 1.9,
    "check_cell": 5.0,
}
#: A distractor's radius is at most this fraction of the main object's.
DISTRACTOR_RATIO = 0.7
SIZE_RANGES: dict[str, tuple[float, float]] = {  # radius as a fraction of the image side
    "small": (0.09, 0.13),
    "medium": (0.14, 0.19),
    "large": (0.20, 0.26),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SceneObject:
    """One object. Positions and radius are fractions of the image side (resolution-free);
    ``angle`` rotates the shape, ``pattern_angle`` the pattern (radians); ``shade`` scales the
    brightness slightly."""

    shape: str
    color: str
    pattern: str
    size: str
    x: float
    y: float
    radius: float
    angle: float = 0.0
    pattern_angle: float = 0.0
    shade: float = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Scene:
    """A background material and its objects, main object first (drawn last, on top).

    ``texture_seed`` fixes the background texture and pixel noise.
    """

    material: str
    objects: tuple[SceneObject, ...]
    texture_seed: int

    @property
    def scene(self) -> str:
        return C.SCENE_OF_MATERIAL[self.material]

    @property
    def main(self) -> SceneObject:
        return self.objects[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class Rendered:
    """A rendered scene. ``image``: uint8 [S, S, 3]. ``labels``: category -> int32 [S, S]
    catalogue numbers for each of ``PIXEL_CATEGORIES``. ``scene_label``: catalogue number."""

    scene: Scene
    image: np.ndarray
    labels: dict[str, np.ndarray]
    scene_label: int


# --- sampling ---------------------------------------------------------------------------------


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of the set with ``seed`` (independent of set size)."""
    if seed < 0 or index < 0:
        raise UsageError(f"Expected seed >= 0 and index >= 0, got seed={seed}, index={index}.")
    return np.random.default_rng([int(seed), int(index)])


def _check_values(category: str, given: Sequence[str] | None) -> tuple[str, ...]:
    allowed = C.values(category)
    if given is None:
        return allowed
    out = tuple(given)
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise UsageError(f"Expected {category} values among {allowed}, got {list(out)}.")
    return out


def sample_scene(
    rng: np.random.Generator,
    *,
    materials: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    patterns: Sequence[str] | None = None,
    n_objects: tuple[int, int] = (1, 3),
    main_sizes: Sequence[str] = ("medium", "large"),
    objects: Sequence[Mapping[str, Sequence[str]]] | None = None,
    color_weights: Mapping[str, float] | None = None,
) -> Scene:
    """Sample a scene; each keyword restricts the values every object (or the background) may take.

    ``objects`` (optional) fixes the number of objects and restricts each one further: one
    mapping per object from ``"color"``, ``"object"`` (shape) or ``"pattern"`` to allowed values.
    Object colours that clash with the material (``CLASHES``) are avoided unless nothing else
    is allowed. ``n_objects`` is an inclusive range; objects that cannot be placed without heavy
    overlap are dropped (the main object never is). ``color_weights`` (optional) makes object
    colours non-uniform: a colour's relative weight, 1 for colours it does not name (the default
    draws every allowed colour alike, as training does).
    """
    materials = _check_values("material", materials)
    colors = _check_values("color", colors)
    shapes = _check_values("object", shapes)
    patterns = _check_values("pattern", patterns)
    for size_name in main_sizes:
        if size_name not in SIZE_RANGES:
            raise UsageError(f"Expected sizes among {tuple(SIZE_RANGES)}, got {size_name!r}.")
    lo, hi = n_objects
    if not 1 <= lo <= hi:
        raise UsageError(f"Expected 1 <= n_objects[0] <= n_objects[1], got {n_objects}.")
    material = materials[rng.integers(len(materials))]
    n = int(rng.integers(lo, hi + 1)) if objects is None else len(objects)
    placed_objects: list[SceneObject] = []
    for k in range(n):
        spec = objects[k] if objects is not None else {}
        obj_colors = _check_values("color", spec.get("color", colors))
        obj_shapes = _check_values("object", spec.get("object", shapes))
        obj_patterns = _check_values("pattern", spec.get("pattern", patterns))
        ok_colors = tuple(c for c in obj_colors if c not in CLASHES[material]) or obj_colors
        size = main_sizes[int(rng.integers(len(main_sizes)))] if k == 0 else "small"
        r_lo, r_hi = SIZE_RANGES[size]
        if k > 0:  # distractors stay clearly smaller than the main object
            r_hi = min(r_hi, placed_objects[0].radius * DISTRACTOR_RATIO)
            r_lo = min(r_lo, r_hi)
        radius = float(rng.uniform(r_lo, r_hi))
        margin = radius * 0.85
        placed = None
        for _ in range(25):
            x, y = (float(v) for v in rng.uniform(margin, 1.0 - margin, size=2))
            if all(
                math.hypot(x - o.x, y - o.y) >= 0.95 * (radius + o.radius) for o in placed_objects
            ):
                placed = (x, y)
                break
        shape = obj_shapes[rng.integers(len(obj_shapes))]
        if color_weights is None:
            color = ok_colors[rng.integers(len(ok_colors))]
        else:
            w = np.array([float(color_weights.get(c, 1.0)) for c in ok_colors])
            if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
                raise UsageError(
                    f"Expected finite, non-negative colour weights, not all 0; got {color_weights}."
                )
            color = ok_colors[int(rng.choice(len(ok_colors), p=w / w.sum()))]
        pattern = obj_patterns[rng.integers(len(obj_patterns))]
        jitter = {
            "circle": math.pi,
            "star": math.pi,
            "square": 0.17,
            "diamond": 0.17,
            "cross": 0.17,
            "triangle": 0.26,
        }[shape]
        angle = float(rng.uniform(-jitter, jitter))
        pattern_angle = float(rng.integers(4)) * math.pi / 4
        shade = float(rng.uniform(0.9, 1.08))
        if placed is None:
            if k == 0:
                placed = (0.5, 0.5)
            else:
                continue
        placed_objects.append(
            SceneObject(
                shape=shape,
                color=color,
                pattern=pattern,
                size=size,
                x=placed[0],
                y=placed[1],
                radius=radius,
                angle=angle,
                pattern_angle=pattern_angle,
                shade=shade,
            )
        )
    texture_seed = int(rng.integers(2**31 - 1))
    return Scene(material=material, objects=tuple(placed_objects), texture_seed=texture_seed)


def generate(n: int, seed: int, *, start: int = 0, **constraints) -> list[Scene]:
    """Scenes ``start .. start+n-1`` of the set with ``seed`` (``sample_scene`` keywords apply)."""
    return [sample_scene(scene_rng(seed, i), **constraints) for i in range(start, start + n)]


# --- rendering --------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the side: (ys [S, 1], xs [1, S])."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    return c[:, None], c[None, :]


def _value_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise in [0, 1]: float64 [S, S], bilinear over a random (cells+1)^2 lattice."""
    lattice = rng.random((cells_y + 1, cells_x + 1))
    ys = (np.arange(size) + 0.5) / size * cells_y
    xs = (np.arange(size) + 0.5) / size * cells_x
    y0 = np.minimum(ys.astype(int), cells_y - 1)
    x0 = np.minimum(xs.astype(int), cells_x - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    a = lattice[y0][:, x0]
    b = lattice[y0][:, x0 + 1]
    c = lattice[y0 + 1][:, x0]
    d = lattice[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _mix(t: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    return lo_a + (hi_a - lo_a) * t[..., None]


def _background(material: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """float64 [S, S, 3] in 0..255: the material's procedural texture."""
    ys, xs = _grid(size)
    s = size / DEFAULT_SIZE
    if material == "grass":
        blades = _value_noise(rng, size, max(2, size // 10), size // 2)  # vertical streaks
        patches = _value_noise(rng, size, 3, 3)
        t = np.clip(0.65 * blades + 0.35 * patches, 0, 1)
        return _mix(t, (40, 95, 30), (115, 175, 70))
    if material == "sky":
        grad = np.broadcast_to(ys, (size, size))
        base = _mix(grad, (95, 150, 225), (170, 205, 245))
        clouds = np.clip((_value_noise(rng, size, 4, 4) - 0.55) * 3.0, 0, 1)
        return base * (1 - clouds[..., None]) + np.array([240.0, 244, 250]) * clouds[..., None]
    if material == "water":
        wobble = _value_noise(rng, size, 3, 3)
        phase = rng.uniform(0, 2 * np.pi)
        waves = 0.5 + 0.5 * np.sin(2 * np.pi * (ys * size / (7 * s) + 0.8 * wobble) + phase)
        t = np.clip(0.75 * waves + 0.25 * _value_noise(rng, size, 6, 6), 0, 1)
        return _mix(t, (20, 70, 140), (75, 145, 205))
    if material == "sand":
        grains = rng.random((size, size))
        dunes = _value_noise(rng, size, 3, 3)
        t = np.clip(0.45 * dunes + 0.55 * grains, 0, 1)
        return _mix(t, (185, 155, 105), (235, 210, 160))
    if material == "brick":
        rows = np.floor(ys * size / (8 * s))
        offset = (rows % 2) * 0.5
        cols = np.floor(xs * size / (16 * s) + offset)
        brick_id = (rows * 131 + cols * 7).astype(np.int64) % 97
        tint = rng.uniform(0.82, 1.12, size=97)[brick_id]
        mortar_y = (ys * size / (8 * s)) % 1.0 < 0.16
        mortar_x = (xs * size / (16 * s) + offset) % 1.0 < 0.08
        mortar = mortar_y | mortar_x
        img = np.array([155.0, 68, 48]) * tint[..., None]
        img = img + (rng.random((size, size, 1)) - 0.5) * 18
        return np.where(mortar[..., None], np.array([190.0, 185, 175]), img)
    if material == "wood":
        warp = _value_noise(rng, size, 2, 4)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (ys * size / (4.5 * s) + 2.2 * warp))
        knots = _value_noise(rng, size, 5, 5)
        t = np.clip(0.7 * grain + 0.3 * knots, 0, 1)
        return _mix(t, (95, 60, 30), (160, 112, 65))
    if material == "snow":
        drifts = _value_noise(rng, size, 3, 3)
        sparkle = rng.random((size, size))
        t = np.clip(0.75 * drifts + 0.25 * sparkle, 0, 1)
        return _mix(t, (200, 210, 230), (250, 251, 255))
    raise UsageError(f"Expected a material among {C.MATERIALS}, got {material!r}.")


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the object's frame (unit = radius, v grows downwards)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.08
    if shape == "triangle":
        u2, v2 = u / 1.15, (v - 0.12) / 1.15
        return (v2 <= 0.5) & (math.sqrt(3.0) * np.abs(u2) <= v2 + 1.0)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))
    if shape == "star":
        r = np.hypot(u, v) / 1.15
        sector = 2 * math.pi / 5
        half = sector / 2
        phi = np.mod(np.arctan2(u, -v), sector)
        phi = np.minimum(phi, sector - phi)
        r0, r1 = 1.0, 0.45
        edge = r0 * r1 * math.sin(half) / (r0 * np.sin(phi) + r1 * np.sin(half - phi))
        return r <= edge
    raise UsageError(f"Expected a shape among {C.SHAPES}, got {shape!r}.")


def _pattern_mask(pattern: str, pu: np.ndarray, pv: np.ndarray, s: float) -> np.ndarray:
    """Where the second shade goes; ``pu, pv`` are pixel offsets in the pattern's frame."""
    if pattern == "plain":
        return np.zeros(pu.shape, dtype=bool)
    if pattern == "striped":
        return np.mod(pu / (PATTERN_SCALE["stripe_period"] * s), 1.0) < 0.5
    if pattern == "dotted":
        p = PATTERN_SCALE["dot_period"] * s
        du = np.mod(pu, p) - p / 2
        dv = np.mod(pv, p) - p / 2
        return du * du + dv * dv <= (PATTERN_SCALE["dot_radius"] * s) ** 2
    if pattern == "checkered":
        c = PATTERN_SCALE["check_cell"] * s
        return (np.floor(pu / c) + np.floor(pv / c)) % 2 == 0
    raise UsageError(f"Expected a pattern among {C.PATTERNS}, got {pattern!r}.")


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Rendered:
    """Draw ``scene`` at ``size`` x ``size`` px (see the module docstring for the labels)."""
    if size < 16:
        raise UsageError(f"Expected an image side >= 16 px, got {size}.")
    rng = np.random.default_rng(scene.texture_seed)
    img = _background(scene.material, rng, size)
    labels = {cat: np.zeros((size, size), dtype=np.int32) for cat in C.PIXEL_CATEGORIES}
    ys, xs = _grid(size)
    s = size / DEFAULT_SIZE
    for obj in reversed(scene.objects):  # main object last, on top
        ext = obj.radius * 1.25
        r0, r1 = max(0, int((obj.y - ext) * size)), min(size, int(math.ceil((obj.y + ext) * size)))
        c0, c1 = max(0, int((obj.x - ext) * size)), min(size, int(math.ceil((obj.x + ext) * size)))
        if r0 >= r1 or c0 >= c1:
            continue
        dy = ys[r0:r1] - obj.y
        dx = xs[:, c0:c1] - obj.x
        ca, sa = math.cos(obj.angle), math.sin(obj.angle)
        u = (dx * ca + dy * sa) / obj.radius
        v = (-dx * sa + dy * ca) / obj.radius
        inside = _shape_mask(obj.shape, u, v)
        if not inside.any():
            continue
        cp, sp = math.cos(obj.pattern_angle), math.sin(obj.pattern_angle)
        pu = (dx * cp + dy * sp) * size
        pv = (-dx * sp + dy * cp) * size
        second = _pattern_mask(obj.pattern, pu, pv, s)
        base = np.clip(np.asarray(COLOR_RGB[obj.color], dtype=np.float64) * obj.shade, 0, 255)
        alt = np.clip(np.asarray(PATTERN_RGB[obj.color], dtype=np.float64) * obj.shade, 0, 255)
        patch = np.where(second[..., None], alt, base)
        region = img[r0:r1, c0:c1]
        region[inside] = patch[inside]
        for cat, name in (("object", obj.shape), ("color", obj.color), ("pattern", obj.pattern)):
            labels[cat][r0:r1, c0:c1][inside] = C.number(name)
    covered = labels["object"] > 0
    labels["material"][~covered] = C.number(scene.material)
    img = img + rng.normal(0.0, 4.0, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Rendered(scene=scene, image=image, labels=labels, scene_label=C.number(scene.scene))


def render_batch(
    scenes: Sequence[Scene], size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render many scenes.

    Returns ``images`` uint8 [N, S, S, 3], ``labels`` int16 [N, 4, S, S] (``PIXEL_CATEGORIES``
    order) and ``scene_labels`` int64 [N].
    """
    n = len(scenes)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros((n, len(C.PIXEL_CATEGORIES), size, size), dtype=np.int16)
    scene_labels = np.zeros(n, dtype=np.int64)
    for i, sc in enumerate(scenes):
        r = render(sc, size)
        images[i] = r.image
        for j, cat in enumerate(C.PIXEL_CATEGORIES):
            labels[i, j] = r.labels[cat]
        scene_labels[i] = r.scene_label
    return images, labels, scene_labels


def labels_dict(
    labels: np.ndarray, scene_labels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Batch label arrays -> category mapping for :func:`bench.synth.concepts.formula_mask`.

    ``labels``: int [N, 4, S, S] -> category -> [N, S, S]; ``scene_labels`` [N] -> [N, 1, 1].
    """
    out = {cat: labels[:, j] for j, cat in enumerate(C.PIXEL_CATEGORIES)}
    if scene_labels is not None:
        out["scene"] = np.asarray(scene_labels)[:, None, None]
    return out
