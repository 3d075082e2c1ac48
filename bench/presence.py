"""Concept presence of a label over a probe set (NeuronEval's ``c_t``), from segmentations.

A label is first *read* into the probe's own concepts, as a :class:`~bench.formula.Formula`
over concept names (:func:`read_label`), in this order:

1. a formula tree in the description's extras (CompExp, INVERT);
2. the label is one concept's name (Broden's clean or raw name: ``red``, ``red-c``);
3. the label is a formula in the harness's or compexp's syntax (``water OR river``,
   ``((pool table OR bed) AND (NOT blue-c))``);
4. a *label reader* registered for the probe set (``bench.registry.LABEL_READERS``, keyed by
   the probe's name): the synthetic world registers its phrase parser, which reads free text
   ("red striped circles") into the world's concepts. Readers are plug-ins: this module knows
   nothing of the synthetic world. A reader may mark part of its tree as holding *on the
   image*, ``["image", F]`` (a context: "red squares on grass" reads as
   ``["and", red AND square, ["image", grass]]``); its leaves become *image-level leaves*
   (:func:`image_leaf`) of a per-pixel formula (see below).

A label that reads into nothing, or into a leaf that is not a concept of the probe, is
**unparsed**: it is counted and reported as such, never scored as absent (a presence of zero
would turn every unit's AUROC into NaN or chance silently).

Presence (:class:`SegmentationPresence`) is taken from the ground-truth segmentations through
the probe's :class:`~bench.dissect.ConceptTable`: a formula is evaluated with AND/OR/NOT on the
concept masks *per pixel* (CompExp's semantics; image-level labels such as scenes count as
whole-image masks, as NetDissect treats them). A formula tree whose description says
``extras["formula_level"] = "image"`` (INVERT: AND/OR/NOT of image-level labels) is evaluated
per image instead: each leaf is on an image when it covers more than ``min_fraction`` of it, the
logic is taken over images ("water AND red": water and something red on the image, which no
single pixel is). A per-pixel formula may have *image-level leaves* (a reader's context): such a
leaf is on an image when its concept covers more than ``min_fraction`` of it, and is broadcast
over the image's pixels, so "red AND square AND image:grass" holds on the red square pixels of
the images with grass (a mixed-level formula; NOT and OR work as on any leaf). Then

* per pixel: ``bool [n, sh, sw]`` for chosen images (:meth:`SegmentationPresence.pixel_masks`);
* per image: the share of the image's pixels where the formula holds (``coverage``,
  ``float [F, N]``), and the presence ``1.0`` where that share exceeds ``min_fraction``
  (default 0: any pixel of the concept), else ``0.0``.

Everything is one matrix product: ``counts [N, n_sig] @ holds [n_sig, F]`` where ``counts`` is
each image's number of pixels per signature and ``holds`` each formula evaluated on the
signatures, so all labels of a layer are done at once.

``clip`` presence (:class:`ClipPresence`) reads no concepts: any free text is scored by a joint
image-text model (the ``image_text_encoder`` component: open_clip ViT-B/16 by default, any
open_clip model by option, the synthetic world's recogniser offline), turned into presence in
one of two ways (the result says which):

* ``softmax``: per image, the label against a concept set (the probe's concept names,
  or a list given), ``softmax(logit_scale * cos)`` over the set plus the label, and the label's
  probability is its presence, in [0, 1] (a label that is itself in the set is not counted
  twice). ``logit_scale`` is CLIP's 100.
* ``threshold`` (the faithfulness suite's default): presence 1 where ``cos(image, label)``
  exceeds a threshold: given, or calibrated on a probe with segmentations as the global threshold
  that maximises the mean F1 of the thresholded cosines against the ground truth over the probe's
  concepts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, DataError
from bench.formula import Formula, Leaf, from_json, parse, parse_compexp, rename

if TYPE_CHECKING:
    import numpy as np

    from bench.dissect import ConceptTable

log = logging.getLogger(__name__)

#: ``reader(label) -> JSON formula tree over the probe's concept names, or None``.
LabelReader = Callable[[str], "list | None"]

_KEYWORD = re.compile(r"\b(AND|OR|NOT)\b")

PRESENCE_MODES: tuple[str, ...] = ("segmentation", "clip")
#: How a formula tree in a description's extras is evaluated (:attr:`Reading.level`).
FORMULA_LEVELS: tuple[str, ...] = ("pixel", "image")
#: Prefix of an image-level leaf's name in a formula (:func:`image_leaf`); never a concept's.
IMAGE_LEAF_PREFIX = "image:"


def image_leaf(name: str) -> str:
    """The name of the image-level leaf of concept ``name``: it holds on every pixel of an image
    that shows the concept (more than ``min_fraction`` of its pixels)."""
    return IMAGE_LEAF_PREFIX + name


def split_leaf(name: str) -> tuple[str, bool]:
    """``(concept name, whether the leaf is image-level)`` of a formula leaf's name."""
    if name.startswith(IMAGE_LEAF_PREFIX):
        return name[len(IMAGE_LEAF_PREFIX) :], True
    return name, False


