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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

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


def tree_length(tree: Sequence[Any]) -> int:
    """Leaves plus one per NOT (the original's ``len``)."""
    op = tree[0]
    if op == "leaf":
        return 1
    if op == "not":
        return 1 + tree_length(tree[1])
    return sum(tree_length(t) for t in tree[1:])


def tree_key(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"))


def expand(tree: Any, code: int, op: str) -> list[Any]:
    if op == "or":
        return ["or", tree, ["leaf", code]]
    if op == "and":
        return ["and", tree, ["leaf", code]]
    return ["and", tree, ["not", ["leaf", code]]]


def iou_of(inter: np.ndarray, area: np.ndarray, unit_area: float) -> np.ndarray:
    """IoU of candidates with intersection ``inter`` and area ``area`` (0 where both are empty)."""
    from bench.dissect import safe_ratio

    inter = np.asarray(inter, dtype=np.float64)
    return safe_ratio(inter, np.asarray(area, dtype=np.float64) + unit_area - inter)


class BeamSearch:
    """Beam search for one layer: the tally's histogram, the table, and the algebra.

    ``hist`` CSR [U, n_sig] (mask pixels per signature), ``unit_area`` [U], ``inter`` [U, C + 1]
    (|M_u and L|).
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
        prim = self.primitives(u)
        n_codes = prim.shape[0]
        order = np.argsort(-prim[1:], kind="stable") + 1
        best_code = int(order[0])
        single = Scored(["leaf", best_code], float(prim[best_code]), float(prim[best_code]), 1)
        nonzero = [int(c) for c in order if prim[c] > 0]
        beam = [Scored(["leaf", c], float(prim[c]), float(prim[c]), 1) for c in nonzero]
        beam = beam[: self.beam_size]
        if not beam:
            return single, single, n_codes - 1
        if self.search_limit is not None:
            allowed = np.zeros(n_codes, dtype=bool)
            allowed[order[: self.search_limit]] = True
        else:
            allowed = np.ones(n_codes, dtype=bool)
        allowed[0] = False
        scored = n_codes - 1
        h = np.asarray(self.hist[u].toarray(), dtype=np.float64).ravel()
        unit_area = float(self.unit_area[u])
        lu = self.inter[u]
        penalty = self.length_penalty
        for _ in range(self.max_length - 1):
            trees = [b.tree for b in beam]
            fmask = np.stack([self.algebra.evaluate(t) for t in trees])  # [J, n_sig]
            hu = fmask * h  # [J, n_sig]
            c_fu = np.asarray(self.members_t @ hu.T).T  # [J, C + 1] |F and L and M_u|
            fu = hu.sum(axis=1)  # [J] |F and M_u|
            c_f = np.empty_like(c_fu)
            f_area = np.empty(len(trees))
            for j, t in enumerate(trees):
                c_f[j], f_area[j] = self._formula_counts(t)
            inter = np.stack(
                [fu[:, None] + lu[None, :] - c_fu, c_fu, fu[:, None] - c_fu], axis=2
            )  # [J, C + 1, 3]
            area = np.stack(
                [
                    f_area[:, None] + self.label_area[None, :] - c_f,
                    c_f,
                    f_area[:, None] - c_f,
                ],
                axis=2,
            )
            iou = iou_of(inter, area, unit_area)
            lengths = np.array([b.length for b in beam])[:, None, None] + np.array([1, 1, 2])
            score = iou * penalty ** (lengths - 1).astype(np.float64)
            valid = np.broadcast_to(allowed[None, :, None], score.shape).copy()
            if self.skip_trivial:
                for j, t in enumerate(trees):
                    if t[0] == "leaf":
                        valid[j, int(t[1]), :] = False
            score = np.where(valid, score, -np.inf)
            scored += int(valid.sum())
            # Candidates: the beam itself first (shorter formulas keep competing), then every
            # expansion in (entry, concept, operator) order; a stable sort keeps that order on ties.
            flat = score.reshape(-1)
            all_scores = np.concatenate([[b.score for b in beam], flat])
            ranked = np.argsort(-all_scores, kind="stable")
            new_beam: list[Scored] = []
            seen: set[str] = set()
            for idx in ranked:
                if len(new_beam) == self.beam_size or not np.isfinite(all_scores[idx]):
                    break
                if idx < len(beam):
                    cand = beam[idx]
                else:
                    j, code, op = np.unravel_index(idx - len(beam), score.shape)
                    tree = expand(trees[j], int(code), OPERATORS[op])
                    cand = Scored(
                        tree,
                        float(score[j, code, op]),
                        float(iou[j, code, op]),
                        int(lengths[j, 0, op]),
                    )
                key = tree_key(cand.tree)
                if key in seen:
                    continue
                seen.add(key)
                new_beam.append(cand)
            beam = new_beam
        return beam[0], single, scored


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
