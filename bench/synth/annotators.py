"""Simulated annotators and the synthetic MILANNOTATIONS (DESIGN section 6).

MILANNOTATIONS holds three crowd-sourced descriptions of each unit's 15 exemplars (top images
with the regions where the unit fires). Here simulated annotators write them from the ground
truth the synthetic world has and real data lacks: the concepts under each unit's masks.

What an annotator sees (:func:`unit_content`): per category (colour, shape, pattern, background
material) the share of the masked pixels each concept covers, the fraction of the masked pixels on
objects, and, for context, the scene of each exemplar image and the shapes that appear beside the
masked region. What it writes (:class:`Annotator`):

- the salient concepts: a category's value covering at least ``SALIENT`` of its masked pixels
  ("red"), or two values covering ``PAIR_SALIENT`` together, which come out as a disjunction
  ("blue or yellow objects"); about the objects or the background, whichever the masks are
  about (objects win once they cover ``OBJECT_ATTENTION`` of the masked pixels: figure over ground);
- paraphrased: synonyms and word order vary ("red circles", "round red shapes", "circles that are
  red", "red discs"); every concept word is one the world's phrase parser reads back
  (:func:`bench.synth.text.parse_phrase`), so annotations can be checked and rendered;
- relational phrasing where the exemplars support it ("red circles on grass", "blue squares next
  to a star", "green triangles in a meadow"): the scene shared by most exemplar images (usually
  said when nearly all share it), or a shape beside most masked regions;
- noise, ``noise`` in [0, 1]: with probability ``GENERIC_RATE * noise`` a generic answer
  ("objects", "shapes", "things", "patterns", "parts of images"), each salient concept dropped
  with probability ``OMIT_RATE * noise``, and with probability ``DISTRACT_RATE * noise`` a concept
  of the whole images instead of the masked regions. ``noise=0``: careful annotators who name the
  dominant concepts; ``noise=1``: mostly generic answers.

Each of a unit's three annotators has its own generator, seeded by the export seed, the key, the
layer, the unit and the annotator's index, so annotations do not depend on the order of work.

:func:`synthetic_milannotations` writes them in the real format for every synthetic target:
a root with one directory per key ``<target>/synthetic`` (named ``<target>-synthetic``, as the
real zips name theirs) holding ``annotations.csv`` and, per non-final layer, ``ids.csv``,
``masks.npy`` and ``images.npy``, read back by :func:`bench.milannotations.load`.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.errors import ConfigError, DataError, UsageError
from bench.progress import progress_bar
from bench.synth import concepts as C

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache
    from bench.exemplars import ProbeViews
    from bench.probes.base import ProbeSet
    from bench.targets import Target

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Bump when the annotations written for the same exemplars, noise and seed change.
ANNOTATOR_VERSION = "4"
#: Noise of the embedded default: mostly careful, sometimes generic or incomplete.
DEFAULT_NOISE = 0.2
ANNOTATORS_PER_UNIT = 3
#: MILANNOTATIONS dataset name of the synthetic keys ("<target>/synthetic").
SYNTHETIC_DATASET = "synthetic"
#: Cache stages: exemplars of one target, and the annotated export of several targets.
EXEMPLAR_STAGE = "milan-exemplars"
EXPORT_STAGE = "synth-milannotations"

#: A value is salient when it covers this share of its category's masked pixels ...
SALIENT = 0.6
#: ... and two values are, as a disjunction, when together they cover this share, the second
#: at least ``PAIR_MIN``.
PAIR_SALIENT = 0.75
PAIR_MIN = 0.2
#: A pair is weaker evidence than one value covering as much.
PAIR_WEIGHT = 0.8
#: Besides the strongest object category, a pair of values is named from this strength on (so
#: that a careful annotator says "red stars", not "red dotted or plain stars").
SECONDARY = 0.7
#: Objects covering this share of the masked pixels are what an annotator looks at, however
#: consistent the background around them (figure over ground).
OBJECT_ATTENTION = 0.3
#: Context: a background in at least this share of the exemplar images, a shape beside the masks
#: (at least ``CONTEXT_PIXELS`` of its pixels outside the mask) in at least this share of them.
CONTEXT_SHARE = 0.5
CONTEXT_PIXELS = 20
#: Probability that an annotator mentions available context ...
RELATION_RATE = 0.35
#: ... and a scene shared by at least ``SCENE_CONSISTENT`` of the exemplar images.
SCENE_RATE = 0.75
SCENE_CONSISTENT = 0.9
#: Probability that a salient "plain" pattern is mentioned (people rarely say it).
PLAIN_RATE = 0.3
#: Noise rates at noise = 1 (they scale linearly with the noise level).
GENERIC_RATE = 0.9
OMIT_RATE = 0.5
DISTRACT_RATE = 0.2

GENERIC_ANSWERS: tuple[str, ...] = ("objects", "shapes", "things", "patterns", "parts of images")
_GENERIC_NOUNS: tuple[str, ...] = ("objects", "shapes", "things")
_OBJECT_CATEGORIES: tuple[str, ...] = ("color", "object", "pattern")

# Shape nouns in the plural as (adjective before the modifiers, head): "round" + "red" + "shapes".
_SHAPE_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("", "circles"), ("round", "shapes"), ("", "discs"), ("round", "objects")),
    "square": (("", "squares"), ("", "boxes"), ("", "square shapes"), ("", "rectangles")),
    "triangle": (("", "triangles"), ("", "triangle shapes")),
    "star": (("", "stars"), ("", "star shapes")),
    "cross": (("", "crosses"), ("", "plus signs"), ("", "cross shapes")),
    "diamond": (("", "diamonds"), ("", "diamond shapes"), ("", "rhombus shapes")),
}
_SHAPE_SINGULAR: dict[str, tuple[str, ...]] = {
    "circle": ("a circle", "a disc"),
    "square": ("a square", "a box"),
    "triangle": ("a triangle",),
    "star": ("a star",),
    "cross": ("a cross", "a plus sign"),
    "diamond": ("a diamond",),
}
# Patterns before the noun, and after it.
_PATTERN_PRE: dict[str, tuple[str, ...]] = {
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka dot"),
    "checkered": ("checkered", "checkerboard", "chequered"),
    "plain": ("plain", "solid"),
}
_PATTERN_POST: dict[str, tuple[str, ...]] = {
    "striped": ("with stripes",),
    "dotted": ("with dots", "with spots"),
    "checkered": ("with a checkerboard pattern",),
    "plain": ("in a single solid colour",),
}
# A pattern named on its own.
_PATTERN_NOUNS: dict[str, tuple[str, ...]] = {
    "striped": ("stripes", "striped patterns", "stripy shapes"),
    "dotted": ("dots", "polka dots", "spots", "dotted patterns"),
    "checkered": ("checkerboard patterns", "checkered shapes", "chequered patterns"),
    "plain": ("plain shapes", "solid shapes"),
}
_MATERIAL_NOUNS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "grassy ground", "a lawn", "grass in a meadow"),
    "sky": ("sky", "the sky", "clouds in the sky"),
    "water": ("water", "the sea", "waves on water", "water of a lake"),
    "sand": ("sand", "sandy ground", "dunes of sand", "sand on a beach"),
    "brick": ("brick", "a brick wall", "bricks"),
    "wood": ("wood", "wooden planks", "a wooden floor"),
    "snow": ("snow", "snowy ground", "a snowfield covered in snow"),
}
# Where the objects are, by the exemplar images' scene: its material or the scene itself.
_IN_SCENE: dict[str, tuple[str, ...]] = {
    "meadow": ("on grass", "on a lawn", "in a meadow"),
    "skyscape": ("in the sky", "against the sky", "against clouds in the sky"),
    "lake": ("on water", "on the sea", "on a lake"),
    "beach": ("on sand", "on a sandy beach", "on a beach"),
    "street": ("on a brick wall", "in front of bricks", "on a street"),
    "cabin": ("on wood", "on wooden planks", "in a wooden cabin"),
    "snowfield": ("on snow", "in the snow", "in a snowfield"),
}


# --- what the masks cover ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitContent:
    """What a unit's exemplar masks cover.

    ``shares``: category (``color``, ``object``, ``pattern``, ``material``) -> concept -> share
    of that category's labelled masked pixels (sums to 1 where any are labelled).
    ``object_fraction``: share of the masked pixels on objects. ``scenes``: scene -> share of the
    exemplar images. ``beside``: shape -> share of the exemplar images with that shape outside
    the mask. ``image_shares``: like ``shares`` over the whole images (what a distracted
    annotator describes). ``masked``: share of all exemplar pixels inside the masks.
    """

    shares: dict[str, dict[str, float]]
    object_fraction: float
    scenes: dict[str, float]
    beside: dict[str, float]
    image_shares: dict[str, dict[str, float]]
    masked: float

    @property
    def empty(self) -> bool:
        return self.masked == 0.0


def _category_shares(values: np.ndarray) -> dict[str, float]:
    import numpy as np

    values = values[values > 0]
    if values.size == 0:
        return {}
    counts = np.bincount(values, minlength=len(C.CATALOGUE) + 1)
    found = np.flatnonzero(counts)
    total = float(counts.sum())
    return {C.by_number(int(n)).name: float(counts[n]) / total for n in found}


def unit_content(masks: np.ndarray, labels: np.ndarray, scenes: np.ndarray) -> UnitContent:
    """The content of one unit's exemplars.

    ``masks``: uint8/bool ``[k, 1, H, W]`` (or ``[k, H, W]``); ``labels``: int ``[k, 4, H, W]``
    catalogue numbers in ``concepts.PIXEL_CATEGORIES`` order (0 unlabelled); ``scenes``: int
    ``[k]`` scene label numbers.
    """
    import numpy as np

    m = np.asarray(masks).astype(bool)
    if m.ndim == 4:
        m = m[:, 0]
    labels = np.asarray(labels)
    k = m.shape[0]
    if labels.shape[0] != k or labels.shape[2:] != m.shape[1:]:
        raise UsageError(
            f"Expected labels [k, {len(C.PIXEL_CATEGORIES)}, H, W] matching masks "
            f"{tuple(m.shape)}, got {tuple(labels.shape)}."
        )
    shares, image_shares = {}, {}
    for j, cat in enumerate(C.PIXEL_CATEGORIES):
        shares[cat] = _category_shares(labels[:, j][m].astype(np.int64))
        image_shares[cat] = _category_shares(labels[:, j].reshape(-1).astype(np.int64))
    n_masked = int(m.sum())
    obj = C.PIXEL_CATEGORIES.index("object")
    on_objects = int((labels[:, obj][m] > 0).sum())
    scene_names = [C.by_number(int(s)).name for s in np.asarray(scenes).reshape(-1)]
    scene_share = {s: scene_names.count(s) / k for s in sorted(set(scene_names))} if k else {}
    beside: dict[str, float] = {}
    for shape in C.SHAPES:
        num = C.number(shape)
        outside = ((labels[:, obj] == num) & ~m).reshape(k, -1).sum(axis=1)
        count = int((outside >= CONTEXT_PIXELS).sum())
        if count:
            beside[shape] = count / k
    return UnitContent(
        shares=shares,
        object_fraction=on_objects / n_masked if n_masked else 0.0,
        scenes=scene_share,
        beside=beside,
        image_shares=image_shares,
        masked=n_masked / m.size if m.size else 0.0,
    )


def salient(shares: dict[str, float]) -> tuple[tuple[str, ...], float]:
    """The salient values of one category and their strength: one dominant value (strength: its
    share), a dominant pair (``PAIR_WEIGHT`` times their joint share), or ``((), 0.0)``."""
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        return (), 0.0
    if ranked[0][1] >= SALIENT:
        return (ranked[0][0],), ranked[0][1]
    if len(ranked) > 1 and ranked[1][1] >= PAIR_MIN and ranked[0][1] + ranked[1][1] >= PAIR_SALIENT:
        return (ranked[0][0], ranked[1][0]), PAIR_WEIGHT * (ranked[0][1] + ranked[1][1])
    return (), 0.0


def object_concepts(shares: dict[str, dict[str, float]]) -> dict[str, tuple[str, ...]]:
    """What a careful annotator names about objects (category -> values; empty when not named):
    the strongest salient category, every other category with one salient value, and other
    pairs only from strength ``SECONDARY`` on (so "red stars", not "red dotted or plain stars")."""
    found = {c: salient(shares.get(c, {})) for c in _OBJECT_CATEGORIES}
    ranked = sorted(_OBJECT_CATEGORIES, key=lambda c: -found[c][1])
    named: dict[str, tuple[str, ...]] = {c: () for c in _OBJECT_CATEGORIES}
    for i, c in enumerate(ranked):
        values, strength = found[c]
        if values and (i == 0 or len(values) == 1 or strength >= SECONDARY):
            named[c] = values
    return named


# --- one annotator ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Annotator:
    """One simulated annotator: ``describe`` turns a :class:`UnitContent` into one description.

    ``noise`` in [0, 1] (see the module docstring); ``rng`` is this annotator's own generator.
    """

    noise: float
    rng: np.random.Generator

    def __post_init__(self) -> None:
        check_noise(self.noise)

    # small helpers over the annotator's generator
    def _chance(self, p: float) -> bool:
        return p > 0 and float(self.rng.random()) < p

    def _pick(self, options: Sequence[_T]) -> _T:
        return options[int(self.rng.integers(len(options)))]

    def _weighted(self, shares: dict[str, float]) -> str | None:
        if not shares:
            return None
        names = sorted(shares)
        w = [shares[n] ** 2 for n in names]
        total = sum(w)
        r = float(self.rng.random()) * total
        for name, wi in zip(names, w, strict=True):
            r -= wi
            if r <= 0:
                return name
        return names[-1]

    def describe(self, content: UnitContent) -> str:
        if content.empty or self._chance(GENERIC_RATE * self.noise):
            return self._pick(GENERIC_ANSWERS)
        shares = content.shares
        if self._chance(DISTRACT_RATE * self.noise):
            shares = content.image_shares  # describes the images, not the highlighted regions
        found = object_concepts(shares)
        materials, bg_strength = salient(shares.get("material", {}))
        obj_strength = max(
            (salient(shares.get(c, {}))[1] for c in _OBJECT_CATEGORIES if found[c]), default=0.0
        )
        # Figure over ground: objects covering OBJECT_ATTENTION of the masks hold the eye.
        obj_score = obj_strength * min(1.0, content.object_fraction / OBJECT_ATTENTION)
        bg_score = (1.0 - content.object_fraction) * bg_strength
        if obj_score == 0.0 and bg_score == 0.0:
            # Nothing dominates: name what this annotator happens to notice most.
            if content.object_fraction < 0.5:
                pick = self._weighted(shares.get("material", {}))
                if pick is not None:
                    return self._background((pick,), content)
            cat = self._pick(("color", "object"))
            pick = self._weighted(shares.get(cat, {}))
            if pick is None:
                return self._pick(GENERIC_ANSWERS)
            return self._objects({c: ((pick,) if c == cat else ()) for c in found}, content)
        if obj_score >= bg_score:
            return self._objects(found, content)
        return self._background(materials, content)

    # --- objects ---------------------------------------------------------------------------

    def _omit(self, values: tuple[str, ...]) -> tuple[str, ...]:
        return () if self._chance(OMIT_RATE * self.noise) else values

    def _objects(self, found: dict[str, tuple[str, ...]], content: UnitContent) -> str:
        colors = self._omit(found["color"])
        shapes = self._omit(found["object"])
        patterns = self._omit(found["pattern"])
        if patterns == ("plain",) and not self._chance(PLAIN_RATE):
            patterns = ()
        if not (colors or shapes or patterns):
            return self._pick(_GENERIC_NOUNS)
        if patterns and not (colors or shapes) and self._chance(0.6):
            phrase = " or ".join(self._pick(_PATTERN_NOUNS[p]) for p in patterns)
        else:
            phrase = self._object_phrase(colors, shapes, patterns)
        return self._relate(phrase, content, shapes)

    def _object_phrase(
        self, colors: tuple[str, ...], shapes: tuple[str, ...], patterns: tuple[str, ...]
    ) -> str:
        col = " or ".join(colors)
        if shapes:
            nouns = [self._pick(_SHAPE_NOUNS[s]) for s in shapes]
            lead, head = nouns[0]
            tail = " or ".join(f"{a} {b}".strip() for a, b in nouns[1:])
            if tail:
                head = f"{head} or {tail}"
        else:
            lead, head = "", self._pick(_GENERIC_NOUNS)
        pat_pre = " or ".join(self._pick(_PATTERN_PRE[p]) for p in patterns)
        style = int(self.rng.integers(4))
        if style == 1 and col:  # "circles that are red", "round shapes that are blue or yellow"
            words = [lead, pat_pre, head, "that are", col]
        elif style == 2 and patterns and len(patterns) == 1:  # "red circles with stripes"
            words = [lead, col, head, self._pick(_PATTERN_POST[patterns[0]])]
        elif style == 3:  # "striped red circles"
            words = [lead, pat_pre, col, head]
        else:  # "red striped circles"
            words = [lead, col, pat_pre, head]
        return " ".join(w for w in words if w)

    def _relate(self, phrase: str, content: UnitContent, named_shapes: tuple[str, ...]) -> str:
        bg = max(content.scenes.items(), key=lambda kv: (kv[1], kv[0]), default=None)
        if bg is not None and bg[1] >= SCENE_CONSISTENT and self._chance(SCENE_RATE):
            # Every exemplar is in the same place: careful annotators usually say where.
            return f"{phrase} {self._pick(_IN_SCENE[bg[0]])}"
        options: list[str] = []
        if bg is not None and bg[1] >= CONTEXT_SHARE:
            options.append(self._pick(_IN_SCENE[bg[0]]))
        near = [
            s for s, f in content.beside.items() if f >= CONTEXT_SHARE and s not in named_shapes
        ]
        if near:
            shape = self._pick(sorted(near))
            how = self._pick(("next to", "beside", "near"))
            options.append(f"{how} {self._pick(_SHAPE_SINGULAR[shape])}")
        if options and self._chance(RELATION_RATE):
            return f"{phrase} {self._pick(options)}"
        return phrase

    # --- background --------------------------------------------------------------------------

    def _background(self, materials: tuple[str, ...], content: UnitContent) -> str:
        kept = self._omit(materials)
        if not kept:
            return self._pick(("the background", "backgrounds", "textures", "surfaces"))
        phrase = " or ".join(self._pick(_MATERIAL_NOUNS[m]) for m in kept)
        if 0.2 <= content.object_fraction < 0.5 and self._chance(RELATION_RATE):
            phrase = f"{phrase} {self._pick(('around objects', 'around shapes', 'behind objects'))}"
        return phrase


def check_noise(noise: float) -> float:
    if not isinstance(noise, (int, float)) or not 0.0 <= float(noise) <= 1.0:
        raise ConfigError(f"Expected an annotator noise level in [0, 1], got {noise!r}.")
    return float(noise)


def annotator_rng(seed: int, key: str, layer: str, unit: int, index: int) -> np.random.Generator:
    """The generator of annotator ``index`` of one unit (independent of the order of work)."""
    import numpy as np

    return np.random.default_rng(
        [int(seed), zlib.crc32(key.encode()), zlib.crc32(layer.encode()), int(unit), int(index)]
    )


def annotate(
    content: UnitContent,
    *,
    noise: float,
    seed: int,
    key: str,
    layer: str,
    unit: int,
    n: int = ANNOTATORS_PER_UNIT,
) -> tuple[str, ...]:
    """``n`` descriptions of one unit, one per independent annotator."""
    return tuple(
        Annotator(noise=noise, rng=annotator_rng(seed, key, layer, unit, i)).describe(content)
        for i in range(n)
    )


# --- the synthetic probe's labels --------------------------------------------------------------


class ProbeLabels:
    """Per-pixel labels of a synthetic Broden probe, as catalogue numbers, read on demand.

    ``get(indices, size)``: int16 ``[n, 4, size, size]`` (``PIXEL_CATEGORIES`` order, resized by
    nearest neighbour when the segmentation size differs) and int64 ``[n]`` scene numbers.
    """

    def __init__(self, probe: ProbeSet):
        import numpy as np

        if not probe.has_segmentations:
            raise UsageError(
                f"Simulated annotators read concept segmentations, but the probe set "
                f"'{probe.name}' has none; use the synthetic probe."
            )
        self.probe = probe
        self.to_catalogue: dict[int, int] = {}
        for c in probe.concepts():
            try:
                self.to_catalogue[c.number] = C.concept(c.name).number
            except KeyError:
                raise UsageError(
                    f"Simulated annotators describe synthetic-world concepts; the probe set "
                    f"'{probe.name}' has the concept {c.name!r}, which the world does not know. "
                    "Use the synthetic probe."
                ) from None
        self._lut = np.zeros(max(self.to_catalogue, default=0) + 1, dtype=np.int16)
        for src, dst in self.to_catalogue.items():
            self._lut[src] = dst
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def _one(self, i: int) -> tuple[np.ndarray, int]:
        import numpy as np

        if i not in self._cache:
            seg = self.probe.segmentation(i)
            sh, sw = self.probe.seg_size
            arr = np.zeros((len(C.PIXEL_CATEGORIES), sh, sw), dtype=np.int16)
            lut = self._lut
            for j, cat in enumerate(C.PIXEL_CATEGORIES):
                if cat in seg.pixel:
                    layer = seg.pixel[cat][0]
                    arr[j] = lut[np.clip(layer, 0, len(lut) - 1)]
            scene = seg.image.get("scene", ())
            if not scene:
                raise DataError(
                    f"Probe image {i} of '{self.probe.name}' has no scene label; "
                    "expected the synthetic probe, which labels every image's scene."
                )
            self._cache[i] = (arr, int(self.to_catalogue.get(scene[0], 0)))
        return self._cache[i]

    def get(self, indices: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        flat = [int(i) for i in np.asarray(indices).reshape(-1)]
        items = [self._one(i) for i in flat]
        labels = np.stack([a for a, _ in items]) if items else np.zeros((0, 4, *size), np.int16)
        if labels.shape[2:] != tuple(size):
            sh, sw = labels.shape[2:]
            rows = np.minimum(((np.arange(size[0]) + 0.5) * sh / size[0]).astype(int), sh - 1)
            cols = np.minimum(((np.arange(size[1]) + 0.5) * sw / size[1]).astype(int), sw - 1)
            labels = labels[:, :, rows][:, :, :, cols]
        scenes = np.asarray([s for _, s in items], dtype=np.int64)
        return labels, scenes


# --- the export --------------------------------------------------------------------------------


def synthetic_key(target: str) -> str:
    """The MILANNOTATIONS key of a synthetic target: ``"synth.resnet/synthetic"``."""
    return f"{target}/{SYNTHETIC_DATASET}"


def key_dirname(key: str) -> str:
    """The directory of a key: ``/`` becomes ``-``, as the real zips are named."""
    return key.replace("/", "-")


def annotated_layers(target: Target) -> list[str]:
    """The layers annotated for a target: its default layers but the final one."""
    return [layer for layer in target.spec.layers if layer != target.spec.final_layer]


def _exemplar_parts(target: Target, probe: ProbeSet, device: str) -> dict[str, Any]:
    from bench.evidence import MILAN_QUANTILE
    from bench.exemplars import DEFAULT_K, EXEMPLARS_VERSION
    from bench.record import record_key_parts

    return {
        "exemplars_version": EXEMPLARS_VERSION,
        "record": record_key_parts(target, probe, annotated_layers(target), **_record_args(device)),
        "quantile": MILAN_QUANTILE.key,
        "k": DEFAULT_K,
    }


def _record_args(device: str) -> dict[str, Any]:
    from bench.evidence import MILAN_QUANTILE
    from bench.exemplars import DEFAULT_K

    return {"k": DEFAULT_K, "topk_by": ("max",), "quantiles": (MILAN_QUANTILE,), "device": device}


def exemplars_cached(
    cache: Cache,
    target: Target,
    probe: ProbeSet,
    *,
    device: str = "cpu",
    views: ProbeViews | None = None,
    progress: bool = False,
) -> Path:
    """The entry directory of the target's exemplars on ``probe`` (stage ``milan-exemplars``):
    per annotated layer a directory with ``ids.csv``, ``masks.npy`` and ``images.npy``.

    The evidence is recorded (through its own cache) only when this entry is missing.
    """
    from bench.exemplars import DEFAULT_K, write_exemplars
    from bench.record import record_cached

    layers = annotated_layers(target)

    def write(directory: Path) -> None:
        evidence = record_cached(
            cache, target, probe, layers, progress=progress, **_record_args(device)
        )
        for layer in layers:
            write_exemplars(
                directory / layer, evidence, layer, k=DEFAULT_K, views=views, progress=progress
            )

    path, _ = cache.get_or_create(EXEMPLAR_STAGE, _exemplar_parts(target, probe, device), write)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_annotations_csv(
    path: str | os.PathLike[str], rows: Sequence[tuple[str, int, str]]
) -> None:
    """``annotations.csv``: header ``layer,unit,summary``, one row per description."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer", "unit", "summary"])
        for layer, unit, text in rows:
            w.writerow([layer, int(unit), text])