def image_leaf_names(formula: Formula) -> tuple[str, ...]:
    """The concepts of ``formula``'s image-level leaves, in order, without repeats."""
    return tuple(dict.fromkeys(n for n, img in map(split_leaf, formula.leaves()) if img))


def reader_formula(tree: Any) -> Formula:
    """A label reader's JSON tree as a formula: ``["image", F]`` nodes (F holds on the image)
    become F with every leaf image-level (:func:`image_leaf`); the rest as
    :func:`bench.formula.from_json` reads it. Raises :class:`~bench.errors.FormulaError` for a
    malformed tree."""
    from bench.errors import FormulaError
    from bench.formula import MAX_DEPTH

    def walk(node: Any, image: bool, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FormulaError(f"Expected a formula tree at most {MAX_DEPTH} levels deep.")
        if not isinstance(node, (list, tuple)) or not node:
            return node  # from_json says what is wrong
        if node[0] == "image":
            if len(node) != 2:
                raise FormulaError(
                    f"Expected ['image', F] with one operand, got {len(node) - 1} operands."
                )
            return walk(node[1], True, depth + 1)
        if node[0] == "leaf":
            if image and len(node) == 2 and isinstance(node[1], str) and node[1]:
                return ["leaf", image_leaf(node[1])]
            return list(node)
        return [node[0], *(walk(x, image, depth + 1) for x in node[1:])]

    return from_json(walk(tree, False, 1))


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


@dataclass(frozen=True, kw_only=True, slots=True)
class Reading:
    """How a label was read. ``formula`` is over the probe's clean concept names, ``None`` when
    the label is unparsed; ``source``: ``formula-tree``, ``concept``, ``formula``,
    ``reader:<probe>`` or ``unparsed``; ``reason`` says why a label is unparsed."""

    label: str
    formula: Formula | None
    source: str
    reason: str = ""
    #: ``pixel``: the formula holds where it holds on a pixel (CompExp); ``image``: its leaves
    #: are image-level labels (a concept is on an image when it covers more than
    #: ``min_fraction`` of it) and the logic is taken per image (INVERT, whose description says
    #: so with ``extras["formula_level"] = "image"``).
    level: str = "pixel"

    @property
    def parsed(self) -> bool:
        """Scored: read into concepts, or free text scored by CLIP (``source="clip"``)."""
        return self.formula is not None or self.source == "clip"

    @property
    def image_leaves(self) -> tuple[str, ...]:
        """Concepts read as holding on the image (a reader's context; :func:`image_leaf`)."""
        return image_leaf_names(self.formula) if self.formula is not None else ()


def label_reader(probe_name: str) -> LabelReader | None:
    """The label reader registered for probe set ``probe_name``, or ``None``."""
    from bench.registry import LABEL_READERS

    if probe_name in LABEL_READERS:
        return LABEL_READERS.get(probe_name)  # type: ignore[no-any-return]
    return None


class ConceptNames:
    """The probe's concept names: clean and raw, matched case-insensitively, ``_`` = space."""

    def __init__(self, concepts: Iterable[Any]):
        self.clean: list[str] = []
        self._lookup: dict[str, str] = {}
        for c in concepts:
            self.clean.append(c.name)
            for n in (c.name, getattr(c, "raw_name", c.name)):
                self._lookup.setdefault(_norm(n), c.name)

    def get(self, name: str) -> str | None:
        return self._lookup.get(_norm(name))


def read_label(
    label: str,
    names: ConceptNames,
    *,
    extras: Any = None,
    reader: LabelReader | None = None,
) -> Reading:
    """Read ``label`` into a formula over the probe's concepts (see the module docstring)."""
    if not isinstance(label, str) or not label.strip():
        return Reading(label=str(label), formula=None, source="unparsed", reason="empty label")
    tree = extras.get("formula") if isinstance(extras, dict) else None
    tree_level = extras.get("formula_level", "pixel") if isinstance(extras, dict) else "pixel"
    if tree_level not in FORMULA_LEVELS:
        return Reading(
            label=label,
            formula=None,
            source="unparsed",
            reason=f"formula_level {tree_level!r} is not one of {', '.join(FORMULA_LEVELS)}",
        )
    candidates: list[tuple[str, Formula]] = []
    if isinstance(tree, (list, tuple)) and tree:
        try:
            candidates.append(("formula-tree", from_json(tree)))
        except BenchError as e:
            log.debug("formula tree of %r unreadable: %s", label, e)
    single = names.get(label)
    if single is not None:
        candidates.append(("concept", Leaf(single)))
    if _KEYWORD.search(label):
        for parser in (parse, parse_compexp):
            try:
                candidates.append(("formula", parser(label)))
                break
            except BenchError:
                continue
    why = "names no concept of the probe set"
    for source, formula in candidates:
        mapped, missing = _map_leaves(formula, names, reader)
        if mapped is not None:
            level = tree_level if source == "formula-tree" else "pixel"
            return Reading(label=label, formula=mapped, source=source, level=level)
        why = f"formula leaves not concepts of the probe set: {', '.join(missing)}"
    if candidates:  # a formula is explicit: its leaves must be concepts, no free-text reading
        return Reading(label=label, formula=None, source="unparsed", reason=why)
    if reader is not None:
        try:
            read = reader(label)
        except BenchError as e:
            read = None
            why = f"label reader failed: {e}"
        if read:
            try:
                from_reader: Formula | None = reader_formula(read)
            except BenchError as e:
                from_reader = None
                why = f"label reader gave a malformed formula tree: {e}"
            if from_reader is not None:
                mapped, missing = _map_leaves(from_reader, names, None, image_leaves=True)
                if mapped is not None:
                    return Reading(label=label, formula=mapped, source="reader")
                listed = ", ".join(missing)
                why = f"read into names that are not concepts of the probe set: {listed}"
    return Reading(label=label, formula=None, source="unparsed", reason=why)


def _map_leaves(
    formula: Formula,
    names: ConceptNames,
    reader: LabelReader | None,
    *,
    image_leaves: bool = False,
) -> tuple[Formula | None, list[str]]:
    """``formula`` over the probe's clean names, or ``(None, missing leaves)``. Image-level
    leaves (:func:`image_leaf`) are kept as such only with ``image_leaves`` (a reader's
    reading); elsewhere such a name is no concept."""
    mapping: dict[str, str] = {}
    missing = []
    for leaf in dict.fromkeys(formula.leaves()):
        name, image = split_leaf(leaf) if image_leaves else (leaf, False)
        found = names.get(name)
        if found is None and reader is not None:
            tree = reader(name)
            if tree and tree[0] == "leaf":
                found = names.get(str(tree[1]))
        if found is None:
            missing.append(name)
        else:
            mapping[leaf] = image_leaf(found) if image else found
    if missing:
        return None, missing
    return rename(formula, mapping), []


class SegmentationPresence:
    """Presence of formulas over the probe's images, from its concept table (see the module
    docstring). ``min_fraction``: an image shows the concept when more than this share of its
    pixels does (0: any pixel)."""

    def __init__(self, table: ConceptTable, *, min_fraction: float = 0.0):
        import numpy as np

        if not 0.0 <= min_fraction < 1.0:
            raise DataError(f"Expected 0 <= min_fraction < 1, got {min_fraction}.")
        clash = [c.name for c in table.concepts if split_leaf(c.name)[1]]
        if clash:
            raise DataError(
                f"Concept names must not start with {IMAGE_LEAF_PREFIX!r} (it marks image-level "
                f"leaves), got {clash[:3]}; rename those concepts in the probe's index."
            )
        self.table = table
        self.min_fraction = float(min_fraction)
        self.names = ConceptNames(table.concepts)
        self._code = {c.name: i + 1 for i, c in enumerate(table.concepts)}
        members = table.members.tocsc()
        self._member = members
        n, s = table.sig.shape
        n_sig = table.num_signatures
        counts = np.zeros((n, n_sig), dtype=np.float64)
        step = max(1, (1 << 22) // max(1, s))
        for start in range(0, n, step):
            block = np.asarray(table.sig[start : start + step], dtype=np.int64)
            rows = np.arange(block.shape[0], dtype=np.int64)[:, None] * n_sig + block
            counts[start : start + block.shape[0]] = np.bincount(
                rows.ravel(), minlength=block.shape[0] * n_sig
            ).reshape(block.shape[0], n_sig)
        #: float64 [N, n_sig]: pixels of each signature in each image.
        self.counts = counts
        self.pixels_per_image = float(s)
        self._image_has: dict[str, np.ndarray] = {}

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    def _leaf(self, name: str) -> np.ndarray:
        return self._member[:, self._code[name]].toarray().ravel() > 0

    def image_has(self, name: str) -> np.ndarray:
        """bool ``[N]``: the images showing concept ``name``: more than ``min_fraction`` of
        their pixels."""
        if name not in self._image_has:
            share = self.counts @ self._leaf(name).astype(self.counts.dtype)
            self._image_has[name] = share / self.pixels_per_image > self.min_fraction
        return self._image_has[name]

    def holds(self, formula: Formula, image_values: dict[str, bool] | None = None) -> np.ndarray:
        """bool ``[n_sig]``: where ``formula`` holds on the table's signatures. Image-level
        leaves (:func:`image_leaf`) take the value ``image_values[concept]`` on every
        signature (the formula on the pixels of an image with those concepts)."""
        import numpy as np

        from bench.formula import evaluate

        def leaf(name: str) -> np.ndarray:
            concept, image = split_leaf(name)
            if not image:
                return self._leaf(name)
            if image_values is None or concept not in image_values:
                raise DataError(
                    f"Formula {formula} has the image-level leaf {name!r}; its value per "
                    "signature depends on the image (use coverage() or pixel_masks())."
                )
            return np.full(self.table.num_signatures, bool(image_values[concept]))

        return evaluate(formula, leaf)

    def image_holds(self, formula: Formula) -> np.ndarray:
        """bool ``[N]``: the images where ``formula`` holds with image-level leaves (a concept is
        on an image when it covers more than ``min_fraction`` of its pixels), AND/OR/NOT taken
        per image (INVERT's semantics; a leaf marked image-level reads the same)."""
        from bench.formula import evaluate

        return evaluate(formula, lambda name: self.image_has(split_leaf(name)[0]))

    def coverage(
        self, formulas: Sequence[Formula], levels: Sequence[str] | None = None
    ) -> np.ndarray:
        """float64 ``[F, N]``: share of each image's pixels where each formula holds; for a
        formula of ``level`` ``image``, 1.0 on the images where it holds (:meth:`image_holds`)
        and 0.0 elsewhere. A per-pixel formula with image-level leaves is evaluated once per
        combination of those leaves' values that some image has, each image counting the
        pixels of its own combination; all in one matrix product."""
        import numpy as np

        n = self.num_images
        if not formulas:
            return np.zeros((0, n))
        levels = list(levels) if levels is not None else ["pixel"] * len(formulas)
        columns: list[np.ndarray] = []  # bool [n_sig] each
        column = np.zeros((len(formulas), n), dtype=np.int64)  # [F, N]: each image's column
        for j, (f, level) in enumerate(zip(formulas, levels, strict=True)):
            if level == "image":
                continue  # below
            concepts = image_leaf_names(f)
            if not concepts:
                column[j] = len(columns)
                columns.append(self.holds(f))
                continue
            has = np.stack([self.image_has(c) for c in concepts], axis=1)  # [N, k]
            combos, which = np.unique(has, axis=0, return_inverse=True)
            column[j] = len(columns) + which.reshape(-1)
            for combo in combos:
                columns.append(self.holds(f, dict(zip(concepts, map(bool, combo), strict=True))))
        out = np.zeros((len(formulas), n))
        if columns:
            holds = np.stack(columns, axis=1).astype(np.float64)  # [n_sig, P]
            per_column = self.counts @ holds / self.pixels_per_image  # [N, P]
            out = per_column[np.arange(n)[None, :], column]
        for j, (f, level) in enumerate(zip(formulas, levels, strict=True)):
            if level == "image":
                out[j] = self.image_holds(f).astype(np.float64)
        return out  # type: ignore[no-any-return]

    def presence(self, formulas: Sequence[Formula]) -> np.ndarray:
        """float64 ``[F, N]`` in {0, 1}: coverage above ``min_fraction``."""
        import numpy as np

        return (self.coverage(formulas) > self.min_fraction).astype(np.float64)

    def pixel_masks(self, formula: Formula, images: Sequence[int]) -> np.ndarray:
        """bool ``[n, sh, sw]``: where ``formula`` holds in each of ``images`` (per pixel; an
        image-level leaf is broadcast over the pixels of the images that show its concept)."""
        import numpy as np

        from bench.formula import evaluate

        sh, sw = self.table.seg_size
        idx = np.asarray(images, dtype=np.int64)
        sig = np.asarray(self.table.sig[idx], dtype=np.int64)
        if not image_leaf_names(formula):
            return self.holds(formula)[sig].reshape(len(idx), sh, sw)

        def leaf(name: str) -> np.ndarray:
            concept, image = split_leaf(name)
            if image:
                return self.image_has(concept)[idx][:, None]
            return self._leaf(name)[sig]

        out = np.broadcast_to(evaluate(formula, leaf), sig.shape)
        return out.reshape(len(idx), sh, sw).copy()


@dataclass(kw_only=True)
class LabelPresence:
    """Presence of many labels: ``presence`` float64 ``[L, N]`` (rows of unparsed labels are
    NaN), ``readings`` one :class:`Reading` per label."""

    presence: np.ndarray
    coverage: np.ndarray
    readings: list[Reading]

    @property
    def unparsed(self) -> int:
        return sum(not r.parsed for r in self.readings)


def segmentation_presence(
    labels: Sequence[str],
    source: SegmentationPresence,
    *,
    extras: Sequence[Any] | None = None,
    reader: LabelReader | None = None,
) -> LabelPresence:
    """Read every label and compute its presence (one matrix product for all of them)."""
    import numpy as np

    extras = list(extras) if extras is not None else [None] * len(labels)
    memo: dict[tuple[str, str], Reading] = {}
    readings = []
    for label, ex in zip(labels, extras, strict=True):
        key = (
            label,
            repr((ex.get("formula"), ex.get("formula_level"))) if isinstance(ex, dict) else "",
        )
        if key not in memo:
            memo[key] = read_label(label, source.names, extras=ex, reader=reader)
        readings.append(memo[key])
    parsed = [i for i, r in enumerate(readings) if r.parsed]
    distinct = list(dict.fromkeys((readings[i].formula, readings[i].level) for i in parsed))
    where = {key: j for j, key in enumerate(distinct)}
    cov = source.coverage([f for f, _ in distinct], [lv for _, lv in distinct])  # type: ignore[misc]
    n = source.num_images
    coverage = np.full((len(labels), n), np.nan)
    for i in parsed:
        coverage[i] = cov[where[(readings[i].formula, readings[i].level)]]
    presence = np.where(np.isnan(coverage), np.nan, (coverage > source.min_fraction) * 1.0)
    return LabelPresence(presence=presence, coverage=coverage, readings=readings)


# --- CLIP presence --------------------------------------------------------------------------------

CLIP_MODES: tuple[str, ...] = ("softmax", "threshold")
#: CLIP's learned temperature (``logit_scale.exp()`` of the released models is 100).
CLIP_LOGIT_SCALE = 100.0
#: Candidate thresholds tried by :func:`calibrate_threshold`, and the most images it uses.
CALIBRATION_STEPS = 64
CALIBRATION_IMAGES = 5000


def _l2(x: np.ndarray) -> np.ndarray:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def softmax_presence(
    label_sim: np.ndarray,
    concept_sim: np.ndarray,
    same: Sequence[int | None],
    *,
    scale: float = CLIP_LOGIT_SCALE,
) -> np.ndarray:
    """float64 ``[L, N]``: per image, the probability of each label under a softmax of
    ``scale * cosine`` over the concept set plus the label. ``label_sim``: ``[L, N]`` cosines of
    the labels with the images; ``concept_sim``: ``[N, C]`` of the concepts; ``same[l]``: the
    column of the concept that *is* label ``l`` (left out of its set), or ``None``.

    Equals ``exp(s l) / (exp(s l) + sum_{c != same} exp(s c))``, computed stably for all labels
    at once from each image's largest and second-largest concept logits."""
    import numpy as np

    lab = np.asarray(label_sim, dtype=np.float64) * scale  # [L, N]
    con = np.asarray(concept_sim, dtype=np.float64) * scale  # [N, C]
    n, c = con.shape
    if lab.ndim != 2 or lab.shape[1] != n:
        raise DataError(f"Expected label cosines [L, {n}], got shape {lab.shape}.")
    if c == 0:
        return np.ones_like(lab)
    top = np.argmax(con, axis=1)  # [N]
    m1 = con[np.arange(n), top]
    s1 = np.exp(con - m1[:, None]).sum(axis=1)  # >= 1: the largest term is 1
    if c > 1:
        rest = con.copy()
        rest[np.arange(n), top] = -np.inf
        m2 = rest.max(axis=1)
        s2 = np.exp(rest - m2[:, None]).sum(axis=1)  # >= 1, the argmax left out
    lse_all = m1 + np.log(s1)
    others = np.broadcast_to(lse_all, lab.shape).copy()  # [L, N]: log-sum-exp of the set
    for i, j in enumerate(same):
        if j is None:
            continue
        if c == 1:
            others[i] = -np.inf
            continue
        cj = con[:, j]
        # j not the largest: subtracting its term from a sum >= 1 whose largest term stays
        # loses nothing; j the largest: the others' sum taken from the second largest
        not_top = np.log(np.maximum(s1 - np.exp(cj - m1), 1e-300)) + m1
        is_top = m2 + np.log(s2)
        others[i] = np.where(top == j, is_top, not_top)
    # p = e^l / (e^l + e^others) = sigmoid(l - others)
    z = lab - others
    with np.errstate(over="ignore"):
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))


