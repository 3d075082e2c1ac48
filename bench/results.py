"""Suite results and reading result files: the leaderboard's input.

One file per (run, suite): ``<run_dir>/suites/<suite>.json``. It holds the run's identity and
provenance (copied from ``run.json``), the suite's settings, every method's identity and cost,
one summary per metric (mean, 95% interval and significance group per method, per layer, and
the inter-annotator ceiling where the suite has one), and one record per unit (every method's
label, the references, the per-unit scores and the exemplar strip). The leaderboard is a pure
function of these files. ``from_json`` is strict: unknown keys, wrong types and non-finite
numbers are errors whose message names the offending field, e.g.
``metrics[0].per_method['milan'].ci_low: expected a finite number, got 'NaN'``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bench.errors import DataError, UsageError
from bench.schema import (
    SCHEMA_VERSION,
    STATUSES,
    Status,
    UnitRef,
    dumps,
    read_json,
    write_json,
)

SUITE_RESULT_KIND = "suite-result"
#: Where a suite writes its result, relative to the run directory.
SUITES_DIR = "suites"
#: Kinds of reference text a unit can carry: human (or simulated) annotations
#: (milannotations), the class name of a final-layer unit (final-layer), the planted concept
#: of a synthetic target (planted).
REFERENCE_KINDS: tuple[str, ...] = ("annotations", "class_name", "planted")
#: ``method``: a registered method run by the harness; ``imported``: labels read from another
#: tool's file (``bench score --labels``); ``baseline``: a trivial control such as the constant
#: ``depictions`` label.
METHOD_KINDS: tuple[str, ...] = ("method", "imported", "baseline")
#: ``ok``: the metric was computed; ``unavailable``: it could not be here (CLIP text cosine
#: offline), shown as such and never as a number.
METRIC_SUMMARY_STATUSES: tuple[str, ...] = ("ok", "unavailable")
#: ``real``: a score per unit; ``binary``: a 0/1 outcome per unit (planted: recovered), whose
#: mean is a rate.
VALUE_TYPES: tuple[str, ...] = ("real", "binary")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MethodKind = Literal["method", "imported", "baseline"]
MetricSummaryStatus = Literal["ok", "unavailable"]
ValueType = Literal["real", "binary"]

_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_machine_path(v: str) -> bool:
    """An absolute path of the machine that wrote it (POSIX, Windows, or ``~/``)."""
    return (
        (v.startswith("/") and len(v) > 1 and "\n" not in v)
        or v.startswith("~/")
        or bool(re.match(r"^[A-Za-z]:[\\/]", v))
    )


def publishable(obj: Any) -> Any:
    """``obj`` (JSON) with every absolute path of this machine replaced by its last part, so a
    result file or page names ``annotations.csv``, never ``/home/me/data/annotations.csv``.
    Where identity matters the writers keep a content hash beside the name."""
    if isinstance(obj, str):
        if _is_machine_path(obj):
            name = re.split(r"[\\/]", obj.rstrip("/\\"))[-1]
            return name or obj[:1]
        return obj
    if isinstance(obj, dict):
        return {k: publishable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [publishable(v) for v in obj]
    return obj


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:60]!r}"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _check_num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what}: expected a finite number, got {_jtype(v)}")
    return float(v)


def _check_opt_num(v: Any, what: str) -> float | None:
    return None if v is None else _check_num(v, what)


def _check_int(v: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what}: expected an integer, got {_jtype(v)}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {v}")
    return v


def _check_str(v: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what}: expected a string, got {_jtype(v)}")
    if not empty and not v.strip():
        raise ValueError(f"{what}: expected a non-empty string, got {v!r}")
    return v


def _check_opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _check_str(v, what, empty=True)


def _check_name(v: Any, what: str) -> str:
    _check_str(v, what)
    if _CONTROL.search(v) or v != v.strip():
        raise ValueError(
            f"{what}: expected a name without control characters or edge spaces, got {v!r}"
        )
    return v


def _check_bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{what}: expected true or false, got {_jtype(v)}")
    return v


def _check_choice(v: Any, what: str, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ValueError(f"{what}: expected one of {', '.join(choices)}, got {_jtype(v)}")
    return v


def _check_json_obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: expected an object, got {_jtype(v)}")
    try:
        dumps(v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: expected JSON-serialisable values ({e})") from None
    return v


def _check_dict(v: Any, what: str) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: expected an object, got {_jtype(v)}")
    return v


def _obj(d: Any, where: str, keys: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    """``d`` as a JSON object with only ``keys``, all of ``required`` present."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {_jtype(d)}")
    allowed = set(keys)
    unknown = sorted(k for k in d if k not in allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)}; "
            f"expected only {', '.join(sorted(allowed))}"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}")
    return d


