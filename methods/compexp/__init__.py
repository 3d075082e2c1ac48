"""Compositional explanations (Mu & Andreas, NeurIPS 2020), vision variant.

Per unit: beam search over logical formulas of concepts (``F OR L``, ``F AND L``, ``F AND NOT L``)
maximising the IoU between the unit's thresholded activation masks and the formula's mask over the
whole probe set (no category restriction). Masks, thresholds and upsampling are NetDissect-Lite's.
See README.md for the defaults, the preset and the deviations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.evidence import NETDISSECT_QUANTILE
from bench.method import Method, MethodContext, Requirements, Resources
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    from bench.evidence import Evidence

#: The label of a unit no concept overlaps (every single concept's IoU is 0: it never exceeds its
#: threshold, or its mask covers only unlabelled pixels). The original writes ``NONE``; an empty
#: beam here would otherwise fall back to the first concept (``red``) with IoU 0. Status stays
#: "ok" so that suites score the unit as a miss; ``extras.no_concept`` is set.
NO_CONCEPT_LABEL = "(no concept)"


@dataclass(frozen=True, kw_only=True, slots=True)
class CompExpConfig:
    #: Formulas kept per round (BEAM_SIZE).
    beam_size: int = 5
    #: Most leaves in a formula (MAX_FORMULA_LENGTH): ``max_length - 1`` rounds of expansion.
    #: 3 is the setting the MILAN paper compared against.
    max_length: int = 3
    #: Score = ``length_penalty ** (length - 1) * IoU``, length counting leaves and NOTs
    #: (FORMULA_COMPLEXITY_PENALTY; 1.0 = no penalty).
    length_penalty: float = 1.0
    #: Expand only with the this many best single concepts of the unit (BEAM_SEARCH_LIMIT);
    #: ``None``: every concept.
    search_limit: int | None = None
    #: Skip ``A OR A``, ``A AND A`` and ``A AND NOT A`` (the original keeps them; they tie with
    #: ``A`` or are empty and only waste beam slots).
    skip_trivial: bool = True
    #: Categories whose concepts may appear; ``None``: every category of the probe set.
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if not 0.0 < self.length_penalty <= 1.0:
            raise ValueError(f"length_penalty must be in (0, 1], got {self.length_penalty}")
        if self.search_limit is not None and self.search_limit < 1:
            raise ValueError(f"search_limit must be >= 1 or None, got {self.search_limit}")


class CompExp(Method[CompExpConfig]):
    """A logical formula of concepts per unit, found by beam search on IoU."""

    name = "compexp"
    version = "2"  # 2: "(no concept)" for units no concept overlaps
    requires = Requirements(
        evidence=frozenset({"maps", "thresholds", "segmentations"}),
        quantiles=(NETDISSECT_QUANTILE,),
        # The dissection tally runs on the run's device (torch on a GPU, bench.dissect), within
        # its memory budget (1 GiB by default): any GPU.
        resources=Resources(gpus=1),
    )
    chunk_size = 1024

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        from bench.dissect import (
            SignatureAlgebra,
            concept_table_cached,
            no_concept_reason,
            tallies_by_layer,
        )
        from bench.formula import from_json
        from methods.compexp.search import BeamSearch, tree_to_names

        cfg = self.config
        table = concept_table_cached(
            ctx.cache, evidence.probe, cfg.categories, progress=ctx.progress
        )
        algebra = SignatureAlgebra(table)
        out: dict[UnitRef, Description] = {}
        for tally, layer_units in tallies_by_layer(
            ctx.cache, evidence, units, table,
            device=ctx.device, memory_budget=ctx.memory_budget, progress=ctx.progress,
        ):  # fmt: skip
            search = BeamSearch(
                table,
                algebra,
                tally.hist,
                tally.unit_area,
                beam_size=cfg.beam_size,
                max_length=cfg.max_length,
                length_penalty=cfg.length_penalty,
                search_limit=cfg.search_limit,
                skip_trivial=cfg.skip_trivial,
            )
            for u in layer_units:
                r = tally.row(u.index)  # the tally's rows are the recorded units
                best, single, n_scored = search.search(r)
                area = int(tally.unit_area[r])
                if not single.iou > 0.0:
                    # No concept overlaps the unit's mask, so no formula does either (a formula
                    # meets the mask only through one of its leaves); the search's beam is empty.
                    out[u] = Description(
                        unit=u,
                        label=NO_CONCEPT_LABEL,
                        score=0.0,
                        score_name="iou",
                        extras={
                            "no_concept": True,
                            "reason": no_concept_reason(area),
                            "formula": None,
                            "length": 0,
                            "score": 0.0,
                            "categories": [],
                            "best_single": None,
                            "best_single_iou": 0.0,
                            "unit_area": area,
                            "candidates_scored": n_scored,
                        },
                    )
                    continue
                tree = tree_to_names(best.tree, table)
                formula = from_json(tree)
                single_name = table.concepts[int(single.tree[1]) - 1].name
                out[u] = Description(
                    unit=u,
                    label=formula.render(),
                    score=best.iou,
                    score_name="iou",
                    extras={
                        "formula": tree,
                        "length": best.length,
                        "score": best.score,
                        "categories": [
                            table.categories[int(table.primary[table.code(n)])]
                            for n in formula.leaves()
                        ],
                        "best_single": single_name,
                        "best_single_iou": single.iou,
                        "unit_area": area,
                        "candidates_scored": n_scored,
                        "no_concept": False,
                    },
                )
        return [out[u] for u in units]


@dataclass(frozen=True, kw_only=True, slots=True)
class CompExpAnalysisConfig(CompExpConfig):
    """The compositional-explanations paper's analysis setting: beam 10, formulas up to 10."""

    beam_size: int = 10
    max_length: int = 10


class CompExpAnalysis(CompExp):
    """CompExp with the paper's analysis preset (beam 10, length 10)."""

    name = "compexp-analysis"
    Config = CompExpAnalysisConfig