def calibrate_threshold(
    concept_sim: np.ndarray, truth: np.ndarray, *, steps: int = CALIBRATION_STEPS, seed: int = 0
) -> tuple[float, float]:
    """The global cosine threshold maximising the mean F1, over concepts with at least one
    positive image, of ``concept_sim > threshold`` (``[N, C]``) against ``truth`` (``[C, N]``,
    ground-truth presence in {0, 1}); returns ``(threshold, mean F1)``. Candidates: ``steps``
    quantiles of the cosines; at most :data:`CALIBRATION_IMAGES` images (a seeded sample)."""
    import numpy as np

    sim = np.asarray(concept_sim, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64).T > 0.5  # [N, C]
    if sim.shape != t.shape:
        raise DataError(
            f"Expected cosines and ground truth of the same shape, got {sim.shape} and "
            f"{t.shape} (ground truth transposed)."
        )
    keep = t.any(axis=0)
    if not keep.any():
        raise DataError("Cannot calibrate a threshold: no concept is on any probe image.")
    sim, t = sim[:, keep], t[:, keep]
    if sim.shape[0] > CALIBRATION_IMAGES:
        rows = np.random.default_rng(seed).choice(sim.shape[0], CALIBRATION_IMAGES, replace=False)
        sim, t = sim[np.sort(rows)], t[np.sort(rows)]
    cands = np.unique(np.quantile(sim, np.linspace(0.0, 1.0, steps + 1)[:-1]))
    pos = t.sum(axis=0)
    best = (float(cands[0]), -1.0)
    for tau in cands:
        pred = sim > tau
        tp = (pred & t).sum(axis=0)
        f1 = 2.0 * tp / np.maximum(pred.sum(axis=0) + pos, 1)
        score = float(f1.mean())
        if score > best[1]:
            best = (float(tau), score)
    return best


