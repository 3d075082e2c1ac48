"""Trivial controls that every suite shows beside the real methods."""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Baseline


@dataclass(frozen=True, kw_only=True, slots=True)
class DepictionsConfig:
    #: The constant label. "depiction" is the one the DnD paper scored against MILANNOTATIONS
    #: (Bai, Oikarinen et al. 2024, Table 9), where it beat every method.
    label: str = "depiction"


class Depictions(Baseline[DepictionsConfig]):
    """The same label for every unit: what a description that says nothing scores."""

    name = "depictions"
    version = "1"

    def constant_label(self) -> str:
        return self.config.label
