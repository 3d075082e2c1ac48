"""The value every metric wrapper returns: numbers plus the model and settings that made them.

A :class:`MetricResult` is what a suite writes into ``scores.json``: the per-item values (one per
unit, or per class for AUROC), the settings that change those values (model id and revision,
preset, idf, rescaling, ...), whether the numbers are comparable with the published ones, and a
note to print next to every number. A metric that cannot run here (CLIP offline) returns
``status="unavailable"`` with a reason and no values, never a stand-in number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

MetricStatus = Literal["ok", "unavailable"]
METRIC_STATUSES: tuple[str, ...] = ("ok", "unavailable")


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricResult:
    """One metric over a list of items.

    ``values``: float per item, aligned with the inputs (empty when unavailable).
    ``settings``: everything that changes the numbers, JSON-safe.
    ``comparable_with_papers``: False for offline stand-in models and changed protocols.
    ``note``: text to show next to every number (empty when there is nothing to say).
    ``reason``: why the metric is unavailable (``None`` when ``status == "ok"``).
    ``details``: extra per-item arrays (precision, recall, per-reference scores), JSON-safe.
    """

    metric: str
    status: MetricStatus = "ok"
    values: tuple[float, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    comparable_with_papers: bool = True
    note: str = ""
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in METRIC_STATUSES:
            raise ValueError(f"Expected status in {METRIC_STATUSES}, got {self.status!r}")
        if self.status == "unavailable":
            if not self.reason:
                raise ValueError("An unavailable metric result needs a reason")
            if self.values:
                raise ValueError("An unavailable metric result must not carry values")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mean(self) -> float | None:
        """Mean over items; ``None`` when unavailable or empty."""
        if not self.ok or not self.values:
            return None
        return math.fsum(self.values) / len(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "status": self.status,
            "values": list(self.values),
            "mean": self.mean,
            "settings": self.settings,
            "comparable_with_papers": self.comparable_with_papers,
            "note": self.note,
            "reason": self.reason,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetricResult:
        return cls(
            metric=d["metric"],
            status=d.get("status", "ok"),
            values=tuple(float(v) for v in d.get("values", ())),
            settings=dict(d.get("settings") or {}),
            comparable_with_papers=bool(d.get("comparable_with_papers", True)),
            note=d.get("note", ""),
            reason=d.get("reason"),
            details=dict(d.get("details") or {}),
        )


def unavailable(
    metric: str, reason: str, *, settings: dict[str, Any] | None = None
) -> MetricResult:
    """A result that says the metric could not be computed here, and why."""
    return MetricResult(
        metric=metric,
        status="unavailable",
        settings=dict(settings or {}),
        comparable_with_papers=False,
        note=f"unavailable: {reason}",
        reason=reason,
    )


def as_floats(values: Iterable[Any]) -> tuple[float, ...]:
    """Plain Python floats (JSON-safe), from any sequence or array."""
    return tuple(float(v) for v in values)
