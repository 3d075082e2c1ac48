"""INVERT: Labeling Neural Representations with Inverse Recognition (Bykov et al., NeurIPS 2023).

Per unit: beam search over logical formulas (AND / OR of concepts and negated concepts) of the
probe set's image-level labels, maximising the AUROC with the formula's membership of each image
as the class and the unit's pooled activation as the score; the Mann-Whitney p-value of the
winner. The search is the one CompExp uses (:mod:`bench.search`), with INVERT's objective
(:mod:`.search`). See README.md for the defaults and the deviations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.method import Method, MethodContext, Requirements
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    from bench.evidence import Evidence

POOLINGS = ("mean", "max")
#: The label of a unit no formula can describe (every concept on all images or on none).
NO_CONCEPT_LABEL = "(no concept)"


@dataclass(frozen=True, kw_only=True, slots=True)
class InvertConfig:
    #: Most concepts in a formula (``L``): ``max_length - 1`` rounds of expansion.
    max_length: int = 3
    #: Formulas kept per round (``B``).
    beam_size: int = 5
    #: Concept fraction range of every formula (``min_fraction``, ``max_fraction``: the
    #: original's defaults).
    min_fraction: float = 0.0
    max_fraction: float = 0.5
    #: Expand only with this many best atoms of the unit (``limit_search``); ``None``: all.
    search_limit: int | None = None
    #: The unit's activation per image: spatial "mean" (the original's examples read average-
    #: pooled outputs) or "max".
    pooling: str = "mean"
    #: Categories whose concepts may appear; ``None``: every category of the probe set.
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ValueError(
                "Expected 0 <= min_fraction <= max_fraction <= 1, got "
                f"{self.min_fraction} and {self.max_fraction}"
            )
        if self.search_limit is not None and self.search_limit < 1:
            raise ValueError(f"search_limit must be >= 1 or None, got {self.search_limit}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


class Invert(Method[InvertConfig]):
    """A formula of image-level concepts per unit, found by beam search on AUROC."""

    name = "invert"
    version = "2"
    requires = Requirements(evidence=frozenset({"pooled", "segmentations"}))

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        import numpy as np

        from bench.dissect import concept_table_cached, image_concepts
        from bench.formula import from_json
        from bench.search import beam_search
        from methods.invert.search import DEFAULT_MEMORY_BUDGET, AurocObjective
        from metrics.faithfulness import mann_whitney

        cfg = self.config
        table = concept_table_cached(
            ctx.cache, evidence.probe, cfg.categories, progress=ctx.progress
        )
        labels = image_concepts(table)
        budget = DEFAULT_MEMORY_BUDGET if ctx.memory_budget is None else ctx.memory_budget

        def names(tree: list) -> list:
            if tree[0] == "leaf":
                return ["leaf", table.concepts[int(tree[1]) - 1].name]
            return [tree[0], *(names(t) for t in tree[1:])]

        out = []
        for u in units:
            le = evidence.layer(u.layer)
            pooled = le.pooled_mean if cfg.pooling == "mean" else le.pooled_max
            acts = np.asarray(pooled[:, le.row(u.index)], dtype=np.float64)
            objective = AurocObjective(
                labels,
                acts,
                min_fraction=cfg.min_fraction,
                max_fraction=cfg.max_fraction,
                search_limit=cfg.search_limit,
                memory_budget=budget,
            )
            found = beam_search(
                objective, beam_size=cfg.beam_size, max_length=cfg.max_length, key=objective.key
            )
            best = found.best
            if not np.isfinite(best.score):
                out.append(
                    Description(
                        unit=u,
                        label=NO_CONCEPT_LABEL,
                        score=None,
                        score_name="auroc",
                        extras={
                            "no_concept": True,
                            "reason": "no concept is present on some but not all probe images",
                            "pooling": cfg.pooling,
                        },
                    )
                )
                continue
            member = objective.membership(best.tree)
            tree = names(best.tree)
            formula = from_json(tree)
            if member.any() and not member.all():
                _, u1, p = mann_whitney(acts[member][None, :], acts[~member][None, :])
                p_value, u_stat = float(p[0]), float(u1[0])
            else:
                p_value, u_stat = None, None
            auroc = best.value if np.isfinite(best.value) else None
            out.append(
                Description(
                    unit=u,
                    label=formula.render(),
                    score=auroc,
                    score_name="auroc",
                    extras={
                        "formula": tree,
                        # AND/OR/NOT of image-level labels: scored per image (bench.presence)
                        "formula_level": "image",
                        "length": best.length,
                        "p_value": p_value,
                        "mann_whitney_u": u_stat,
                        "concept_fraction": float(member.mean()),
                        "best_single": formula_label(names(found.single.tree)),
                        "best_single_auroc": (
                            found.single.value if np.isfinite(found.single.value) else None
                        ),
                        "candidates_scored": found.scored,
                        "pooling": cfg.pooling,
                        "no_concept": False,
                    },
                )
            )
        return out


def formula_label(tree: list) -> str:
    from bench.formula import from_json

    return from_json(tree).render()