def _build(cls: type[Any], where: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def _key(where: str, key: object) -> str:
    return f"{where}[{key!r}]"


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """A mean over ``n`` items (units, or classes) with its 95% bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    _KEYS: ClassVar[tuple[str, ...]] = ("mean", "ci_low", "ci_high", "n")

    def __post_init__(self) -> None:
        _check_num(self.mean, "mean")
        low = _check_num(self.ci_low, "ci_low")
        high = _check_num(self.ci_high, "ci_high")
        if low > high:
            raise ValueError(f"expected ci_low <= ci_high, got {low!r} > {high!r}")
        _check_int(self.n, "n", minimum=1)

    @classmethod
    def from_interval(cls, interval: Any) -> Estimate:
        """From :class:`metrics.stats.Interval` (or anything with mean, low, high, n)."""
        return cls(
            mean=float(interval.mean),
            ci_low=float(interval.low),
            ci_high=float(interval.high),
            n=int(interval.n),
        )

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}

    @classmethod
    def from_json(cls, d: Any, where: str = "estimate") -> Estimate:
        d = _obj(d, where, cls._KEYS, cls._KEYS)
        return _build(cls, where, **{k: d[k] for k in cls._KEYS})


def _per_layer_to_json(per_layer: Mapping[str, Estimate]) -> dict[str, Any]:
    return {layer: e.to_json() for layer, e in per_layer.items()}


def _per_layer_from_json(d: Any, where: str) -> dict[str, Estimate]:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object of layer -> estimate, got {_jtype(d)}")
    return {layer: Estimate.from_json(e, _key(where, layer)) for layer, e in d.items()}


def _check_per_layer(per_layer: Any) -> None:
    _check_dict(per_layer, "per_layer")
    for layer, e in per_layer.items():
        _check_name(layer, "per_layer key")
        if not isinstance(e, Estimate):
            raise ValueError(f"per_layer[{layer!r}]: expected an Estimate, got {_jtype(e)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodScore:
    """One method on one metric: mean over units, its interval, significance group, per layer.

    ``group``: 1 for the best method and every method not significantly worse than it (paired
    bootstrap over units), 2 for the best of the rest and those tied with it, and so on
    (:func:`metrics.stats.significance_groups`); ``None`` when not computed. ``p_vs_best``: the
    paired bootstrap p-value of the best method against this one (``None`` for the best).
    ``normalised``: where the metric has a ceiling, the ceiling-normalised mean
    ``(method - depictions) / (ceiling - depictions)`` from the means (0: the constant
    ``depictions`` label, 1: the ceiling; ``None`` without a ceiling, a ``depictions`` score, or
    when the ceiling does not exceed ``depictions``); ``normalised_per_layer`` the same per layer.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    group: int | None = None
    p_vs_best: float | None = None
    per_layer: dict[str, Estimate] = field(default_factory=dict)
    normalised: float | None = None
    normalised_per_layer: dict[str, float] = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = (
        "mean", "ci_low", "ci_high", "n", "group", "p_vs_best", "per_layer", "normalised",
        "normalised_per_layer",
    )  # fmt: skip

    def __post_init__(self) -> None:
        Estimate(mean=self.mean, ci_low=self.ci_low, ci_high=self.ci_high, n=self.n)
        if self.group is not None:
            _check_int(self.group, "group", minimum=1)
        if self.p_vs_best is not None:
            p = _check_num(self.p_vs_best, "p_vs_best")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"p_vs_best: expected a p-value in [0, 1], got {p!r}")
        _check_per_layer(self.per_layer)
        if self.normalised is not None:
            _check_num(self.normalised, "normalised")
        _check_dict(self.normalised_per_layer, "normalised_per_layer")
        for layer, v in self.normalised_per_layer.items():
            _check_name(layer, "normalised_per_layer key")
            _check_num(v, f"normalised_per_layer[{layer!r}]")

    @property
    def estimate(self) -> Estimate:
        return Estimate(mean=self.mean, ci_low=self.ci_low, ci_high=self.ci_high, n=self.n)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.estimate.to_json(),
            "group": self.group,
            "p_vs_best": self.p_vs_best,
            "per_layer": _per_layer_to_json(self.per_layer),
            **({"normalised": self.normalised} if self.normalised is not None else {}),
            **(
                {"normalised_per_layer": dict(self.normalised_per_layer)}
                if self.normalised_per_layer
                else {}
            ),
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "score") -> MethodScore:
        d = _obj(d, where, cls._KEYS, Estimate._KEYS)
        per_layer = _per_layer_from_json(d.get("per_layer", {}), f"{where}.per_layer")
        return _build(
            cls,
            where,
            **{k: d[k] for k in Estimate._KEYS},
            group=d.get("group"),
            p_vs_best=d.get("p_vs_best"),
            per_layer=per_layer,
            normalised=d.get("normalised"),
            normalised_per_layer=d.get("normalised_per_layer", {}),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Ceiling:
    """The inter-annotator ceiling (milannotations): each annotation scored against the others,
    overall and per layer; shown beside the methods, never ranked with them."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    per_layer: dict[str, Estimate] = field(default_factory=dict)
    note: str = ""

    _KEYS: ClassVar[tuple[str, ...]] = ("mean", "ci_low", "ci_high", "n", "per_layer", "note")

    def __post_init__(self) -> None:
        Estimate(mean=self.mean, ci_low=self.ci_low, ci_high=self.ci_high, n=self.n)
        _check_per_layer(self.per_layer)
        _check_str(self.note, "note", empty=True)

    @property
    def estimate(self) -> Estimate:
        return Estimate(mean=self.mean, ci_low=self.ci_low, ci_high=self.ci_high, n=self.n)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.estimate.to_json(),
            "per_layer": _per_layer_to_json(self.per_layer),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "ceiling") -> Ceiling:
        d = _obj(d, where, cls._KEYS, Estimate._KEYS)
        per_layer = _per_layer_from_json(d.get("per_layer", {}), f"{where}.per_layer")
        return _build(
            cls,
            where,
            **{k: d[k] for k in Estimate._KEYS},
            per_layer=per_layer,
            note=d.get("note", ""),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricSummary:
    """One metric of a suite over every method.

    ``settings``: everything that changes the numbers (model and revision, preset, idf,
    rescaling, bootstrap resamples and seed, ...), as recorded by the metric.
    ``comparable_with_papers``: False for offline stand-in models and changed protocols;
    ``note`` says so next to every number. ``status="unavailable"`` (CLIP text cosine offline)
    carries a ``reason`` and no numbers. ``alpha`` is the significance level of the groups,
    ``confidence`` the level of the intervals.
    """

    name: str
    status: MetricSummaryStatus = "ok"
    reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    comparable_with_papers: bool = True
    note: str = ""
    higher_is_better: bool = True
    value_type: ValueType = "real"
    per_method: dict[str, MethodScore] = field(default_factory=dict)
    ceiling: Ceiling | None = None
    alpha: float = 0.05
    confidence: float = 0.95

    _KEYS: ClassVar[tuple[str, ...]] = (
        "name", "status", "reason", "settings", "comparable_with_papers", "note",
        "higher_is_better", "value_type", "per_method", "ceiling", "alpha", "confidence",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_choice(self.status, "status", METRIC_SUMMARY_STATUSES)
        _check_opt_str(self.reason, "reason")
        _check_json_obj(self.settings, "settings")
        _check_bool(self.comparable_with_papers, "comparable_with_papers")
        _check_str(self.note, "note", empty=True)
        _check_bool(self.higher_is_better, "higher_is_better")
        _check_choice(self.value_type, "value_type", VALUE_TYPES)
        _check_dict(self.per_method, "per_method")
        for m, s in self.per_method.items():
            _check_name(m, "per_method key")
            if not isinstance(s, MethodScore):
                raise ValueError(f"per_method[{m!r}]: expected a MethodScore, got {_jtype(s)}")
        if self.ceiling is not None and not isinstance(self.ceiling, Ceiling):
            raise ValueError(f"ceiling: expected a Ceiling or null, got {_jtype(self.ceiling)}")
        for name in ("alpha", "confidence"):
            v = _check_num(getattr(self, name), name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name}: expected a level in (0, 1), got {v!r}")
        if self.status == "unavailable":
            if not self.reason or not self.reason.strip():
                raise ValueError("an unavailable metric needs a reason")
            if self.per_method or self.ceiling is not None:
                raise ValueError("an unavailable metric must not carry numbers")
        if self.value_type == "binary":
            for m, s in self.per_method.items():
                if not 0.0 <= s.mean <= 1.0:
                    raise ValueError(
                        f"per_method[{m!r}]: a binary metric's mean is a rate in [0, 1]"
                    )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "settings": self.settings,
            "comparable_with_papers": self.comparable_with_papers,
            "note": self.note,
            "higher_is_better": self.higher_is_better,
            "value_type": self.value_type,
            "per_method": {m: s.to_json() for m, s in self.per_method.items()},
            "ceiling": None if self.ceiling is None else self.ceiling.to_json(),
            "alpha": self.alpha,
            "confidence": self.confidence,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "metric") -> MetricSummary:
        d = _obj(d, where, cls._KEYS, ("name",))
        per_method_raw = d.get("per_method", {})
        if not isinstance(per_method_raw, dict):
            raise ValueError(
                f"{where}.per_method: expected an object, got {_jtype(per_method_raw)}"
            )
        per_method = {
            m: MethodScore.from_json(s, _key(f"{where}.per_method", m))
            for m, s in per_method_raw.items()
        }
        ceiling = d.get("ceiling")
        return _build(
            cls,
            where,
            name=d["name"],
            status=d.get("status", "ok"),
            reason=d.get("reason"),
            settings=d.get("settings", {}),
            comparable_with_papers=d.get("comparable_with_papers", True),
            note=d.get("note", ""),
            higher_is_better=d.get("higher_is_better", True),
            value_type=d.get("value_type", "real"),
            per_method=per_method,
            ceiling=None if ceiling is None else Ceiling.from_json(ceiling, f"{where}.ceiling"),
            alpha=d.get("alpha", 0.05),
            confidence=d.get("confidence", 0.95),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodCost:
    """What a method cost on this run: wall seconds per unit, model calls per unit by component
    (``{"captioner": 15, "language_model": 1}``), the device; all optional (imported labels
    have no cost)."""

    seconds_per_unit: float | None = None
    model_calls_per_unit: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    note: str = ""

    _KEYS: ClassVar[tuple[str, ...]] = (
        "seconds_per_unit",
        "model_calls_per_unit",
        "device",
        "note",
    )

    def __post_init__(self) -> None:
        if self.seconds_per_unit is not None:
            if _check_num(self.seconds_per_unit, "seconds_per_unit") < 0:
                raise ValueError(f"seconds_per_unit: expected >= 0, got {self.seconds_per_unit!r}")
        _check_dict(self.model_calls_per_unit, "model_calls_per_unit")
        for k, v in self.model_calls_per_unit.items():
            _check_name(k, "model_calls_per_unit key")
            if _check_num(v, f"model_calls_per_unit[{k!r}]") < 0:
                raise ValueError(f"model_calls_per_unit[{k!r}]: expected >= 0, got {v!r}")
        _check_opt_str(self.device, "device")
        _check_str(self.note, "note", empty=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds_per_unit": self.seconds_per_unit,
            "model_calls_per_unit": self.model_calls_per_unit,
            "device": self.device,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "cost") -> MethodCost:
        d = _obj(d, where, cls._KEYS)
        return _build(
            cls,
            where,
            seconds_per_unit=d.get("seconds_per_unit"),
            model_calls_per_unit=d.get("model_calls_per_unit", {}),
            device=d.get("device"),
            note=d.get("note", ""),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodInfo:
    """A method's identity in a suite result: name, version, resolved config (as in
    ``Method.identity()``), what kind of method it is, where imported labels came from
    (``source``: the file name and format), and its cost."""

    name: str
    version: str
    config: dict[str, Any] = field(default_factory=dict)
    kind: MethodKind = "method"
    source: str | None = None
    cost: MethodCost = field(default_factory=MethodCost)

    _KEYS: ClassVar[tuple[str, ...]] = ("name", "version", "config", "kind", "source", "cost")

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_str(self.version, "version")
        _check_json_obj(self.config, "config")
        _check_choice(self.kind, "kind", METHOD_KINDS)
        _check_opt_str(self.source, "source")
        if not isinstance(self.cost, MethodCost):
            raise ValueError(f"cost: expected a MethodCost, got {_jtype(self.cost)}")

    @classmethod
    def from_identity(
        cls,
        identity: Mapping[str, Any],
        *,
        kind: MethodKind = "method",
        source: str | None = None,
        cost: MethodCost | None = None,
    ) -> MethodInfo:
        """From ``Method.identity()`` (``{"name", "version", "config"}``)."""
        return cls(
            name=identity["name"],
            version=str(identity["version"]),
            config=dict(identity.get("config") or {}),
            kind=kind,
            source=source,
            cost=cost or MethodCost(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "config": self.config,
            "kind": self.kind,
            "source": self.source,
            "cost": self.cost.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "method") -> MethodInfo:
        d = _obj(d, where, cls._KEYS, ("name", "version"))
        cost = MethodCost.from_json(d.get("cost", {}), f"{where}.cost")
        return _build(
            cls,
            where,
            name=d["name"],
            version=d["version"],
            config=d.get("config", {}),
            kind=d.get("kind", "method"),
            source=d.get("source"),
            cost=cost,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RunIdentity:
    """Which run a suite result scores, copied from its ``run.json``: run id, target, probe,
    seed, the resolved config, the provenance (python, platform, package versions, target and
    probe identities), the run file's schema version and creation time.

    Labels scored without a run (``bench score --labels``) get a run id of their own and
    ``probe=None``.
    """

    run_id: str
    target: str
    probe: str | None = None
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created: str | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "run_id", "target", "probe", "seed", "config", "provenance", "schema_version", "created",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_name(self.run_id, "run_id")
        _check_name(self.target, "target")
        if self.probe is not None:
            _check_name(self.probe, "probe")
        if self.seed is not None:
            _check_int(self.seed, "seed")
        _check_json_obj(self.config, "config")
        _check_json_obj(self.provenance, "provenance")
        _check_int(self.schema_version, "schema_version", minimum=1)
        _check_opt_str(self.created, "created")

    @classmethod
    def from_run_state(cls, state: Mapping[str, Any]) -> RunIdentity:
        """From the dict that ``bench.api.run`` writes to ``run.json``."""
        config = dict(state.get("config") or {})
        return cls(
            run_id=state.get("run_id"),  # type: ignore[arg-type]  # validated
            target=config.get("target"),  # type: ignore[arg-type]
            probe=config.get("probe"),
            seed=config.get("seed"),
            config=publishable(config),
            provenance=publishable(dict(state.get("provenance") or {})),
            schema_version=state.get("schema_version", SCHEMA_VERSION),
            created=state.get("created"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "target": self.target,
            "probe": self.probe,
            "seed": self.seed,
            "config": self.config,
            "provenance": self.provenance,
            "schema_version": self.schema_version,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "run") -> RunIdentity:
        d = _obj(d, where, cls._KEYS, ("run_id", "target"))
        return _build(
            cls,
            where,
            run_id=d["run_id"],
            target=d["target"],
            probe=d.get("probe"),
            seed=d.get("seed"),
            config=d.get("config", {}),
            provenance=d.get("provenance", {}),
            schema_version=d.get("schema_version", SCHEMA_VERSION),
            created=d.get("created"),
        )


def _check_exemplar_path(v: Any) -> str:
    from pathlib import PurePosixPath, PureWindowsPath

    _check_str(v, "exemplars")
    if (
        "\\" in v
        or "\x00" in v
        or PurePosixPath(v).is_absolute()
        or PureWindowsPath(v).is_absolute()
        or PureWindowsPath(v).drive
    ):
        raise ValueError(
            f"exemplars: expected a path relative to the result file with '/' separators, got {v!r}"
        )
    if not v.lower().endswith(".png"):
        raise ValueError(f"exemplars: expected a .png file, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitResult:
    """One unit in a suite: every method's label, the references, the per-unit scores.

    ``labels``: method -> text shown and scored (a failed method has no label, ``status`` error
    and its message in ``errors``). ``references``: kind (:data:`REFERENCE_KINDS`) -> texts.
    ``scores``: metric -> method -> value (0/1 for binary metrics such as planted ``recovered``).
    ``exemplars``: path, relative to the result file, of a PNG strip of the unit's top images
    with the activation regions outlined (written by the suite). ``details``: suite-specific
    JSON (e.g. ``{"reliable": true}`` under the DnD protocol).
    """

    unit: UnitRef
    labels: dict[str, str] = field(default_factory=dict)
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    status: dict[str, Status] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    exemplars: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = (
        "unit", "labels", "references", "scores", "status", "errors", "exemplars", "details",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.unit, UnitRef):
            raise ValueError(f"unit: expected a UnitRef, got {_jtype(self.unit)}")
        _check_dict(self.labels, "labels")
        for m, text in self.labels.items():
            _check_name(m, "labels key")
            _check_str(text, f"labels[{m!r}]", empty=True)
        _check_dict(self.references, "references")
        refs: dict[str, tuple[str, ...]] = {}
        for kind, texts in self.references.items():
            _check_choice(kind, "references key", REFERENCE_KINDS)
            if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
                raise ValueError(
                    f"references[{kind!r}]: expected a list of strings, got {_jtype(texts)}"
                )
            for i, t in enumerate(texts):
                _check_str(t, f"references[{kind!r}][{i}]", empty=True)
            refs[kind] = tuple(texts)
        object.__setattr__(self, "references", refs)
        _check_dict(self.scores, "scores")
        for metric, per_method in self.scores.items():
            _check_name(metric, "scores key")
            _check_dict(per_method, f"scores[{metric!r}]")
            for m, v in per_method.items():
                _check_name(m, f"scores[{metric!r}] key")
                _check_num(v, f"scores[{metric!r}][{m!r}]")
        _check_dict(self.status, "status")
        for m, s in self.status.items():
            _check_choice(s, f"status[{m!r}]", STATUSES)
            if s == "error" and not self.errors.get(m):
                raise ValueError(f"status[{m!r}] is 'error' but errors[{m!r}] gives no message")
        _check_dict(self.errors, "errors")
        for m, msg in self.errors.items():
            _check_str(msg, f"errors[{m!r}]")
        if self.exemplars is not None:
            _check_exemplar_path(self.exemplars)
        _check_json_obj(self.details, "details")

    def method_status(self, method: str) -> Status:
        """``ok`` unless the suite recorded an error for ``method`` on this unit."""
        return self.status.get(method, "ok")

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit.to_json(),
            "labels": self.labels,
            "references": {k: list(v) for k, v in self.references.items()},
            "scores": self.scores,
            "status": self.status,
            "errors": self.errors,
            "exemplars": self.exemplars,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "unit") -> UnitResult:
        d = _obj(d, where, cls._KEYS, ("unit",))
        u = _obj(d["unit"], f"{where}.unit", ("layer", "index"), ("layer", "index"))
        unit = _build(UnitRef, f"{where}.unit", layer=u["layer"], index=u["index"])
        return _build(
            cls,
            where,
            unit=unit,
            labels=d.get("labels", {}),
            references=d.get("references", {}),
            scores=d.get("scores", {}),
            status=d.get("status", {}),
            errors=d.get("errors", {}),
            exemplars=d.get("exemplars"),
            details=d.get("details", {}),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassMatch:
    """cifar-auroc, one class, one method: the units whose labels are closest to the class name
    (ties kept), the label similarity, and the metrics (AUROC, AUPRC) averaged over them."""

    units: tuple[UnitRef, ...]
    similarity: float | None = None
    scores: dict[str, float] = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = ("units", "similarity", "scores")

    def __post_init__(self) -> None:
        if isinstance(self.units, (str, bytes)) or not isinstance(self.units, (list, tuple)):
            raise ValueError(f"units: expected a list of units, got {_jtype(self.units)}")
        for i, u in enumerate(self.units):
            if not isinstance(u, UnitRef):
                raise ValueError(f"units[{i}]: expected a UnitRef, got {_jtype(u)}")
        object.__setattr__(self, "units", tuple(self.units))
        _check_opt_num(self.similarity, "similarity")
        _check_dict(self.scores, "scores")
        for k, v in self.scores.items():
            _check_name(k, "scores key")
            _check_num(v, f"scores[{k!r}]")

    def to_json(self) -> dict[str, Any]:
        return {
            "units": [u.to_json() for u in self.units],
            "similarity": self.similarity,
            "scores": self.scores,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "match") -> ClassMatch:
        d = _obj(d, where, cls._KEYS, ("units",))
        raw = d["units"]
        if not isinstance(raw, list):
            raise ValueError(f"{where}.units: expected a list, got {_jtype(raw)}")
        units = []
        for i, u in enumerate(raw):
            u = _obj(u, f"{where}.units[{i}]", ("layer", "index"), ("layer", "index"))
            units.append(_build(UnitRef, f"{where}.units[{i}]", layer=u["layer"], index=u["index"]))
        return _build(
            cls,
            where,
            units=tuple(units),
            similarity=d.get("similarity"),
            scores=d.get("scores", {}),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassResult:
    """cifar-auroc per-class detail: one class (``dataset`` e.g. ``cifar10``, ``cifar100`` or
    the synthetic held-out classes), its positives among ``n`` images, each method's match."""

    name: str
    dataset: str | None = None
    n: int | None = None
    n_positive: int | None = None
    per_method: dict[str, ClassMatch] = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = ("name", "dataset", "n", "n_positive", "per_method")

    def __post_init__(self) -> None:
        _check_str(self.name, "name")
        _check_opt_str(self.dataset, "dataset")
        if self.n is not None:
            _check_int(self.n, "n", minimum=0)
        if self.n_positive is not None:
            _check_int(self.n_positive, "n_positive", minimum=0)
        _check_dict(self.per_method, "per_method")
        for m, match in self.per_method.items():
            _check_name(m, "per_method key")
            if not isinstance(match, ClassMatch):
                raise ValueError(f"per_method[{m!r}]: expected a ClassMatch, got {_jtype(match)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "n": self.n,
            "n_positive": self.n_positive,
            "per_method": {m: c.to_json() for m, c in self.per_method.items()},
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "class") -> ClassResult:
        d = _obj(d, where, cls._KEYS, ("name",))
        raw = d.get("per_method", {})
        if not isinstance(raw, dict):
            raise ValueError(f"{where}.per_method: expected an object, got {_jtype(raw)}")
        per_method = {
            m: ClassMatch.from_json(c, _key(f"{where}.per_method", m)) for m, c in raw.items()
        }
        return _build(
            cls,
            where,
            name=d["name"],
            dataset=d.get("dataset"),
            n=d.get("n"),
            n_positive=d.get("n_positive"),
            per_method=per_method,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SuiteResult:
    """Everything one suite measured on one run: the file ``<run_dir>/suites/<suite>.json``.

    ``settings``: the suite's resolved settings (protocol, layers, presets, ...). ``offline``:
    the suite used offline stand-ins; ``offline_note`` says what that means for the numbers
    ("offline BERTScore (all-MiniLM-L6-v2): not comparable with the papers"). ``methods``:
    name -> identity and cost, including imported labels and the ``depictions`` baseline.
    ``metrics``: in display order. ``units``: in the target's layer order. ``classes``:
    cifar-auroc's per-class detail (empty elsewhere).
    """

    run: RunIdentity
    suite: str
    methods: dict[str, MethodInfo]
    metrics: tuple[MetricSummary, ...]
    units: tuple[UnitResult, ...] = ()
    classes: tuple[ClassResult, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    offline: bool = False
    offline_note: str = ""
    schema_version: int = SCHEMA_VERSION

    kind: ClassVar[str] = SUITE_RESULT_KIND
    _KEYS: ClassVar[tuple[str, ...]] = (
        "kind", "schema_version", "run", "suite", "settings", "offline", "offline_note",
        "methods", "metrics", "units", "classes",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.run, RunIdentity):
            raise ValueError(f"run: expected a RunIdentity, got {_jtype(self.run)}")
        _check_str(self.suite, "suite")
        if not _SUITE_NAME.match(self.suite):
            raise ValueError(
                f"suite: expected a name of letters, digits, '.', '_' or '-', got {self.suite!r}"
            )
        _check_json_obj(self.settings, "settings")
        _check_bool(self.offline, "offline")
        _check_str(self.offline_note, "offline_note", empty=True)
        if self.offline and not self.offline_note.strip():
            raise ValueError(
                "offline_note: an offline result must say what offline means for its numbers"
            )
        if _check_int(self.schema_version, "schema_version", minimum=1) != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version: expected {SCHEMA_VERSION}, got {self.schema_version}"
            )
        _check_dict(self.methods, "methods")
        if not self.methods:
            raise ValueError("methods: expected at least one method")
        for m, info in self.methods.items():
            if not isinstance(info, MethodInfo):
                raise ValueError(f"methods[{m!r}]: expected a MethodInfo, got {_jtype(info)}")
            if info.name != m:
                raise ValueError(f"methods[{m!r}]: the key must equal the name, got {info.name!r}")
        for attr, cls in (
            ("metrics", MetricSummary),
            ("units", UnitResult),
            ("classes", ClassResult),
        ):
            value = getattr(self, attr)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{attr}: expected a list, got {_jtype(value)}")
            for i, item in enumerate(value):
                if not isinstance(item, cls):
                    raise ValueError(f"{attr}[{i}]: expected a {cls.__name__}, got {_jtype(item)}")
            object.__setattr__(self, attr, tuple(value))
        self._check_references()

    def _check_references(self) -> None:
        methods = self.methods
        metric_names: dict[str, MetricSummary] = {}
        for i, metric in enumerate(self.metrics):
            if metric.name in metric_names:
                raise ValueError(f"metrics[{i}]: metric {metric.name!r} appears twice")
            metric_names[metric.name] = metric
            for m in metric.per_method:
                if m not in methods:
                    raise ValueError(f"metrics[{i}].per_method: {_unknown_method(m, methods)}")
            groups = [s.group for s in metric.per_method.values() if s.group is not None]
            if groups and min(groups) != 1:
                raise ValueError(
                    f"metrics[{i}]: significance groups must start at 1, got {sorted(set(groups))}"
                )
        seen: set[UnitRef] = set()
        for i, u in enumerate(self.units):
            where = f"units[{i}] ({u.unit})"
            if u.unit in seen:
                raise ValueError(f"{where}: unit appears twice")
            seen.add(u.unit)
            for part in ("labels", "status", "errors"):
                for m in getattr(u, part):
                    if m not in methods:
                        raise ValueError(f"{where}.{part}: {_unknown_method(m, methods)}")
            for mname, per_method in u.scores.items():
                summary = metric_names.get(mname)
                if summary is None:
                    raise ValueError(
                        f"{where}.scores: metric {mname!r} is not among the suite's metrics "
                        f"({', '.join(metric_names) or 'none'})"
                    )
                if not summary.ok:
                    raise ValueError(
                        f"{where}.scores: metric {mname!r} is unavailable and has no scores"
                    )
                for m, v in per_method.items():
                    if m not in methods:
                        raise ValueError(
                            f"{where}.scores[{mname!r}]: {_unknown_method(m, methods)}"
                        )
                    if summary.value_type == "binary" and v not in (0, 1):
                        raise ValueError(
                            f"{where}.scores[{mname!r}][{m!r}]: a binary metric takes 0 or 1, "
                            f"got {v!r}"
                        )
        for i, c in enumerate(self.classes):
            for m, match in c.per_method.items():
                if m not in methods:
                    raise ValueError(f"classes[{i}].per_method: {_unknown_method(m, methods)}")
                for k in match.scores:
                    if k not in metric_names:
                        raise ValueError(
                            f"classes[{i}].per_method[{m!r}].scores: metric {k!r} is not among "
                            f"the suite's metrics ({', '.join(metric_names) or 'none'})"
                        )

    def metric(self, name: str) -> MetricSummary:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schema_version": self.schema_version,
            "run": self.run.to_json(),
            "suite": self.suite,
            "settings": self.settings,
            "offline": self.offline,
            "offline_note": self.offline_note,
            "methods": {m: info.to_json() for m, info in self.methods.items()},
            "metrics": [m.to_json() for m in self.metrics],
            "units": [u.to_json() for u in self.units],
            "classes": [c.to_json() for c in self.classes],
        }

    @classmethod
    def from_json(cls, d: Any) -> SuiteResult:
        d = _obj(
            d, "result", cls._KEYS, ("kind", "schema_version", "run", "suite", "methods", "metrics")
        )
        if d["kind"] != SUITE_RESULT_KIND:
            raise ValueError(f"kind: expected {SUITE_RESULT_KIND!r}, got {_jtype(d['kind'])}")
        version = d["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version: expected {SCHEMA_VERSION}, got {_jtype(version)}"
                + (
                    "; it was written by a newer neuron-bench: upgrade to read it"
                    if isinstance(version, int) and version > SCHEMA_VERSION
                    else ""
                )
            )
        methods_raw = d["methods"]
        if not isinstance(methods_raw, dict):
            raise ValueError(f"methods: expected an object, got {_jtype(methods_raw)}")
        lists = {}
        for attr in ("metrics", "units", "classes"):
            raw = d.get(attr, [])
            if not isinstance(raw, list):
                raise ValueError(f"{attr}: expected a list, got {_jtype(raw)}")
            lists[attr] = raw
        return _build(
            cls,
            "",
            run=RunIdentity.from_json(d["run"], "run"),
            suite=d["suite"],
            settings=d.get("settings", {}),
            offline=d.get("offline", False),
            offline_note=d.get("offline_note", ""),
            methods={
                m: MethodInfo.from_json(v, _key("methods", m)) for m, v in methods_raw.items()
            },
            metrics=tuple(
                MetricSummary.from_json(m, f"metrics[{i}]") for i, m in enumerate(lists["metrics"])
            ),
            units=tuple(
                UnitResult.from_json(u, f"units[{i}]") for i, u in enumerate(lists["units"])
            ),
            classes=tuple(
                ClassResult.from_json(c, f"classes[{i}]") for i, c in enumerate(lists["classes"])
            ),
            schema_version=version,
        )


