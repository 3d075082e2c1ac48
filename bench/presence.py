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
   nothing of the synthetic world.

A label that reads into nothing, or into a leaf that is not a concept of the probe, is
**unparsed**: it is counted and reported as such, never scored as absent (a presence of zero
would turn every unit's AUROC into NaN or chance silently).

Presence (:class:`SegmentationPresence`) is taken from the ground-truth segmentations through
the probe's :class:`~bench.dissect.ConceptTable`: a formula is evaluated with AND/OR/NOT on the
concept masks *per pixel* (CompExp's semantics; image-level labels such as scenes count as
whole-image masks, as NetDissect treats them), then

* per pixel: ``bool [n, sh, sw]`` for chosen images (:meth:`SegmentationPresence.pixel_masks`);
* per image: the share of the image's pixels where the formula holds (``coverage``,
  ``float [F, N]``), and the presence ``1.0`` where that share exceeds ``min_fraction``
  (default 0: any pixel of the concept), else ``0.0``.

Everything is one matrix product: ``counts [N, n_sig] @ holds [n_sig, F]`` where ``counts`` is
each image's number of pixels per signature and ``holds`` each formula evaluated on the
signatures, so all labels of a layer are done at once.
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

PRESENCE_MODES: tuple[str, ...] = ("segmentation",)


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

    @property
    def parsed(self) -> bool:
        return self.formula is not None


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
            return Reading(label=label, formula=mapped, source=source)
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
            formula = from_json(read)
            mapped, missing = _map_leaves(formula, names, None)
            if mapped is not None:
                return Reading(label=label, formula=mapped, source="reader")
            why = f"read into names that are not concepts of the probe set: {', '.join(missing)}"
    return Reading(label=label, formula=None, source="unparsed", reason=why)


def _map_leaves(
    formula: Formula, names: ConceptNames, reader: LabelReader | None
) -> tuple[Formula | None, list[str]]:
    mapping: dict[str, str] = {}
    missing = []
    for leaf in dict.fromkeys(formula.leaves()):
        found = names.get(leaf)
        if found is None and reader is not None:
            tree = reader(leaf)
            if tree and tree[0] == "leaf":
                found = names.get(str(tree[1]))
        if found is None:
            missing.append(leaf)
        else:
            mapping[leaf] = found
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

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    def _leaf(self, name: str) -> np.ndarray:
        return self._member[:, self._code[name]].toarray().ravel() > 0

    def holds(self, formula: Formula) -> np.ndarray:
        """bool ``[n_sig]``: where ``formula`` holds on the table's signatures."""
        from bench.formula import evaluate

        return evaluate(formula, self._leaf)

    def coverage(self, formulas: Sequence[Formula]) -> np.ndarray:
        """float64 ``[F, N]``: share of each image's pixels where each formula holds."""
        import numpy as np

        if not formulas:
            return np.zeros((0, self.num_images))
        holds = np.stack([self.holds(f) for f in formulas], axis=1).astype(np.float64)
        return (self.counts @ holds).T / self.pixels_per_image

    def presence(self, formulas: Sequence[Formula]) -> np.ndarray:
        """float64 ``[F, N]`` in {0, 1}: coverage above ``min_fraction``."""
        import numpy as np

        return (self.coverage(formulas) > self.min_fraction).astype(np.float64)

    def pixel_masks(self, formula: Formula, images: Sequence[int]) -> np.ndarray:
        """bool ``[n, sh, sw]``: where ``formula`` holds in each of ``images``."""
        import numpy as np

        sh, sw = self.table.seg_size
        idx = np.asarray(images, dtype=np.int64)
        sig = np.asarray(self.table.sig[idx], dtype=np.int64)
        return self.holds(formula)[sig].reshape(len(idx), sh, sw)


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
        key = (label, repr(ex.get("formula")) if isinstance(ex, dict) else "")
        if key not in memo:
            memo[key] = read_label(label, source.names, extras=ex, reader=reader)
        readings.append(memo[key])
    parsed = [i for i, r in enumerate(readings) if r.parsed]
    distinct = list(dict.fromkeys(readings[i].formula for i in parsed))
    where = {f: j for j, f in enumerate(distinct)}
    cov = source.coverage(distinct)  # type: ignore[arg-type]
    n = source.num_images
    coverage = np.full((len(labels), n), np.nan)
    for i in parsed:
        coverage[i] = cov[where[readings[i].formula]]
    presence = np.where(np.isnan(coverage), np.nan, (coverage > source.min_fraction) * 1.0)
    return LabelPresence(presence=presence, coverage=coverage, readings=readings)
