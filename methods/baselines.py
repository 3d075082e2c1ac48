"""Trivial controls that every suite shows beside the real methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.schema import Description, UnitRef
from methods.base import Method, MethodContext, Requirements

if TYPE_CHECKING:
    from bench.evidence import Evidence


@dataclass(frozen=True, kw_only=True, slots=True)
class DepictionsConfig:
    #: The constant label. "depiction" is the one the DnD paper scored against MILANNOTATIONS
    #: (Bai, Oikarinen et al. 2024, Table 9), where it beat every method.
    label: str = "depiction"


class Depictions(Method):
    """The same label for every unit: what a description that says nothing scores."""

    name = "depictions"
    version = "1"
    Config = DepictionsConfig
    requires = Requirements()

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        return [
            Description(unit=u, label=self.config.label, extras={"constant": True}) for u in units
        ]