def annotate_export(
    directory: Path,
    key: str,
    labels: ProbeLabels,
    *,
    noise: float,
    seed: int,
    progress: bool = False,
) -> int:
    """Write ``annotations.csv`` of a key directory whose layer directories hold ``ids.csv`` and
    ``masks.npy``; return the number of annotated units."""
    import numpy as np

    from bench.milannotations import read_ids_csv

    layers = sorted(p.name for p in directory.iterdir() if p.is_dir())
    rows: list[tuple[str, int, str]] = []
    total = 0
    for layer in layers:
        masks = np.load(directory / layer / "masks.npy", mmap_mode="r", allow_pickle=False)
        total += masks.shape[0]
    with progress_bar(total=total, desc=f"annotate {key}", enabled=progress, unit="unit") as bar:
        for layer in layers:
            masks = np.load(directory / layer / "masks.npy", mmap_mode="r", allow_pickle=False)
            ids = read_ids_csv(directory / layer / "ids.csv")
            size = (int(masks.shape[-2]), int(masks.shape[-1]))
            for unit in range(masks.shape[0]):
                lab, scenes = labels.get(ids[unit], size)
                content = unit_content(np.asarray(masks[unit]), lab, scenes)
                for text in annotate(
                    content, noise=noise, seed=seed, key=key, layer=layer, unit=unit
                ):
                    rows.append((layer, unit, text))
                bar.update(1)
    write_annotations_csv(directory / "annotations.csv", rows)
    return total