class ClipPresence:
    """Presence of free-text labels over a probe's images from a joint image-text encoder (see
    the module docstring). ``concepts``: the concept set of the softmax (and of the threshold's
    calibration); ``truth``: ``[C, N]`` ground-truth presence of those concepts, to calibrate
    the threshold when none is given."""

    def __init__(
        self,
        encoder: Any,
        probe: Any,
        *,
        concepts: Sequence[str],
        mode: str = "softmax",
        scale: float = CLIP_LOGIT_SCALE,
        threshold: float | None = None,
        truth: np.ndarray | None = None,
        cache: Any = None,
        batch_size: int = 64,
        progress: bool = False,
    ):
        if mode not in CLIP_MODES:
            raise DataError(f"Expected a CLIP presence mode in {CLIP_MODES}, got {mode!r}.")
        if mode == "softmax" and not concepts:
            raise DataError(
                "CLIP presence by softmax needs a concept set; give one (a list of concept "
                "names) or use a probe with concepts."
            )
        if mode == "threshold" and threshold is None and truth is None:
            raise DataError(
                "CLIP presence by threshold needs a threshold, or a probe with segmentations "
                "to calibrate one on; pass the threshold (a cosine)."
            )
        if not scale > 0:
            raise DataError(f"Expected a positive logit scale, got {scale}.")
        self.encoder = encoder
        self.probe = probe
        self.concepts = [str(c) for c in concepts]
        self.mode = mode
        self.scale = float(scale)
        self.threshold = threshold
        self.truth = truth
        self.cache = cache
        self.batch_size = int(batch_size)
        self.progress = progress
        self.calibration: dict[str, Any] | None = None
        self._images: np.ndarray | None = None
        self._concepts: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.probe)

    def image_embeddings(self) -> np.ndarray:
        """``float64 [N, D]``, L2-normalised; cached like CLIP-Dissect's (the same entries)."""
        if self._images is None:
            from bench.components.cached import cached_embeddings
            from bench.progress import progress_bar

            n = len(self.probe)

            def compute() -> Any:
                import torch

                parts = []
                with progress_bar(
                    total=n, desc="image embeddings", enabled=self.progress, unit="img"
                ) as bar:
                    for start in range(0, n, self.batch_size):
                        stop = min(n, start + self.batch_size)
                        ims = [self.probe.load_image(i) for i in range(start, stop)]
                        parts.append(torch.as_tensor(self.encoder.encode_images(ims)).float())
                        bar.update(stop - start)
                return torch.cat(parts) if parts else torch.zeros((0, 0))

            emb = cached_embeddings(
                self.cache,
                self.encoder,
                "images",
                {"probe": self.probe.identity(), "n": n},
                compute,
            )
            if emb.shape[0] != n:
                raise DataError(f"Expected {n} image embeddings, got {emb.shape[0]}.")
            self._images = _l2(emb)
        return self._images

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.image_embeddings().shape[1]))
        emb = self.encoder.encode_texts(list(texts))
        arr = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
        if arr.shape[0] != len(texts):
            raise DataError(f"Expected {len(texts)} text embeddings, got {arr.shape[0]}.")
        return _l2(arr)

    def concept_similarity(self) -> np.ndarray:
        """``float64 [N, C]``: cosine of every image with every concept of the set."""
        if self._concepts is None:
            img = self.image_embeddings()
            txt = self.text_embeddings(self.concepts)
            if txt.size and txt.shape[1] != img.shape[1]:
                raise DataError(
                    f"The image-text encoder gave image embeddings of dimension {img.shape[1]} "
                    f"and text embeddings of dimension {txt.shape[1]}; CLIP presence needs one "
                    "joint space."
                )
            self._concepts = img @ txt.T
        return self._concepts

    def _threshold(self) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        if self.calibration is None:
            tau, f1 = calibrate_threshold(self.concept_similarity(), self.truth)  # type: ignore[arg-type]
            self.calibration = {"threshold": tau, "mean_f1": f1, "rule": "max mean F1 over the "
                                "probe's concepts against their segmentations"}  # fmt: skip
        return float(self.calibration["threshold"])

    def presence(self, labels: Sequence[str]) -> LabelPresence:
        """Presence ``[L, N]`` of every label (all read as free text: ``source="clip"``); the
        ``coverage`` field holds the raw cosines."""
        import numpy as np

        distinct = list(dict.fromkeys(labels))
        img = self.image_embeddings()
        sim = self.text_embeddings(distinct) @ img.T  # [L', N]
        if self.mode == "softmax":
            norm = {_norm(c): i for i, c in enumerate(self.concepts)}
            same = [norm.get(_norm(t)) for t in distinct]
            pres = softmax_presence(sim, self.concept_similarity(), same, scale=self.scale)
        else:
            pres = (sim > self._threshold()).astype(np.float64)
        where = {t: i for i, t in enumerate(distinct)}
        rows = [where[t] for t in labels]
        readings = [Reading(label=t, formula=None, source="clip") for t in labels]
        return LabelPresence(presence=pres[rows], coverage=sim[rows], readings=readings)

    def settings(self) -> dict[str, Any]:
        """What the numbers depend on, for the result."""
        out: dict[str, Any] = {
            "mode": "clip",
            "encoder": self.encoder.identity(),
            "to_presence": self.mode,
        }
        if self.mode == "softmax":
            out["rule"] = (
                "per image, softmax of logit_scale * cosine over the concept set plus the label; "
                "the label's probability (a label in the set is counted once)"
            )
            out["logit_scale"] = self.scale
        else:
            out["rule"] = "1 where the image-label cosine exceeds the threshold"
            out["threshold"] = self._threshold()
            out["threshold_from"] = "given" if self.threshold is not None else "calibrated"
            if self.calibration is not None:
                out["calibration"] = dict(self.calibration)
        import hashlib

        out["concept_set"] = {
            "n": len(self.concepts),
            "sha256": hashlib.sha256("\n".join(self.concepts).encode("utf-8")).hexdigest(),
        }
        return out
