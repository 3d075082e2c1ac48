"""CompExp's beam search, scored from signature products (:mod:`bench.dissect`).

A beam entry is a formula over concept codes (the JSON tree form with integer leaves). Each round
expands every entry F with ``F OR L``, ``F AND L`` and ``F AND NOT L`` for every concept L. Rather
than building each candidate's mask, two matrix products per entry give, for all L at once,
``|F and L|`` and ``|F and L and M_u|``; inclusion-exclusion turns them into every candidate's
intersection with the unit's mask and its area:

==========  ==================================  ===========================
candidate   |candidate and M_u|                 |candidate|
==========  ==================================  ===========================
F OR L      |F and M_u| + |L and M_u| - both    |F| + |L| - |F and L|
F AND L     |F and L and M_u|                   |F and L|
F AND NOT L |F and M_u| - |F and L and M_u|     |F| - |F and L|
==========  ==================================  ===========================

IoU = intersection / (|candidate| + |M_u| - intersection), over the whole probe set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.search import tree_key

if TYPE_CHECKING:
    from bench.dissect import ConceptTable, SignatureAlgebra

#: The three expansions, in the order candidates are generated (ties keep this order).
OPERATORS = ("or", "and", "and not")


@dataclass(frozen=True, slots=True)
class Scored:
    """A formula (JSON tree over codes) with its score (penalised IoU), IoU and length."""

    tree: Any
    score: float
    iou: float
    length: int


def iou_of(inter: np.ndarray, area: np.ndarray, unit_area: float) -> np.ndarray:
    """IoU of candidates with intersection ``inter`` and area ``area`` (0 where both are empty)."""
    from bench.dissect import safe_ratio

    inter = np.asarray(inter, dtype=np.float64)
    return safe_ratio(inter, np.asarray(area, dtype=np.float64) + unit_area - inter)


class IoUObjective:
    """CompExp's objective for one unit: penalised IoU over the whole probe set, every
    candidate of a beam step from two signature products (see the module docstring).

    Atoms are the concept codes ``0..C`` (0 is no atom).
    """

    operators: tuple[str, ...] = OPERATORS

    def __init__(self, search: BeamSearch, u: int):
        self.s = search
        self.prim = search.primitives(u)
        n_codes = self.prim.shape[0]
        if search.search_limit is not None:
            order = np.argsort(-self.prim[1:], kind="stable") + 1
            allowed = np.zeros(n_codes, dtype=bool)
            allowed[order[: search.search_limit]] = True
        else:
            allowed = np.ones(n_codes, dtype=bool)
        allowed[0] = False
        self.allowed = allowed
        self.h = np.asarray(search.hist[u].toarray(), dtype=np.float64).ravel()
        self.unit_area = float(search.unit_area[u])
        self.lu = search.inter[u]

    def atom(self, a: int) -> list[Any]:
        return ["leaf", a]

    def primitives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        score = self.prim.copy()
        score[0] = -np.inf
        return score, self.prim, self.prim > 0

    def expansions(self, beam: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        s = self.s
        trees = [b.tree for b in beam]
        fmask = np.stack([s.algebra.evaluate(t) for t in trees])  # [J, n_sig]
        hu = fmask * self.h  # [J, n_sig]
        c_fu = np.asarray(s.members_t @ hu.T).T  # [J, C + 1] |F and L and M_u|
        fu = hu.sum(axis=1)  # [J] |F and M_u|
        c_f = np.empty_like(c_fu)
        f_area = np.empty(len(trees))
        for j, t in enumerate(trees):
            c_f[j], f_area[j] = s._formula_counts(t)
        lu = self.lu
        inter = np.stack(
            [fu[:, None] + lu[None, :] - c_fu, c_fu, fu[:, None] - c_fu], axis=2
        )  # [J, C + 1, 3]
        area = np.stack(
            [
                f_area[:, None] + s.label_area[None, :] - c_f,
                c_f,
                f_area[:, None] - c_f,
            ],
            axis=2,
        )
        iou = iou_of(inter, area, self.unit_area)
        lengths = np.array([b.length for b in beam])[:, None, None] + np.array([1, 1, 2])
        score = iou * s.length_penalty ** (lengths - 1).astype(np.float64)
        valid = np.broadcast_to(self.allowed[None, :, None], score.shape).copy()
        if s.skip_trivial:
            for j, t in enumerate(trees):
                if t[0] == "leaf":
                    valid[j, int(t[1]), :] = False
        return np.where(valid, score, -np.inf), iou


class BeamSearch:
    """Beam search for one layer: the tally's histogram, the table, and the algebra.

    ``hist`` CSR [U, n_sig] (mask pixels per signature), ``unit_area`` [U], ``inter`` [U, C + 1]
    (|M_u and L|). The search is :func:`bench.search.beam_search` with :class:`IoUObjective`.
    """

    def __init__(
        self,
        table: ConceptTable,
        algebra: SignatureAlgebra,
        hist: Any,
        unit_area: np.ndarray,
        *,
        beam_size: int,
        max_length: int,
        length_penalty: float,
        search_limit: int | None = None,
        skip_trivial: bool = True,
    ):
        self.table = table
        self.algebra = algebra
        self.hist = hist
        self.unit_area = np.asarray(unit_area, dtype=np.float64)
        self.members_t = table.members.T.tocsr()  # [C + 1, n_sig]
        self.pixels = table.pixels.astype(np.float64)
        self.label_area = np.asarray(self.members_t @ self.pixels, dtype=np.float64)
        self.inter = np.asarray((hist @ table.members).toarray(), dtype=np.float64)
        self.beam_size = beam_size
        self.max_length = max_length
        self.length_penalty = length_penalty
        self.search_limit = search_limit
        self.skip_trivial = skip_trivial
        self._unit_independent: dict[str, tuple[np.ndarray, float]] = {}

    def primitives(self, u: int) -> np.ndarray:
        """float64 [C + 1]: each concept's IoU with unit ``u`` (column 0 is 0)."""
        iou = iou_of(self.inter[u], self.label_area, self.unit_area[u])
        iou[0] = 0.0
        return iou

    def _formula_counts(self, tree: Any) -> tuple[np.ndarray, float]:
        """(|F and L| for every L, |F|): independent of the unit, memoised per formula."""
        key = tree_key(tree)
        hit = self._unit_independent.get(key)
        if hit is None:
            weights = self.pixels * self.algebra.evaluate(tree)
            hit = (np.asarray(self.members_t @ weights), float(weights.sum()))
            if len(self._unit_independent) > 100_000:
                self._unit_independent.clear()
            self._unit_independent[key] = hit
        return hit

    def search(self, u: int) -> tuple[Scored, Scored, int]:
        """Best formula, best single concept, and how many candidates were scored."""
        from bench.search import beam_search

        found = beam_search(
            IoUObjective(self, u), beam_size=self.beam_size, max_length=self.max_length
        )

        def ours(s: Any) -> Scored:
            return Scored(s.tree, s.score, s.value, s.length)

        return ours(found.best), ours(found.single), found.scored


def tree_to_names(tree: Any, table: ConceptTable) -> list[Any]:
    """The JSON tree with concept codes replaced by clean names."""
    op = tree[0]
    if op == "leaf":
        return ["leaf", table.concepts[int(tree[1]) - 1].name]
    return [op, *(tree_to_names(t, table) for t in tree[1:])]


def tree_to_codes(tree: Any, table: ConceptTable) -> list[Any]:
    """The JSON tree with clean names replaced by concept codes."""
    op = tree[0]
    if op == "leaf":
        return ["leaf", table.code(tree[1])]
    return [op, *(tree_to_codes(t, table) for t in tree[1:])]
