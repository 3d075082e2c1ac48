"""INVERT's objective for :func:`bench.search.beam_search`: AUROC of a formula's image-level
membership (the class) against a unit's pooled activation (the score), every candidate of a beam
step at once.

Atoms are the concepts and their negations (the original's atomic formulas ``c`` and ``~c``):
with C concepts (codes 1..C) atom ``a`` is ``["leaf", a]`` for ``a <= C`` and
``["not", ["leaf", a - C - 1]]`` above; atoms 0 and C + 1 are none. Operators: AND and OR.

A beam step builds the memberships of every ``F AND a`` and ``F OR a`` for one entry (``[A,
N]`` boolean, in chunks bounded by ``memory_budget``) and scores them with
:func:`metrics.faithfulness.auroc_of_labels`, which computes every AUROC from the unit's
mid-ranks as one matrix product (Mann-Whitney: ``U_f = labels_f . r - n_f (n_f + 1) / 2``).

Candidates the original drops are ``-inf`` here: membership empty or everything (AUROC
undefined), unchanged by the expansion (``F AND a == F``, ``F OR a == F``), or a concept
fraction outside ``[min_fraction, max_fraction]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The expansions, in the order the original generates them.
OPERATORS = ("and", "or")
DEFAULT_MEMORY_BUDGET = 256 << 20


class AurocObjective:
    """INVERT's objective for one unit.

    ``labels`` bool [N, C + 1] (column 0 unused), ``activations`` float [N] (the unit's pooled
    activation on every probe image).
    """

    operators = OPERATORS

    def __init__(
        self,
        labels: np.ndarray,
        activations: np.ndarray,
        *,
        min_fraction: float = 0.0,
        max_fraction: float = 0.5,
        search_limit: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ):
        labels = np.asarray(labels, dtype=bool)
        self.n_codes = labels.shape[1]  # C + 1
        n = labels.shape[0]
        self.n = n
        self.activations = np.asarray(activations, dtype=np.float64)
        # [A, N]: concepts, then their negations; rows 0 and C + 1 are no atoms.
        self.members = np.concatenate([labels.T, ~labels.T], axis=0)
        self.is_atom = np.ones(2 * self.n_codes, dtype=bool)
        self.is_atom[[0, self.n_codes]] = False
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.chunk = max(1, int(memory_budget) // max(1, n * 9))
        self._memo: dict[str, np.ndarray] = {}
        self.allowed = self.is_atom.copy()
        if search_limit is not None:
            score, _, _ = self.primitives()
            order = np.argsort(-score, kind="stable")
            limited = np.zeros_like(self.allowed)
            limited[order[:search_limit]] = True
            self.allowed &= limited

    # --- atoms and formulas ---

    def atom(self, a: int) -> list[Any]:
        if a < self.n_codes:
            return ["leaf", a]
        return ["not", ["leaf", a - self.n_codes]]

    def membership(self, tree: Sequence[Any]) -> np.ndarray:
        """bool [N]: the images where ``tree`` holds."""
        from bench.search import tree_key

        key = tree_key(tree)
        out = self._memo.get(key)
        if out is None:
            op = tree[0]
            if op == "leaf":
                out = self.members[int(tree[1])]
            elif op == "not":
                out = ~self.membership(tree[1])
            elif op == "and":
                out = self.membership(tree[1]) & self.membership(tree[2])
            else:
                out = self.membership(tree[1]) | self.membership(tree[2])
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[key] = out
        return out

    def key(self, tree: Sequence[Any]) -> bytes:
        """Formulas with the same membership on the probe set are the same candidate."""
        return np.packbits(self.membership(tree)).tobytes()

    # --- scoring ---

    def _score(self, memberships: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AUROC with ``-inf`` where undefined or out of the fraction range, concept count)."""
        from metrics.faithfulness import auroc_of_labels

        out = np.empty(memberships.shape[0])
        for start in range(0, memberships.shape[0], self.chunk):
            out[start : start + self.chunk] = auroc_of_labels(
                self.activations, memberships[start : start + self.chunk]
            )
        count = memberships.sum(axis=1)
        fraction = count / self.n
        ok = np.isfinite(out) & (fraction >= self.min_fraction) & (fraction <= self.max_fraction)
        return np.where(ok, out, -np.inf), count

    def primitives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from metrics.faithfulness import auroc_of_labels

        value = auroc_of_labels(self.activations, self.members)
        score = np.where(self.is_atom & np.isfinite(value), value, -np.inf)
        fraction = self.members.sum(axis=1) / self.n
        eligible = (fraction >= self.min_fraction) & (fraction <= self.max_fraction)
        return score, value, eligible

    def expansions(self, beam: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        n_atoms = self.members.shape[0]
        score = np.full((len(beam), n_atoms, len(OPERATORS)), -np.inf)
        for j, entry in enumerate(beam):
            f = self.membership(entry.tree)
            f_count = int(f.sum())
            for k, op in enumerate(OPERATORS):
                cand = (self.members & f) if op == "and" else (self.members | f)
                s, count = self._score(cand)
                # an expansion that changes nothing is no new formula (the original drops it)
                s[count == f_count] = -np.inf
                s[~self.allowed] = -np.inf
                score[j, :, k] = s
        return score, score
