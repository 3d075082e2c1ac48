"""Network Dissection (Bau et al., CVPR 2017), as NetDissect-Lite computes it.

Per unit: threshold at the unit's top-0.5% quantile over every spatial position of the probe set;
upsample each activation map bilinearly to the segmentation size and threshold it; IoU against
every concept, accumulated over the whole probe set, with the category-restricted denominator;
the best concept overall and per category. See README.md for the conventions and deviations.
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

#: IoU above which NetDissect calls a unit "interpretable" (SCORE_THRESHOLD).
INTERPRETABLE_IOU = 0.04
#: The label of a unit whose best IoU is 0 (it never exceeds its threshold, or its mask covers
#: no concept): NetDissect-Lite gives it no label. Status stays "ok" so that suites score it as a
#: miss (a label that names nothing) rather than leave the unit out; ``extras.no_concept`` is set.
NO_CONCEPT_LABEL = "(no concept)"
CONVENTIONS = ("lite", "original")


@dataclass(frozen=True, kw_only=True, slots=True)
class NetDissectConfig:
    #: IoU denominator. "lite" (NetDissect-Lite, the default): a unit's activation counts towards
    #: category c only in images where c labels some pixel inside the activated region (or the
    #: whole image). "original" (NetDissect 2017): in every image where c is present at all.
    convention: str = "lite"
    #: Categories to dissect against; ``None``: every category of the probe set (the real
    #: Broden probe already defaults to the paper's object, part, scene, texture, color).
    categories: tuple[str, ...] | None = None
    #: Units whose best IoU exceeds this are flagged interpretable (the paper's 0.04).
    interpretable_iou: float = INTERPRETABLE_IOU

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if not 0.0 <= self.interpretable_iou <= 1.0:
            raise ValueError(f"interpretable_iou must be in [0, 1], got {self.interpretable_iou}")


class NetDissect(Method[NetDissectConfig]):
    """The best-matching concept of each unit, by IoU of thresholded activations with concept
    segmentations (Broden format)."""

    name = "netdissect"
    version = "2"  # 2: "(no concept)" for units whose every IoU is 0
    requires = Requirements(
        evidence=frozenset({"maps", "thresholds", "segmentations"}),
        quantiles=(NETDISSECT_QUANTILE,),
        # The dissection tally runs on the run's device (torch on a GPU, bench.dissect), within
        # its memory budget (1 GiB by default): any GPU.
        resources=Resources(gpus=1),
    )
    chunk_size = 4096

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        import numpy as np

        from bench.dissect import (
            concept_table_cached,
            netdissect_iou,
            no_concept_reason,
            tallies_by_layer,
        )

        cfg = self.config
        table = concept_table_cached(
            ctx.cache, evidence.probe, cfg.categories, progress=ctx.progress
        )
        out: dict[UnitRef, Description] = {}
        for tally, layer_units in tallies_by_layer(
            ctx.cache, evidence, units, table,
            device=ctx.device, memory_budget=ctx.memory_budget, progress=ctx.progress,
        ):  # fmt: skip
            inter = tally.intersections(table)
            iou = netdissect_iou(tally, table, cfg.convention, inter)
            cats = np.asarray([-1, *table.primary[1:]])
            for u in layer_units:
                r = tally.row(u.index)  # the tally's rows are the recorded units
                row = iou[r]
                per_category = {}
                for ci, cat in enumerate(table.categories):
                    codes = np.nonzero(cats == ci)[0]
                    if len(codes) == 0:
                        continue
                    best = int(codes[np.argmax(row[codes])])
                    per_category[cat] = {
                        "label": table.concepts[best - 1].name,
                        "iou": float(row[best]),
                    }
                code = int(np.argmax(row[1:])) + 1
                score = float(row[code])
                area = int(tally.unit_area[r])
                common = {
                    "convention": cfg.convention,
                    "unit_area": area,
                    "active_images": int(tally.active_images[r]),
                }
                if not score > 0.0:
                    # Every IoU is 0: the argmax would be the first concept (Lite's "red").
                    out[u] = Description(
                        unit=u,
                        label=NO_CONCEPT_LABEL,
                        score=0.0,
                        score_name="iou",
                        extras={
                            "no_concept": True,
                            "reason": no_concept_reason(area),
                            "concept": None,
                            "category": None,
                            "interpretable": False,
                            "intersection": 0,
                            "per_category": {},
                            **common,
                        },
                    )
                    continue
                concept = table.concepts[code - 1]
                out[u] = Description(
                    unit=u,
                    label=concept.name,
                    score=score,
                    score_name="iou",
                    extras={
                        "no_concept": False,
                        "concept": concept.name,
                        "raw_name": concept.raw_name,
                        "number": concept.number,
                        "category": table.categories[int(table.primary[code])],
                        "interpretable": score > cfg.interpretable_iou,
                        "intersection": int(inter[r, code]),
                        "per_category": per_category,
                        **common,
                    },
                )
        return [out[u] for u in units]