def synthetic_milannotations(
    cache: Cache | None = None,
    *,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    targets: Sequence[str] | None = None,
    probe: ProbeSet | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Path:
    """The synthetic MILANNOTATIONS root (one directory per key ``<target>/synthetic``).

    ``targets``: synthetic target names (default: every one,
    :func:`bench.synth.targets.synthetic_target_specs`); ``probe``: the probe set the exemplars
    come from (default: the synthetic Broden probe). A cached stage keyed by the targets'
    identities (weights hashes), the probe's identity, the exemplar settings, ``noise``,
    ``seed`` and :data:`ANNOTATOR_VERSION`; the layer arrays are hard links to the per-target
    exemplar entries, so annotations at another noise level or seed cost only their CSV.
    """
    from bench.cache import Cache
    from bench.schema import dumps
    from bench.synth.probes import synthetic_probe
    from bench.synth.targets import synthetic_target_specs
    from bench.targets import load_target

    noise = check_noise(noise)
    if int(seed) < 0:
        raise ConfigError(f"Expected a seed >= 0 for the simulated annotators, got {seed}.")
    cache = cache if cache is not None else Cache()
    available = [s.name for s in synthetic_target_specs()]
    names = list(dict.fromkeys(targets)) if targets is not None else available
    for name in names:
        if name not in available:
            from bench.errors import UnknownNameError

            raise UnknownNameError("synthetic target", name, available)
    if not names:
        raise UsageError("Expected at least one synthetic target to annotate, got none.")
    probe = probe if probe is not None else synthetic_probe(cache.root)
    loaded = {name: load_target(name) for name in names}
    parts = {
        "annotator_version": ANNOTATOR_VERSION,
        "annotators_per_unit": ANNOTATORS_PER_UNIT,
        "noise": noise,
        "seed": int(seed),
        "exemplars": {
            name: cache.key(EXEMPLAR_STAGE, _exemplar_parts(t, probe, device))
            for name, t in loaded.items()
        },
        "probe": probe.identity(),
    }

    def write(directory: Path) -> None:
        from bench.exemplars import ProbeViews

        labels = ProbeLabels(probe)
        views: dict[str, ProbeViews] = {}  # one per preprocessing: each image is loaded once
        for name, target in loaded.items():
            prep = target.preprocessing
            view = views.setdefault(dumps(prep.to_json()), ProbeViews(probe, prep))
            src = exemplars_cached(
                cache, target, probe, device=device, views=view, progress=progress
            )
            key = synthetic_key(name)
            out = directory / key_dirname(key)
            for layer_dir in sorted(p for p in src.iterdir() if p.is_dir()):
                (out / layer_dir.name).mkdir(parents=True)
                for f in sorted(layer_dir.iterdir()):
                    _link_or_copy(f, out / layer_dir.name / f.name)
            annotate_export(out, key, labels, noise=noise, seed=int(seed), progress=progress)

    path, hit = cache.get_or_create(EXPORT_STAGE, parts, write)
    log.info("synthetic MILANNOTATIONS (noise %g, seed %d): %s", noise, seed, path)
    return path
