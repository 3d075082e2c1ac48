"""Put comparable suite results into one table.

Two results are *comparable* when they score the same suite on the same target with the same
reference settings (suite config, text models, protocol, bootstrap, metric settings): only the
labels differ. The leaderboard then shows every method of all of them in one table, whether the
labels came from a run, an import or several runs, with intervals and paired significance groups
recomputed from the per-unit scores the result files hold, on the units every method was scored
on (paired tests need the same units). Each method's own coverage stays visible beside it.

Results whose settings differ stay separate tables; :func:`differing_settings` says what differs
so each table can be headed by it. A result whose summaries cannot be rebuilt from its per-unit
scores (``cifar-auroc`` scores classes, not units) is never merged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.results import (
    BASELINE,
    Ceiling,
    Estimate,
    MethodInfo,
    MethodScore,
    MetricSummary,
    RunIdentity,
    SuiteResult,
    UnitResult,
    with_normalised,
)
from bench.schema import UnitRef, dumps

__all__ = ["Table", "comparable_settings", "differing_settings", "tables"]

#: Suite and metric settings (at any depth) that count or record what was scored rather than
#: how: they differ between comparable results whose labels cover different units or methods
#: (faithfulness: each method's label counts, whether the activations came from the run's
#: recording or a forward pass over the same probe; generated: the prompts, strips and model
#: calls of the labels scored).
VOLATILE_SETTINGS = frozenset(
    {
        "units",
        "units_labelled",
        "units_reliable",
        "groups_over_items",
        "groups_withheld",
        "labels",
        "activations_from",
        "prompts",
        "empty_labels",
        "strips",
        "calls",
    }
)
#: Identity fields of a method that say which labels these are (not the run they came from).
_METHOD_IDENTITY = ("name", "version", "config", "kind", "source")


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """One leaderboard table: the results it merges (path, result) and the merged result."""

    key: str
    sources: tuple[tuple[Path, SuiteResult], ...]
    result: SuiteResult
    #: method name in the table -> (source index, name in that source's result)
    origin: dict[str, tuple[tuple[int, str], ...]]

    @property
    def merged(self) -> bool:
        return len(self.sources) > 1


def _strip(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _strip(v) if isinstance(v, Mapping) else v
        for k, v in settings.items()
        if k not in VOLATILE_SETTINGS
    }


def comparable_settings(result: SuiteResult) -> dict[str, Any]:
    """What must be equal for two results to share a table (suite, target, settings, metrics)."""
    return {
        "suite": result.suite,
        "target": result.run.target,
        "settings": _strip(result.settings),
        "offline": result.offline,
        "offline_note": result.offline_note,
        "metrics": [
            {
                "name": m.name,
                "status": m.status,
                "settings": _strip(m.settings),
                "higher_is_better": m.higher_is_better,
                "value_type": m.value_type,
                "alpha": m.alpha,
                "confidence": m.confidence,
            }
            for m in result.metrics
        ],
    }


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and "name" in x for x in obj):
        out = {}
        for x in obj:
            rest = {k: v for k, v in x.items() if k != "name"}
            out.update(_flatten(rest, f"{prefix}[{x['name']}]"))
        return out
    return {prefix: dumps(obj)}


def differing_settings(results: Sequence[SuiteResult]) -> list[dict[str, str]]:
    """For results of one suite and target, per result the settings (dotted keys -> JSON
    values) whose values are not the same across all of them."""
    flat = [_flatten(comparable_settings(r)["settings"]) for r in results]
    flat = [{**f, "offline": dumps(r.offline)} for f, r in zip(flat, results, strict=True)]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({f.get(k) for f in flat}) > 1]
    # The suite's own options name the difference best ("class_names = names.txt"); what they
    # expand to in the settings (class_names.kind, .sha256, ...) is left to the details.
    prefix = "suite.config."
    options = {k[len(prefix) :] for k in differ if k.startswith(prefix)}
    shown = [
        k
        for k in differ
        if k.startswith(prefix) or re.split(r"[.\[]", k, maxsplit=1)[0] not in options
    ]
    return [
        {(k[len(prefix) :] if k.startswith(prefix) else k): _short(f.get(k)) for k in shown}
        for f in flat
    ]


def _short(value: str | None, limit: int = 48) -> str:
    """A setting's JSON value for a heading: strings without quotes, long values cut."""
    if value is None:
        return "(unset)"
    try:
        v = json.loads(value)
    except ValueError:
        v = value
    text = v if isinstance(v, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _mergeable(result: SuiteResult) -> bool:
    """Whether every summary can be rebuilt from the per-unit scores."""
    for m in result.metrics:
        if not m.ok:
            continue
        for name, s in m.per_method.items():
            have = sum(1 for u in result.units if name in u.scores.get(m.name, {}))
            if have != s.n:
                return False
    return True


def _identity(info: MethodInfo) -> str:
    d = info.to_json()
    return dumps({k: d.get(k) for k in _METHOD_IDENTITY})


def _estimate(values: Sequence[float], boot: Mapping[str, Any], confidence: float) -> Estimate:
    from metrics.stats import bootstrap_ci

    ci = bootstrap_ci(
        values,
        confidence=confidence,
        n_resamples=int(boot.get("n_resamples", 10_000)),
        seed=int(boot.get("seed", 0)),
    )
    return Estimate(
        mean=ci.mean, ci_low=min(ci.low, ci.mean), ci_high=max(ci.high, ci.mean), n=ci.n
    )


def _merge_metric(
    metric: MetricSummary,
    sources: Sequence[tuple[Path, SuiteResult]],
    values: Mapping[str, dict[UnitRef, float]],
    order: Sequence[UnitRef],
) -> MetricSummary:
    from metrics.stats import significance_groups

    if not metric.ok:
        return metric
    boot = metric.settings.get("bootstrap") if isinstance(metric.settings, dict) else None
    boot = boot if isinstance(boot, dict) else {}
    scored = [m for m in values if values[m]]
    shared = [u for u in order if all(u in values[m] for m in scored)]
    settings = dict(metric.settings)
    settings["merged_results"] = len(sources)
    settings["groups_over_items"] = len(shared)
    per_method: dict[str, MethodScore] = {}
    groups = None
    minimum = settings.get("groups_min_units")
    withheld = ""
    if isinstance(minimum, int) and scored and 0 < len(shared) < minimum:
        withheld = (
            f"significance groups withheld: {len(shared)} units shared by every method, fewer "
            f"than the {minimum} a paired comparison needs here"
        )
        settings["groups_withheld"] = withheld
    else:
        settings.pop("groups_withheld", None)
    if scored and shared and not withheld:
        groups = significance_groups(
            {m: [values[m][u] for u in shared] for m in scored},
            alpha=metric.alpha,
            higher_is_better=metric.higher_is_better,
            n_resamples=int(boot.get("n_resamples", 10_000)),
            seed=int(boot.get("seed", 0)),
        )
    if scored and shared:
        for m in scored:
            e = _estimate([values[m][u] for u in shared], boot, metric.confidence)
            by_layer: dict[str, list[float]] = {}
            for u in shared:
                by_layer.setdefault(u.layer, []).append(values[m][u])
            cmp = None if groups is None else groups.versus_best.get(m)
            p = None if cmp is None else cmp.p_value
            per_method[m] = MethodScore(
                mean=e.mean,
                ci_low=e.ci_low,
                ci_high=e.ci_high,
                n=e.n,
                group=None if groups is None else groups.group[m],
                p_vs_best=None if p is None or math.isnan(p) else min(1.0, max(0.0, p)),
                per_layer={la: _estimate(v, boot, metric.confidence) for la, v in by_layer.items()},
            )
    ceilings = [
        (r.metric(metric.name).ceiling, p)
        for p, r in sources
        if r.metric(metric.name).ceiling is not None
    ]
    ceiling: Ceiling | None = None
    if ceilings:
        best, path = max(ceilings, key=lambda cp: cp[0].n)  # type: ignore[union-attr]
        assert best is not None
        note = f"{best.note}; over the {best.n} units of {path.name}" if best.note else best.note
        ceiling = replace(best, note=note)
        if BASELINE in per_method:
            per_method = with_normalised(
                per_method, ceiling, higher_is_better=metric.higher_is_better
            )
    note = metric.note.split("; significance groups withheld")[0]
    if note.startswith("Significance groups withheld"):
        note = ""
    shared_note = (
        f"Merged from {len(sources)} result files: means, intervals and groups over the "
        f"{len(shared)} units every method was scored on."
    )
    if withheld:
        shared_note += f" {withheld[0].upper()}{withheld[1:]}."
    note = f"{note} {shared_note}" if note else shared_note
    return replace(metric, per_method=per_method, settings=settings, ceiling=ceiling, note=note)


def _merge(key: str, sources: Sequence[tuple[Path, SuiteResult]]) -> Table:
    # Method names: the same labels (same identity) are one method; the same name with other
    # labels gets its run id beside it.
    idents: dict[str, set[str]] = {}
    for _, r in sources:
        for name, info in r.methods.items():
            idents.setdefault(name, set()).add(_identity(info))
    origin: dict[str, list[tuple[int, str]]] = {}
    infos: dict[str, MethodInfo] = {}
    rename: list[dict[str, str]] = []
    for i, (_, r) in enumerate(sources):
        names: dict[str, str] = {}
        for name, info in r.methods.items():
            new = name if len(idents[name]) == 1 else f"{name} (run {r.run.run_id})"
            names[name] = new
            origin.setdefault(new, []).append((i, name))
            infos.setdefault(new, replace(info, name=new))
        rename.append(names)
    # Units in first-seen order, layers as the first result orders them.
    merged_units: dict[UnitRef, dict[str, Any]] = {}
    values: dict[str, dict[str, dict[UnitRef, float]]] = {
        m.name: {n: {} for n in infos} for m in sources[0][1].metrics
    }
    for i, (_, r) in enumerate(sources):
        names = rename[i]
        for u in r.units:
            slot = merged_units.setdefault(
                u.unit,
                {"labels": {}, "references": {}, "scores": {}, "status": {}, "errors": {},
                 "details": dict(u.details)},
            )  # fmt: skip
            for kind, texts in u.references.items():
                slot["references"].setdefault(kind, tuple(texts))
            for n, label in u.labels.items():
                slot["labels"].setdefault(names[n], label)
            for n, st in u.status.items():
                slot["status"].setdefault(names[n], st)
            for n, err in u.errors.items():
                slot["errors"].setdefault(names[n], err)
            for metric, per in u.scores.items():
                dest = slot["scores"].setdefault(metric, {})
                for n, v in per.items():
                    dest.setdefault(names[n], v)
                    values[metric][names[n]].setdefault(u.unit, v)
    layer_rank: dict[str, int] = {}
    for _, r in sources:
        for u in r.units:
            layer_rank.setdefault(u.unit.layer, len(layer_rank))
    order = sorted(merged_units, key=lambda u: (layer_rank[u.layer], u.index))
    units = tuple(
        UnitResult(unit=u, exemplars=None, **merged_units[u])  # type: ignore[arg-type]
        for u in order
    )
    first = sources[0][1]
    metrics = tuple(_merge_metric(m, sources, values[m.name], order) for m in first.metrics)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    run = RunIdentity(
        run_id=f"merged-{digest}",
        target=first.run.target,
        probe=first.run.probe if len({r.run.probe for _, r in sources}) == 1 else None,
    )
    settings = dict(first.settings)
    if "units" in settings:
        settings["units"] = len(units)
    if isinstance(settings.get("labels"), Mapping):  # faithfulness: label counts per method
        counts: dict[str, Any] = {}
        for i, (_, r) in enumerate(sources):
            for n, c in (r.settings.get("labels") or {}).items():
                counts.setdefault(rename[i].get(n, n), c)
        settings["labels"] = counts
    froms = sorted({str(r.settings["activations_from"]) for _, r in sources
                    if "activations_from" in r.settings})  # fmt: skip
    if len(froms) > 1:
        settings["activations_from"] = "; ".join(froms)
    result = SuiteResult(
        run=run,
        suite=first.suite,
        methods=infos,
        metrics=metrics,
        units=units,
        settings=settings,
        offline=first.offline,
        offline_note=first.offline_note,
    )
    return Table(
        key=key,
        sources=tuple(sources),
        result=result,
        origin={k: tuple(v) for k, v in origin.items()},
    )


def tables(loaded: Sequence[tuple[Path, SuiteResult]]) -> list[Table]:
    """The tables of a leaderboard: comparable, mergeable results merged into one, every other
    result a table of its own; in a stable order (suite, target, settings)."""
    groups: dict[str, list[tuple[Path, SuiteResult]]] = {}
    out: list[Table] = []
    for path, result in loaded:
        key = dumps(comparable_settings(result))
        if _mergeable(result):
            groups.setdefault(key, []).append((path, result))
        else:
            origin: dict[str, tuple[tuple[int, str], ...]] = {n: ((0, n),) for n in result.methods}
            out.append(Table(key=key, sources=((path, result),), result=result, origin=origin))
    for key, members in groups.items():
        members.sort(key=lambda pr: (pr[1].run.run_id, pr[0].as_posix()))
        if len(members) == 1:
            path, result = members[0]
            out.append(
                Table(
                    key=key,
                    sources=(members[0],),
                    result=result,
                    origin={n: ((0, n),) for n in result.methods},
                )
            )
        else:
            out.append(_merge(key, members))
    return out