def _unknown_method(m: str, methods: Mapping[str, Any]) -> str:
    return f"method {m!r} is not among the suite's methods ({', '.join(methods)})"


def suite_result_path(run_dir: str | os.PathLike[str], suite: str) -> Path:
    """``<run_dir>/suites/<suite>.json``: where a suite writes its result."""
    if not _SUITE_NAME.match(suite):
        raise ValueError(
            f"Expected a suite name of letters, digits, '.', '_' or '-', got {suite!r}"
        )
    return Path(run_dir) / SUITES_DIR / f"{suite}.json"


def write_suite_result(path: str | os.PathLike[str], result: SuiteResult) -> Path:
    """Write ``result`` as canonical JSON (sorted keys, atomic); returns the path."""
    if not isinstance(result, SuiteResult):
        raise TypeError(f"Expected a SuiteResult, got {type(result).__name__}")
    write_json(path, result.to_json())
    return Path(path)


def read_run_identity(run_dir: str | os.PathLike[str]) -> RunIdentity:
    """The identity of the run in ``run_dir``, from its ``run.json``."""
    path = Path(run_dir) / "run.json"
    try:
        state = read_json(path)
    except FileNotFoundError:
        raise DataError(
            f"{path}: no run.json; expected a run directory written by `bench run`."
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({e}).") from None
    try:
        return RunIdentity.from_run_state(state)
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a complete run.json ({e}); re-run `bench run`.") from None


def read_suite_result(path: str | os.PathLike[str]) -> SuiteResult:
    """Read and validate one suite result file.

    Raises :class:`bench.errors.DataError` naming the file and what is wrong with it.
    """
    path = Path(path)
    fix = "Re-run the suite that wrote it, or leave it out."
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: suite result file not found.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a suite result file, got a directory.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the suite result file ({e}).") from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise DataError(
            f"{path}: not valid JSON ({e}); the file is truncated or not a suite result. {fix}"
        ) from None
    if not isinstance(d, dict) or d.get("kind") != SUITE_RESULT_KIND:
        got = d.get("kind") if isinstance(d, dict) else None
        raise DataError(
            f'{path}: expected a suite result (a JSON object with "kind": '
            f'"{SUITE_RESULT_KIND}"), got {_jtype(got) if isinstance(d, dict) else _jtype(d)}. '
            f"Pass the files under <run_dir>/{SUITES_DIR}/, not run.json or units.jsonl."
        )
    try:
        return SuiteResult.from_json(d)
    except ValueError as e:
        raise DataError(f"{path}: invalid suite result: {e}. {fix}") from None


