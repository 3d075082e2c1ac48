"""INVERT's objective for :func:`bench.search.beam_search`: AUROC of a formula's image-level
membership (the class) against a unit's pooled activation (the score), every candidate of a beam
step at once.

Atoms are the concepts and their negations (the original's atomic formulas ``c`` and ``~c``):
with C concepts (codes 1..C) atom ``a`` is ``["leaf", a]`` for ``a <= C`` and
``["not", ["leaf", a - C - 1]]`` above; atoms 0 and C + 1 are none. Operators: AND and OR.

A beam step builds the memberships of every ``F AND a`` and ``F OR a`` of every beam entry
(boolean rows of length N, in chunks bounded by ``memory_budget``) and scores them with
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

    operators: tuple[str, ...] = OPERATORS

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
        # bytes per candidate row in a chunk: memberships and temporaries (bool), float64 labels
        self.chunk = max(1, int(memory_budget) // max(1, n * 12))
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

    def _in_range(self, count: np.ndarray) -> np.ndarray:
        fraction = count / self.n
        return (fraction >= self.min_fraction) & (fraction <= self.max_fraction)

    def primitives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from metrics.faithfulness import auroc_of_labels

        value = auroc_of_labels(self.activations, self.members)
        score = np.where(self.is_atom & np.isfinite(value), value, -np.inf)
        return score, value, self._in_range(np.count_nonzero(self.members, axis=1))

    def expansions(self, beam: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        from metrics.faithfulness import auroc_of_labels

        n_atoms = self.members.shape[0]
        n_ops = len(OPERATORS)
        f = np.stack([self.membership(b.tree) for b in beam])  # [J, N]
        f_count = np.count_nonzero(f, axis=1)
        total = len(beam) * n_ops * n_atoms
        score = np.full(total, -np.inf)
        # Candidates in (entry, operator, atom) order, as many at a time as the budget allows:
        # each chunk is one call, so the unit's activations are ranked once per chunk.
        rows = min(total, self.chunk)
        buf = np.empty((rows, self.n), dtype=bool)
        for start in range(0, total, rows):
            stop = min(total, start + rows)
            r = start
            while r < stop:  # fill the buffer block by block: one (entry, operator) per block
                j, k, a0 = r // (n_ops * n_atoms), (r // n_atoms) % n_ops, r % n_atoms
                a1 = min(n_atoms, a0 + stop - r)
                op = np.logical_and if k == 0 else np.logical_or
                op(self.members[a0:a1], f[j], out=buf[r - start : r - start + a1 - a0])
                r += a1 - a0
            cand = buf[: stop - start]
            idx = np.arange(start, stop)
            j, a = idx // (n_ops * n_atoms), idx % n_atoms
            count = np.count_nonzero(cand, axis=1)
            auroc = auroc_of_labels(self.activations, cand)
            # an expansion that changes nothing is no new formula (the original drops it)
            ok = (
                np.isfinite(auroc) & self._in_range(count) & (count != f_count[j]) & self.allowed[a]
            )
            score[start:stop] = np.where(ok, auroc, -np.inf)
        score = score.reshape(len(beam), n_ops, n_atoms).transpose(0, 2, 1)
        return score, score
