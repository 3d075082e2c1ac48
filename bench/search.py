"""Beam search over logical formulas, generic over the objective (CompExp, INVERT).

Formulas are JSON trees with integer leaves (``["leaf", code]``, ``["not", F]``, ``["and", F,
G]``, ``["or", F, G]``), grown left-deep: each round expands every beam entry ``F`` with
``F <op> a`` for every *atom* ``a`` (a leaf, or a negated leaf) and every operator of the
objective (``"or"``, ``"and"``, ``"and not"``). The objective is a parameter: it scores a whole
beam step at once (every entry x atom x operator), which lets each objective use its own algebra
(CompExp: inclusion-exclusion on signature counts; INVERT: AUROC from rank sums) instead of
evaluating candidates one at a time.

The search itself is the compositional-explanations procedure (Mu & Andreas 2020, INVERT's is
the same with other operators): the beam starts with the ``beam_size`` best eligible atoms;
``max_length - 1`` rounds follow; in each, the candidates compete with the formulas already in
the beam (so shorter formulas survive), and the best ``beam_size`` distinct ones are kept. Ties
keep the order: the beam first, then expansions in (entry, atom, operator) order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "OPERATORS",
    "Objective",
    "Scored",
    "SearchResult",
    "beam_search",
    "expand",
    "tree_key",
    "tree_length",
]

#: Every operator an objective may use, in the order CompExp generates them.
OPERATORS = ("or", "and", "and not")


@dataclass(frozen=True, slots=True)
class Scored:
    """A formula with what the search maximises (``score``), the objective's metric
    (``value``, e.g. IoU or AUROC; differs from ``score`` by a length penalty) and its length."""

    tree: Any
    score: float
    value: float
    length: int


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The best formula, the best single atom, and how many candidates were scored."""

    best: Scored
    single: Scored
    scored: int


class Objective(Protocol):
    """What the search maximises, scored a beam step at a time.

    ``operators``: the expansions, a subset of :data:`OPERATORS` in that order.
    """

    operators: tuple[str, ...]

    def atom(self, a: int) -> Any:
        """The tree of atom ``a`` (``["leaf", c]`` or ``["not", ["leaf", c]]``)."""
        ...

    def primitives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, value, eligible)`` of every atom, each ``[A]``: ``score`` ``-inf`` for a
        position that is no atom; ``eligible`` whether the atom may start the beam."""
        ...

    def expansions(self, beam: Sequence[Scored]) -> tuple[np.ndarray, np.ndarray]:
        """``(score, value)``, each ``float64 [J, A, K]``: every ``beam[j] <op_k> atom(a)``;
        ``score`` ``-inf`` where the candidate is not allowed."""
        ...


def tree_length(tree: Sequence[Any]) -> int:
    """Leaves plus one per NOT (compexp's ``len``)."""
    op = tree[0]
    if op == "leaf":
        return 1
    if op == "not":
        return 1 + tree_length(tree[1])
    return sum(tree_length(t) for t in tree[1:])


def tree_key(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"))


def expand(tree: Any, atom: Any, op: str) -> list[Any]:
    """``tree <op> atom`` (``"and not"`` negates the atom)."""
    if op == "or":
        return ["or", tree, atom]
    if op == "and":
        return ["and", tree, atom]
    if op == "and not":
        return ["and", tree, ["not", atom]]
    raise ValueError(f"Expected an operator in {OPERATORS}, got {op!r}")


def beam_search(
    objective: Objective,
    *,
    beam_size: int,
    max_length: int,
    key: Any = None,
) -> SearchResult:
    """Beam search maximising ``objective`` (see the module docstring).

    ``key(tree)``: two formulas with the same key are the same (default: the tree itself).
    """
    key = key or tree_key
    p_score, p_value, eligible = (np.asarray(x) for x in objective.primitives())
    order = np.argsort(-p_score, kind="stable")
    top = int(order[0])
    single = Scored(objective.atom(top), float(p_score[top]), float(p_value[top]), 0)
    single = Scored(single.tree, single.score, single.value, tree_length(single.tree))
    scored = int(np.isfinite(p_score).sum())
    beam: list[Scored] = []
    for a in order:
        if len(beam) == beam_size:
            break
        if eligible[a] and np.isfinite(p_score[a]):
            tree = objective.atom(int(a))
            beam.append(Scored(tree, float(p_score[a]), float(p_value[a]), tree_length(tree)))
    if not beam:
        return SearchResult(single, single, scored)
    ops = objective.operators
    for _ in range(max_length - 1):
        score, value = objective.expansions(beam)
        score = np.asarray(score, dtype=np.float64)
        scored += int(np.isfinite(score).sum())
        flat = score.reshape(-1)
        all_scores = np.concatenate([[b.score for b in beam], flat])
        ranked = np.argsort(-all_scores, kind="stable")
        new_beam: list[Scored] = []
        seen: set[Any] = set()
        for idx in ranked:
            if len(new_beam) == beam_size or not np.isfinite(all_scores[idx]):
                break
            if idx < len(beam):
                cand = beam[idx]
            else:
                j, a, k = np.unravel_index(idx - len(beam), score.shape)
                tree = expand(beam[j].tree, objective.atom(int(a)), ops[k])
                cand = Scored(tree, float(score[j, a, k]), float(value[j, a, k]), tree_length(tree))
            ck = key(cand.tree)
            if ck in seen:
                continue
            seen.add(ck)
            new_beam.append(cand)
        beam = new_beam
    return SearchResult(beam[0], single, scored)