def find_suite_results(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Result files named by ``paths``: files as given; for a directory (a run directory, its
    ``suites/`` folder, or a folder of runs), every ``suites/*.json`` below it, sorted.

    Raises :class:`bench.errors.UsageError` when a path does not exist, a directory holds no
    result, or nothing was given.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*.json") if f.parent.name == SUITES_DIR and f.is_file()
            )
            if not found:
                raise UsageError(
                    f"{p}: no suite results found (expected <run_dir>/{SUITES_DIR}/<suite>.json "
                    "below it); score the run first, or pass result files."
                )
        elif p.exists():
            found = [p]
        else:
            raise UsageError(f"{p}: no such file or directory; pass suite result files or runs.")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    if not out:
        raise UsageError("Expected at least one suite result file or run directory, got none.")
    return out


def load_suite_results(
    paths: Iterable[str | os.PathLike[str]],
) -> list[tuple[Path, SuiteResult]]:
    """Find, read and validate suite results (see :func:`find_suite_results`); two files holding
    the same suite of the same run with the same settings are an error (the same result twice);
    the same labels scored with other settings are another result."""
    loaded = [(p, read_suite_result(p)) for p in find_suite_results(paths)]
    first: dict[tuple[str, str, str], Path] = {}
    for p, r in loaded:
        key = result_identity(r)
        if key in first:
            raise DataError(
                f"{first[key]} and {p} both hold suite '{r.suite}' of run {r.run.run_id} with "
                "the same settings; pass only one of them."
            )
        first[key] = p
    return loaded


def result_identity(result: SuiteResult) -> tuple[str, str, str]:
    """What makes a result one result: its run, its suite and the suite's settings."""
    return (result.run.run_id, result.suite, dumps(result.settings))


def read_exemplar(result_path: str | os.PathLike[str], unit: UnitResult) -> bytes | None:
    """The PNG bytes of ``unit``'s exemplar strip (``None`` when it has none), read relative to
    its result file. Raises :class:`bench.errors.DataError` when missing or not a PNG."""
    if unit.exemplars is None:
        return None
    here = Path(result_path).parent
    # The run directory: results are <run>/suites/<suite>.json, strips <run>/exemplars/*.png.
    run_dir = here.parent if here.name == "suites" else here
    path = here / unit.exemplars
    try:
        inside = path.resolve().is_relative_to(run_dir.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if Path(unit.exemplars).is_absolute() or not inside:
        raise DataError(
            f"{result_path}: unit {unit.unit}: exemplar image '{unit.exemplars}' lies outside the "
            f"run directory {run_dir}; expected a path inside it (such as "
            "'../exemplars/<file>.png'). Fix or re-create the result file."
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"{result_path}: unit {unit.unit}: exemplar image '{unit.exemplars}' cannot be read "
            f"({e.strerror or e}; looked for {path}). Keep the run directory together, or re-run "
            "the suite."
        ) from None
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(
            f"{result_path}: unit {unit.unit}: exemplar image '{unit.exemplars}' is not a PNG "
            "file. Re-run the suite."
        )
    return data


#: The constant-label baseline scored beside every method (the DnD paper's "depictions").
BASELINE = "depictions"


def with_normalised(
    per_method: dict[str, MethodScore], ceiling: Ceiling, *, higher_is_better: bool = True
) -> dict[str, MethodScore]:
    """``per_method`` with each method's ceiling-normalised mean (overall and per layer) filled
    in from the means of the method, the ``depictions`` baseline and the ceiling."""
    from dataclasses import replace

    from metrics.stats import ceiling_normalised

    base = per_method.get(BASELINE)
    if base is None:
        return per_method
    out = {}
    for m, s in per_method.items():
        overall = ceiling_normalised(
            s.mean, base.mean, ceiling.mean, higher_is_better=higher_is_better
        )
        layers: dict[str, float] = {}
        for layer, e in s.per_layer.items():
            b, c = base.per_layer.get(layer), ceiling.per_layer.get(layer)
            if b is None or c is None:
                continue
            v = ceiling_normalised(e.mean, b.mean, c.mean, higher_is_better=higher_is_better)
            if v is not None:
                layers[layer] = v
        out[m] = replace(s, normalised=overall, normalised_per_layer=layers)
    return out
