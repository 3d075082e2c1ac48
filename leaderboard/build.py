"""Build the static leaderboard site from suite result files.

``build(result_paths, out_dir)`` reads ``<run_dir>/suites/<suite>.json`` files (see
:class:`bench.results.SuiteResult`) and writes a self-contained site: ``index.html`` (per suite a
sortable table of methods by metric with intervals and significance groups, the ceiling beside
them, per-layer and per-class breakdowns, inline SVG plots, a unit index, and the provenance),
one page per unit under ``units/``, the exemplar strips under ``exemplars/`` and a
``manifest.json`` listing every file with its SHA-256.

The site is a pure function of the result files: the same files give byte-identical output
(sections, methods and units in a fixed order, no timestamps but those in the inputs, no
absolute paths). Nothing is fetched: no external scripts, styles, fonts or images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from bench.errors import UsageError
from bench.results import (
    SUITES_DIR,
    Estimate,
    MethodInfo,
    MetricSummary,
    RunIdentity,
    SuiteResult,
    UnitResult,
    load_suite_results,
    publishable,
    read_exemplar,
)
from bench.schema import SCHEMA_VERSION, UnitRef, atomic_write, dumps
from leaderboard.html import esc, fmt, fmt_interval, fmt_seconds, page
from leaderboard.svg import CostPoint, Row, cost_plot, distribution_plot, interval_plot

__all__ = ["MANIFEST", "build", "render", "safe_name"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SITE_TITLE = "neuron-bench leaderboard"
#: Suites in the order the issue lists them; others follow alphabetically.
SUITE_ORDER = (
    "milannotations",
    "final-layer",
    "cifar-auroc",
    "planted",
    "faithfulness",
    "generated",
    "sanity",
)
#: The metric report card (``bench metrics check``): its "methods" are metrics, its "metrics" the
#: sanity tests; rendered as a pass/fail card, and its failures mark metric columns elsewhere.
SANITY_SUITE = "sanity"
#: The suite of the report card's bare rows (the presence metrics: "auroc", "mad", ...).
PRESENCE_SUITE = "faithfulness"
SUITE_BLURBS = {
    "milannotations": "Agreement of each label with the unit's human annotations (MILANNOTATIONS), "
    "with the inter-annotator ceiling beside the methods.",
    "final-layer": "Final-layer units against the names of the classes they score.",
    "cifar-auroc": "For each class, the unit whose label is closest to the class name, used as a "
    "one-class classifier by its mean activation.",
    "planted": "Recovery of the concepts planted in units of a synthetic target.",
    "faithfulness": "Does the label predict what its unit does? Each unit's pooled activation "
    "over the probe images against the presence of its label's concept on them (AUROC, AUPRC, "
    "IoU and F1 of the top images, Pearson correlation, MAD). Labels that do not read into the "
    "probe's concepts are counted as unparsed, never scored.",
    "sanity": "The metric report card (bench metrics check): NeuronEval's sanity tests on units "
    "whose truth is known. A metric passes a test when the correct label's score drops under "
    "the perturbation for at least the threshold share of units. Columns of a metric that fails "
    "a test are marked in the other tables.",
}
REFERENCE_TITLES = {
    "annotations": "Annotations",
    "class_name": "Class name",
    "planted": "Planted concept",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_EXEMPLAR_DIR = "exemplars"
_GENERATED_DIR = "generated"
_UNIT_DIR = "units"
_DASH = "\u2014"
_OFFLINE_TAG = " \u00b7 offline"


def safe_name(text: str, max_len: int = 60) -> str:
    """A file-name-safe, injective form of ``text``: unchanged when it is already made of
    ``A-Za-z0-9._-`` (not starting with a dot) and short; otherwise the cleaned text plus ``~``
    and 8 hex digits of its SHA-256, so two different names never share a file."""
    cleaned = _UNSAFE.sub("_", text)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned == text and len(text) <= max_len:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[:max_len]}~{digest}"


# --- the model of the site ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class _Section:
    """One table: one suite on one target with one set of reference settings, merging every
    comparable result file (see :mod:`leaderboard.merge`)."""

    sid: str
    display: str
    sources: tuple[tuple[Path, SuiteResult, str], ...]  # (path, result, sha256) merged here
    result: SuiteResult
    methods: tuple[str, ...]  # display order: best first on the primary metric
    layers: tuple[str, ...]  # the target's order (first appearance among units)
    differs: dict[str, str]  # settings that set this table apart from others of its suite

    @property
    def primary(self) -> MetricSummary | None:
        return next((m for m in self.result.metrics if m.ok and m.per_method), None)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _suite_rank(suite: str) -> tuple[int, str]:
    return (SUITE_ORDER.index(suite), "") if suite in SUITE_ORDER else (len(SUITE_ORDER), suite)


def _display_path(path: Path) -> str:
    """The last parts of a result path (``<run>/suites/<suite>.json``), never an absolute path."""
    parts = path.parts
    keep = 3 if len(parts) >= 3 and parts[-2] == SUITES_DIR else 1
    return PurePosixPath(*parts[-keep:]).as_posix()


def _method_order(result: SuiteResult) -> tuple[str, ...]:
    primary = next((m for m in result.metrics if m.ok and m.per_method), None)
    names = sorted(result.methods)
    if primary is None:
        return tuple(names)
    sign = -1.0 if primary.higher_is_better else 1.0
    scored = sorted(
        (m for m in names if m in primary.per_method),
        key=lambda m: (sign * primary.per_method[m].mean, m),
    )
    return tuple(scored + [m for m in names if m not in primary.per_method])


def _layer_order(result: SuiteResult) -> tuple[str, ...]:
    layers: dict[str, None] = {}
    for u in result.units:
        layers.setdefault(u.unit.layer, None)
    extra: set[str] = set()
    for metric in result.metrics:
        for s in metric.per_method.values():
            extra.update(s.per_layer)
        if metric.ceiling is not None:
            extra.update(metric.ceiling.per_layer)
    return tuple(layers) + tuple(sorted(extra - set(layers)))


def _sections(loaded: Sequence[tuple[Path, SuiteResult]]) -> list[_Section]:
    from leaderboard.merge import differing_settings, tables

    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in loaded}
    found = tables(loaded)
    by_suite_target: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(found):
        by_suite_target.setdefault((t.result.suite, t.result.run.target), []).append(i)
    differs: dict[int, dict[str, str]] = {}
    for idx in by_suite_target.values():
        diffs = differing_settings([found[i].result for i in idx])
        for i, d in zip(idx, diffs, strict=True):
            differs[i] = d
    sections = []
    for i, t in enumerate(found):
        r = t.result
        sources = tuple((p, res, digests[p]) for p, res in t.sources)
        sections.append(
            _Section(
                sid=f"{safe_name(r.suite)}--{safe_name(r.run.target)}--"
                + hashlib.sha256(t.key.encode("utf-8")).hexdigest()[:10],
                display=", ".join(_display_path(p) for p, _ in t.sources),
                sources=sources,
                result=r,
                methods=_method_order(r),
                layers=_layer_order(r),
                differs=differs.get(i, {}),
            )
        )
    sections.sort(
        key=lambda s: (
            _suite_rank(s.result.suite),
            s.result.run.target,
            dumps(s.differs),
            s.display,
        )
    )
    seen: dict[str, int] = {}
    out = []
    for s in sections:  # two tables with equal keys (unmergeable results) keep distinct ids
        n = seen.get(s.sid, 0)
        seen[s.sid] = n + 1
        out.append(s if n == 0 else _replace(s, sid=f"{s.sid}-{n + 1}"))
    return out


def _replace(sec: _Section, **kw: Any) -> _Section:
    from dataclasses import replace

    return replace(sec, **kw)


def _settings_text(differs: dict[str, str]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in differs.items())


def _title(sec: _Section) -> str:
    """``suite · target`` and the settings that set this table apart, if any."""
    r = sec.result
    title = f"{r.suite} \u00b7 {r.run.target}"
    return f"{title} \u00b7 {_settings_text(sec.differs)}" if sec.differs else title


def _coverage(sec: _Section, method: str) -> int:
    """Units of the table this method labelled (or failed on)."""
    return sum(1 for u in sec.result.units if method in u.labels or method in u.status)


class _Units:
    """Unit pages: one per (target, layer, index) across every section."""

    def __init__(self, sections: Sequence[_Section]) -> None:
        self.multi_target = len({s.result.run.target for s in sections}) > 1
        pages: dict[tuple[str, str, int], list[tuple[_Section, UnitResult]]] = {}
        for s in sections:
            for u in s.result.units:
                key = (s.result.run.target, u.unit.layer, u.unit.index)
                pages.setdefault(key, []).append((s, u))
        self.pages = pages

    def file(self, target: str, unit: UnitRef) -> str:
        """The page's path relative to the site root: ``units/<layer>-<index>.html``, with the
        target in front when the site covers several targets."""
        name = f"{safe_name(unit.layer)}-{unit.index}.html"
        if self.multi_target:
            name = f"{safe_name(target)}--{name}"
        return f"{_UNIT_DIR}/{name}"

    def has(self, target: str, unit: UnitRef) -> bool:
        return (target, unit.layer, unit.index) in self.pages


# --- index ------------------------------------------------------------------------------------


def _score_cell(metric: MetricSummary, method: str) -> str:
    if not metric.ok:
        return f'<td class="na" data-sort="" title="{esc(metric.reason or "")}">unavailable</td>'
    s = metric.per_method.get(method)
    if s is None:
        return f'<td class="num" data-sort="" title="not scored">{_DASH}</td>'
    group = ""
    cls = "num"
    if s.group is not None:
        cls += f" g{s.group}"
        tip = (
            "group 1: not significantly worse than the best"
            if s.group == 1
            else f"group {s.group}: significantly worse than group {s.group - 1}'s leader"
        )
        group = f'<span class="grp" title="{esc(tip)}">{s.group}</span>'
    return (
        f'<td class="{cls}" data-sort="{s.mean!r}" title="n = {s.n}">'
        f'<span class="v">{fmt(s.mean)}</span> <span class="ci">'
        f"{fmt_interval(s.ci_low, s.ci_high)}</span>{group}</td>"
    )


def _estimate_cell(e: Estimate | None, *, normalised: float | None = None) -> str:
    if e is None:
        return f'<td class="num" data-sort="">{_DASH}</td>'
    norm = (
        ""
        if normalised is None
        else f' <span class="norm" title="{esc(_NORMALISED_TIP)}">norm. {fmt(normalised)}</span>'
    )
    return (
        f'<td class="num" data-sort="{e.mean!r}" title="n = {e.n}"><span class="v">'
        f'{fmt(e.mean)}</span> <span class="ci">{fmt_interval(e.ci_low, e.ci_high)}</span>'
        f"{norm}</td>"
    )


def _metric_header(metric: MetricSummary, fails: Sequence[str] = ()) -> str:
    arrow = "\u2191" if metric.higher_is_better else "\u2193"
    marks = ""
    if metric.ok and not metric.comparable_with_papers:
        marks += '<sup title="not comparable with the papers">\u2020</sup>'
    cls = ""
    if fails:
        why = "fails the metric sanity tests: " + "; ".join(fails)
        marks += f'<sup class="insane" title="{esc(why)}">\u2717</sup>'
        cls = ' class="fails-sanity"'
    tip = metric.note or (metric.reason or "")
    return (
        f'<th scope="col" data-type="num"{cls} title="{esc(tip)}">{esc(metric.name)} {arrow}'
        f"{marks}</th>"
    )


Failures = dict[str, dict[str, list[str]]]


def _sanity_failures(sections: Sequence[_Section]) -> Failures:
    """target -> metric -> what it fails ("missing_labels on synth.resnet: 36/55 units pass,
    threshold 90%"), from every report card; the key ``""`` holds every card's failures."""
    out: Failures = {}
    for sec in sections:
        r = sec.result
        if r.suite != SANITY_SUITE:
            continue
        verdicts = r.settings.get("verdicts")
        if not isinstance(verdicts, dict):
            continue
        for metric, per in sorted(verdicts.items()):
            if not isinstance(per, dict):
                continue
            for test, v in sorted(per.items()):
                if not isinstance(v, dict) or not _applicable(v) or v.get("passed", True):
                    continue
                threshold = _card_threshold(r, test)
                text = (
                    f"{test} on {r.run.target}: {v.get('passed_units')}/{v.get('judged_units')} "
                    f"units pass" + (f", threshold {fmt(threshold * 100, 0)}%" if threshold else "")
                )
                for key in (r.run.target, ""):
                    bucket = out.setdefault(key, {}).setdefault(str(metric), [])
                    if text not in bucket:
                        bucket.append(text)
    return out


def _applicable(verdict: dict[str, Any]) -> bool:
    """Whether a report card's test applies to the metric (``missing_labels`` does not apply
    to a text metric, nor any test to a metric the run could not compute)."""
    return verdict.get("applicable", True) is not False


def _card_threshold(r: SuiteResult, test: str) -> float | None:
    for m in r.metrics:
        if m.name == test and isinstance(m.settings.get("threshold"), (int, float)):
            return float(m.settings["threshold"])
    return None


def _fails_for(sec: _Section, failures: Failures) -> dict[str, list[str]]:
    """The failures that mark this table's columns: the report card of its own target when there
    is one, else every card's.

    A card row is keyed by (suite, metric): a bare name ("auroc") is a presence metric of the
    ``faithfulness`` suite; "suite/metric" ("milannotations/bertscore", "generated/mad") names
    its suite. It marks the columns of that suite whose name is the metric, or whose settings
    name it as their metric ("cifar-auroc/auroc" marks ``auroc-cifar10`` and ``auroc-heldout``),
    and no other suite's column of the same name (``generated``'s ``mad`` is not the presence
    ``mad``)."""
    suite = sec.result.suite
    if suite == SANITY_SUITE:
        return {}
    found = failures.get(sec.result.run.target) or failures.get("", {})
    out: dict[str, list[str]] = {}
    for row, v in found.items():
        owner, _, metric = row.partition("/")
        if not metric:
            owner, metric = PRESENCE_SUITE, row
        if owner != suite:
            continue
        for m in sec.result.metrics:
            if m.name == metric or m.settings.get("metric") == metric:
                out.setdefault(m.name, []).extend(v)
    return out


def _method_name_cell(info: MethodInfo) -> str:
    tag = "" if info.kind == "method" else f' <span class="tag">{esc(info.kind)}</span>'
    return f'<th scope="row" data-sort="{esc(info.name.lower())}">{esc(info.name)}{tag}</th>'


def _cost_cell(info: MethodInfo) -> str:
    sec = info.cost.seconds_per_unit
    if sec is None:
        why = info.cost.note or "no cost recorded"
        return f'<td class="num" data-sort="" title="{esc(why)}">{_DASH}</td>'
    return f'<td class="num" data-sort="{sec!r}">{esc(fmt_seconds(sec))}</td>'


def _ceiling_name(sec: _Section) -> str:
    notes = [m.ceiling.note for m in sec.result.metrics if m.ceiling is not None and m.ceiling.note]
    return "inter-annotator ceiling" + (f" ({notes[0]})" if notes else "")


_NORMALISED_TIP = (
    "ceiling-normalised: (method - depictions) / (ceiling - depictions) from the means; "
    "0 = the constant label, 1 = the ceiling"
)


def _normalised(metric: MetricSummary) -> bool:
    """Whether the metric has ceiling-normalised scores (a column beside the raw one)."""
    return metric.ok and any(s.normalised is not None for s in metric.per_method.values())


def _normalised_header(metric: MetricSummary) -> str:
    return (
        f'<th scope="col" data-type="num" class="normalised" title="{esc(_NORMALISED_TIP)}">'
        f"{esc(metric.name)} normalised \u2191</th>"
    )


def _normalised_cell(value: float | None) -> str:
    if value is None:
        return f'<td class="num normalised" data-sort="" title="undefined">{_DASH}</td>'
    return f'<td class="num normalised" data-sort="{value!r}">{fmt(value)}</td>'


def _main_table(sec: _Section, fails: dict[str, list[str]] | None = None) -> str:
    r = sec.result
    metrics = r.metrics
    fails = fails or {}
    head = (
        '<th scope="col" data-type="text">Method</th>'
        '<th scope="col" data-type="num" title="wall seconds per unit">s / unit</th>'
        '<th scope="col" data-type="num" title="units of this table the method labelled">'
        "units labelled</th>"
        + "".join(
            _metric_header(m, fails.get(m.name, ()))
            + (_normalised_header(m) if _normalised(m) else "")
            for m in metrics
        )
    )
    rows = []
    total = len(r.units)
    for name in sec.methods:
        info = r.methods[name]
        cells = "".join(
            _marked(_score_cell(m, name), m.name in fails)
            + (
                _normalised_cell(s.normalised if (s := m.per_method.get(name)) else None)
                if _normalised(m)
                else ""
            )
            for m in metrics
        )
        n = _coverage(sec, name)
        cover = f'<td class="num" data-sort="{n}">{n} / {total}</td>'
        rows.append(
            f'<tr data-method="{esc(name)}">{_method_name_cell(info)}{_cost_cell(info)}'
            f"{cover}{cells}</tr>"
        )
    ceiling = ""
    if any(m.ceiling is not None for m in metrics):
        cells = "".join(
            '<td class="na" data-sort="">unavailable</td>'
            if not m.ok
            else _estimate_cell(None if m.ceiling is None else m.ceiling.estimate)
            + (_normalised_cell(1.0) if _normalised(m) else "")
            for m in metrics
        )
        ceiling = (
            f'<tbody class="ceiling"><tr data-ceiling="1"><th scope="row">'
            f"{esc(_ceiling_name(sec))}</th><td>{_DASH}</td><td>{_DASH}</td>{cells}</tr></tbody>"
        )
    caption = (
        "Mean over units with its 95% bootstrap interval. Shaded with a green badge: significance "
        "group 1, not significantly worse than the best (paired bootstrap over units); badges "
        "number the groups. Click a column header to sort."
    )
    return (
        f'<div class="scroll"><table class="sortable results" id="{esc(sec.sid)}-table">'
        f"<caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody>{ceiling}</table></div>"
    )


def _marked(cell: str, fails: bool) -> str:
    """A ``<td>`` with the ``fails-sanity`` class added when its metric fails a sanity test."""
    if not fails:
        return cell
    return cell.replace('<td class="', '<td class="fails-sanity ', 1)


def _metric_notes(sec: _Section, fails: dict[str, list[str]] | None = None) -> str:
    fails = fails or {}
    items = []
    for i, m in enumerate(sec.result.metrics):
        parts = []
        if m.name in fails:
            parts.append(
                '<strong class="insane">\u2717 fails the metric sanity tests</strong> ('
                + esc("; ".join(fails[m.name]))
                + ")"
            )
        if not m.ok:
            parts.append(f'<strong class="na">unavailable</strong>: {esc(m.reason or "")}')
        else:
            parts.append(
                "comparable with the papers"
                if m.comparable_with_papers
                else "<strong>not comparable with the papers</strong> (\u2020)"
            )
            parts.append("higher is better" if m.higher_is_better else "lower is better")
            if m.value_type == "binary":
                parts.append("a 0/1 outcome per unit; the mean is a rate")
            parts.append(
                f"intervals {fmt(m.confidence * 100, 0)}%, groups at \u03b1 = {esc(repr(m.alpha))}"
            )
        if m.note and (m.ok or (m.reason or "") not in m.note):  # not the reason twice
            parts.append(esc(m.note))
        settings = (
            f"<details><summary>settings</summary>{_json_pre(m.settings)}</details>"
            if m.settings
            else ""
        )
        items.append(
            f'<dt id="{esc(sec.sid)}-metric-{i}">{esc(m.name)}</dt>'
            f"<dd>{'; '.join(parts)}.{settings}</dd>"
        )
    return f'<dl class="notes">{"".join(items)}</dl>'


def _plots(sec: _Section) -> str:
    r = sec.result
    figures = []
    for m in r.metrics:
        if not m.ok or not m.per_method:
            continue
        rows = [
            Row(name=n, mean=s.mean, low=s.ci_low, high=s.ci_high, group=s.group)
            for n in sec.methods
            if (s := m.per_method.get(n)) is not None
        ]
        ceiling = None
        if m.ceiling is not None:
            c = m.ceiling
            ceiling = Row(name="ceiling", mean=c.mean, low=c.ci_low, high=c.ci_high)
        svg = interval_plot(
            rows, metric=m.name, higher_is_better=m.higher_is_better, ceiling=ceiling
        )
        note = f" {esc(m.note)}" if m.note else ""
        figures.append(
            f"<figure>{svg}<figcaption>{esc(m.name)}: mean and 95% interval per method; green: "
            f"significance group 1{'; shaded band: the ceiling' if ceiling else ''}.{note}"
            "</figcaption></figure>"
        )
    primary = sec.primary
    if primary is not None:
        points, missing = [], []
        for n in sec.methods:
            s = primary.per_method.get(n)
            seconds = r.methods[n].cost.seconds_per_unit
            if s is None:
                continue
            if seconds is None:
                missing.append(n)
                continue
            points.append(
                CostPoint(
                    name=n,
                    seconds=seconds,
                    mean=s.mean,
                    low=s.ci_low,
                    high=s.ci_high,
                    group=s.group,
                )
            )
        left_out = (
            f" Not plotted, no cost measured: {esc(', '.join(_no_cost(r, n) for n in missing))}."
            if missing
            else ""
        )
        if any(r.methods[p.name].kind != "baseline" for p in points):
            svg = cost_plot(points, metric=primary.name, higher_is_better=primary.higher_is_better)
            figures.append(
                f"<figure>{svg}<figcaption>Quality ({esc(primary.name)}) against cost per unit, "
                f"for the methods with a measured cost.{left_out}</figcaption></figure>"
            )
        elif missing:
            figures.append(
                '<p class="muted">No quality-against-cost plot: no method but the constant '
                f"baseline has a measured cost.{left_out}</p>"
            )
    return f'<div class="plots">{"".join(figures)}</div>' if figures else ""


def _no_cost(r: SuiteResult, name: str) -> str:
    info = r.methods[name]
    return f"{name} (imported labels)" if info.kind == "imported" else name


def _per_layer(sec: _Section) -> str:
    r = sec.result
    out = []
    for m in r.metrics:
        if not m.ok:
            continue
        has = any(s.per_layer for s in m.per_method.values()) or (
            m.ceiling is not None and m.ceiling.per_layer
        )
        if not has:
            continue
        layers = [
            layer
            for layer in sec.layers
            if any(layer in s.per_layer for s in m.per_method.values())
            or (m.ceiling is not None and layer in m.ceiling.per_layer)
        ]
        head = '<th scope="col" data-type="text">Method</th>' + "".join(
            f'<th scope="col" data-type="num">{esc(layer)}</th>' for layer in layers
        )
        rows = []
        for name in sec.methods:
            s = m.per_method.get(name)
            cells = "".join(
                _estimate_cell(
                    None if s is None else s.per_layer.get(layer),
                    normalised=None if s is None else s.normalised_per_layer.get(layer),
                )
                for layer in layers
            )
            rows.append(
                f'<tr data-method="{esc(name)}">{_method_name_cell(r.methods[name])}{cells}</tr>'
            )
        ceiling = ""
        if m.ceiling is not None:
            cells = "".join(_estimate_cell(m.ceiling.per_layer.get(layer)) for layer in layers)
            ceiling = (
                f'<tbody class="ceiling"><tr data-ceiling="1"><th scope="row">'
                f"{esc(_ceiling_name(sec))}</th>{cells}</tr></tbody>"
            )
        out.append(
            f"<h4>{esc(m.name)}</h4>"
            f'<div class="scroll"><table class="sortable perlayer"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody>{ceiling}</table></div>"
        )
    if not out:
        return ""
    return "<h3>Per layer</h3>" + "".join(out)


def _unit_link(units: _Units, target: str, unit: UnitRef, *, root: str = "") -> str:
    text = esc(f"{unit.layer}:{unit.index}")
    if not units.has(target, unit):
        return text
    return f'<a href="{esc(root + units.file(target, unit))}">{text}</a>'


def _per_class(sec: _Section, units: _Units) -> str:
    r = sec.result
    if not r.classes:
        return ""
    metric_names = [m.name for m in r.metrics]
    used = [
        n
        for n in metric_names
        if any(n in match.scores for c in r.classes for match in c.per_method.values())
    ]
    head = (
        '<th scope="col" data-type="text">Class</th><th scope="col" data-type="text">Dataset</th>'
        '<th scope="col" data-type="num">Positives</th><th scope="col" data-type="text">Method'
        '</th><th scope="col" data-type="text">Closest units</th>'
        '<th scope="col" data-type="num">Similarity</th>'
        + "".join(f'<th scope="col" data-type="num">{esc(n)}</th>' for n in used)
    )
    rows = []
    target = r.run.target
    for c in r.classes:
        for name in sec.methods:
            match = c.per_method.get(name)
            if match is None:
                continue
            links = ", ".join(_unit_link(units, target, u) for u in match.units) or _DASH
            sim = (
                f'<td class="num" data-sort="">{_DASH}</td>'
                if match.similarity is None
                else f'<td class="num" data-sort="{match.similarity!r}">'
                f"{fmt(match.similarity)}</td>"
            )
            scores = "".join(
                f'<td class="num" data-sort="{match.scores[n]!r}">{fmt(match.scores[n])}</td>'
                if n in match.scores
                else f'<td class="num" data-sort="">{_DASH}</td>'
                for n in used
            )
            pos = "" if c.n_positive is None else str(c.n_positive)
            pos_text = pos + ("" if c.n is None else f" / {c.n}")
            rows.append(
                f'<tr><th scope="row">{esc(c.name)}</th><td>{esc(c.dataset or _DASH)}</td>'
                f'<td class="num" data-sort="{pos}">{esc(pos_text or _DASH)}</td>'
                f"<td>{esc(name)}</td><td>{links}</td>{sim}{scores}</tr>"
            )
    return (
        f"<h3>Per class</h3><details><summary>{len(r.classes)} classes</summary>"
        f'<div class="scroll"><table class="sortable perclass"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )


def _unit_index(sec: _Section, units: _Units) -> str:
    r = sec.result
    if not r.units:
        return ""
    head = (
        '<th scope="col" data-type="text">Unit</th><th scope="col" data-type="text">Layer</th>'
        '<th scope="col" data-type="num">Index</th>'
        + "".join(f'<th scope="col" data-type="text">{esc(n)}</th>' for n in sec.methods)
    )
    rows = []
    for u in r.units:
        cells = []
        for n in sec.methods:
            if u.method_status(n) == "error":
                cells.append(f'<td class="err">error: {esc(u.errors.get(n, ""))}</td>')
            else:
                cells.append(f'<td class="label">{esc(u.labels.get(n, ""))}</td>')
        rows.append(
            f'<tr><th scope="row" data-sort="{esc(u.unit.layer)}:{u.unit.index:09d}">'
            f"{_unit_link(units, r.run.target, u.unit)}</th><td>{esc(u.unit.layer)}</td>"
            f'<td class="num" data-sort="{u.unit.index}">{u.unit.index}</td>{"".join(cells)}</tr>'
        )
    opened = " open" if len(r.units) <= 200 else ""
    return (
        f"<h3>Units</h3><details{opened}><summary>{_count(len(r.units), 'unit')}: every "
        "method's label "
        "(click a unit for its exemplars, references and scores)</summary>"
        f'<div class="scroll"><table class="sortable units"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )


def _sanity_card(sec: _Section) -> str:
    """The report card: one row per metric, one column per test, pass or FAIL with the counts."""
    r = sec.result
    verdicts = r.settings.get("verdicts")
    if not isinstance(verdicts, dict) or not verdicts:
        return '<p class="muted">This report card holds no verdicts.</p>'
    tests = [m.name for m in r.metrics]
    head = '<th scope="col" data-type="text">Metric</th>' + "".join(
        f'<th scope="col" data-type="num">{esc(t)}</th>' for t in tests
    )
    rows = []
    # the faithfulness metrics first, then the text metrics ("suite/metric")
    for metric in sorted(verdicts, key=lambda m: ("/" in m, m)):
        per = verdicts[metric] if isinstance(verdicts[metric], dict) else {}
        cells = []
        failed = False
        for t in tests:
            v = per.get(t)
            if not isinstance(v, dict):
                cells.append(f'<td class="na" data-sort="">{_DASH}</td>')
                continue
            if not _applicable(v):
                why = "not applicable: " + str(v.get("reason") or "no reason recorded")
                cells.append(f'<td class="na" data-sort="" title="{esc(why)}">n/a</td>')
                continue
            ok = bool(v.get("passed"))
            failed = failed or not ok
            rate = v.get("rate")
            sort = "" if not isinstance(rate, (int, float)) else repr(float(rate))
            undefined = v.get("undefined_units") or 0
            tip = f"{v.get('passed_units')} of {v.get('judged_units')} units pass" + (
                f"; {undefined} undefined" if undefined else ""
            )
            cells.append(
                f'<td class="num {"pass" if ok else "fail"}" data-sort="{esc(sort)}" '
                f'title="{esc(tip)}">{"pass" if ok else "FAIL"} '
                f'<span class="ci">{esc(v.get("passed_units"))}/{esc(v.get("judged_units"))}'
                "</span></td>"
            )
        mark = ' <sup class="insane">\u2717</sup>' if failed else ""
        rows.append(
            f'<tr data-metric="{esc(metric)}"><th scope="row" data-sort="{esc(metric)}">'
            f"{esc(metric)}{mark}</th>{''.join(cells)}</tr>"
        )
    thresholds = sorted({t for t in (_card_threshold(r, x) for x in tests) if t is not None})
    units = r.settings.get("units")
    caption = (
        "pass: at least "
        + (", ".join(f"{fmt(t * 100, 0)}%" for t in thresholds) or "the threshold share")
        + " of the known units score lower under the test than with their correct label; the "
        "counts are units passing / units with a defined score."
        + (f" Known units: {dumps(units)}." if units else "")
    )
    na = r.settings.get("not_applicable")
    na_html = (
        '<p class="muted">Not applicable: '
        + esc("; ".join(f"{k}: {v}" for k, v in sorted(na.items())))
        + "</p>"
        if isinstance(na, dict) and na
        else ""
    )
    return (
        f'<div class="scroll"><table class="sortable sanity" id="{esc(sec.sid)}-table">'
        f"<caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>{na_html}"
    )


def _section_html(sec: _Section, units: _Units, fails: dict[str, list[str]] | None = None) -> str:
    r = sec.result
    if r.suite == SANITY_SUITE:
        return _sanity_section(sec)
    run = r.run
    probe = f" \u00b7 probe {esc(run.probe)}" if run.probe else ""
    blurb = SUITE_BLURBS.get(r.suite, "")
    offline = (
        f'<p class="offline"><strong>Offline:</strong> {esc(r.offline_note)}</p>'
        if r.offline
        else ""
    )
    settings = (
        f"<details><summary>suite settings</summary>{_json_pre(r.settings)}</details>"
        if r.settings
        else ""
    )
    return (
        f'<section class="suite" id="{esc(sec.sid)}" data-suite="{esc(r.suite)}">'
        f"<h2>{esc(r.suite)} <small>target {esc(run.target)}{probe}"
        + (f" \u00b7 {esc(_settings_text(sec.differs))}" if sec.differs else "")
        + "</small></h2>"
        + f'<p class="methods">Methods: {esc(", ".join(sec.methods))}</p>'
        + (f"<p>{esc(blurb)}</p>" if blurb else "")
        + offline
        + f'<p class="muted">{_count(len(r.units), "unit")} \u00b7 '
        f"{_count(len(r.methods), 'method')} \u00b7 "
        f"{'result files' if len(sec.sources) > 1 else 'result file'} {esc(sec.display)}"
        + _shared_note(sec)
        + "</p>"
        + _main_table(sec, fails)
        + _label_counts(sec)
        + _metric_notes(sec, fails)
        + settings
        + _plots(sec)
        + _per_layer(sec)
        + _per_class(sec, units)
        + _unit_index(sec, units)
        + "</section>"
    )


def _label_counts(sec: _Section) -> str:
    """Faithfulness: per method, how many labels read into the probe's concepts, how many did
    not (unparsed: no score, never a zero) and how many were degenerate (concept on no image or
    on every one)."""
    r = sec.result
    counts = r.settings.get("labels")
    if r.suite != "faithfulness" or not isinstance(counts, dict) or not counts:
        return ""
    rows = []
    for name in sec.methods:
        c = counts.get(name)
        if not isinstance(c, dict):
            continue
        cells = "".join(
            f'<td class="num" data-sort="{esc(c.get(k, ""))}">{esc(c.get(k, _DASH))}</td>'
            for k in ("units", "unparsed", "degenerate")
        )
        rows.append(
            f'<tr data-method="{esc(name)}">{_method_name_cell(r.methods[name])}{cells}</tr>'
        )
    if not rows:
        return ""
    return (
        '<div class="scroll"><table class="sortable labelcounts"><caption>Labels per method: '
        "unparsed labels do not read into the probe's concepts and get no score; degenerate "
        "ones name a concept on no probe image or on every one.</caption><thead><tr>"
        '<th scope="col" data-type="text">Method</th><th scope="col" data-type="num">labels</th>'
        '<th scope="col" data-type="num">unparsed</th>'
        '<th scope="col" data-type="num">degenerate</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _sanity_section(sec: _Section) -> str:
    r = sec.result
    probe = f" \u00b7 probe {esc(r.run.probe)}" if r.run.probe else ""
    settings = (
        f"<details><summary>report card settings</summary>{_json_pre(r.settings)}</details>"
        if r.settings
        else ""
    )
    return (
        f'<section class="suite" id="{esc(sec.sid)}" data-suite="{esc(r.suite)}">'
        f"<h2>metric report card <small>target {esc(r.run.target)}{probe}</small></h2>"
        f"<p>{esc(SUITE_BLURBS[SANITY_SUITE])}</p>"
        + f'<p class="muted">result file {esc(sec.display)}</p>'
        + _sanity_card(sec)
        + settings
        + "</section>"
    )


def _shared_note(sec: _Section) -> str:
    if len(sec.sources) < 2:
        return ""
    r = sec.result
    shared = {
        str(v)
        for m in r.metrics
        if m.ok and m.per_method and (v := m.settings.get("groups_over_items")) is not None
    }
    n = ", ".join(sorted(shared)) or "0"
    return (
        f" \u00b7 merged from {len(sec.sources)} comparable results; means, intervals and paired "
        f"groups over the {esc(n)} units every method was scored on of {len(r.units)}"
    )


def _json_pre(obj: Any) -> str:
    """JSON for a page, with any absolute path of the machine that wrote it cut to its name
    (result files written before paths were kept out of them)."""
    return f"<pre>{esc(dumps(publishable(obj), indent=2))}</pre>"


def _provenance(sections: Sequence[_Section]) -> str:
    files = "".join(
        f"<tr><td>{esc(_display_path(p))}</td><td><code>{esc(sha[:16])}</code></td>"
        f'<td><a href="#{esc(s.sid)}">{esc(r.suite)}</a></td>'
        f"<td>{esc(r.run.run_id)}</td><td>{esc(r.run.target)}</td>"
        f"<td>{esc(r.run.probe or _DASH)}</td>"
        f"<td>{esc(_DASH if r.run.seed is None else r.run.seed)}</td>"
        f"<td>{esc(r.run.created or _DASH)}</td>"
        f"<td>{'yes' if r.offline else 'no'}</td></tr>"
        for s in sections
        for p, r, sha in s.sources
    )
    out = [
        '<h2 id="provenance">Provenance</h2>',
        f"<p>Built from {_count(sum(len(s.sources) for s in sections), 'suite result file')} "
        f"(result schema version {SCHEMA_VERSION}). Each number above is a pure function of "
        "these files.</p>",
        '<div class="scroll"><table><thead><tr><th>Result file</th><th>SHA-256</th><th>Suite</th>'
        "<th>Run</th><th>Target</th><th>Probe</th><th>Seed</th><th>Run created</th>"
        f"<th>Offline</th></tr></thead><tbody>{files}</tbody></table></div>",
    ]
    runs: dict[str, RunIdentity] = {}
    for s in sections:
        for _, r, _ in s.sources:
            runs.setdefault(r.run.run_id, r.run)
    for run_id in sorted(runs):
        run = runs[run_id]
        prov = run.provenance
        raw_versions = prov.get("versions")
        versions: dict[str, Any] = raw_versions if isinstance(raw_versions, dict) else {}
        version_rows = "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(_DASH if v is None else v)}</td></tr>"
            for k, v in sorted(versions.items())
        )
        facts = [
            ("target", run.target),
            ("probe", run.probe or _DASH),
            ("seed", _DASH if run.seed is None else run.seed),
            ("created", run.created or _DASH),
            ("run.json schema version", run.schema_version),
            ("python", prov.get("python", _DASH)),
            ("platform", prov.get("platform", _DASH)),
        ]
        out.append(
            f'<h3>Run {esc(run_id)}</h3><dl class="notes">'
            + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
            + "</dl>"
            + (
                "<table><thead><tr><th>Package</th><th>Version</th></tr></thead>"
                f"<tbody>{version_rows}</tbody></table>"
                if version_rows
                else ""
            )
            + f"<details><summary>run config</summary>{_json_pre(run.config)}</details>"
            + f"<details><summary>full provenance</summary>{_json_pre(prov)}</details>"
        )
    for s in sections:
        rows = []
        for name in sorted(s.result.methods):
            info = s.result.methods[name]
            calls = ", ".join(
                f"{k}: {fmt_seconds(v)}" for k, v in sorted(info.cost.model_calls_per_unit.items())
            )
            sec = info.cost.seconds_per_unit
            rows.append(
                f"<tr><td>{esc(name)}</td><td>{esc(info.kind)}</td><td>{esc(info.version)}</td>"
                f"<td>{esc(info.source or _DASH)}</td>"
                f"<td>{esc(_DASH if sec is None else fmt_seconds(sec))}</td>"
                f"<td>{esc(calls or _DASH)}</td><td>{esc(info.cost.device or _DASH)}</td>"
                f"<td><details><summary>config</summary>{_json_pre(info.config)}</details></td>"
                "</tr>"
            )
        out.append(
            f"<h3>Methods in {esc(_title(s))}</h3>"
            '<div class="scroll"><table><thead><tr><th>Method</th><th>Kind</th><th>Version</th>'
            "<th>Source</th><th>s / unit</th><th>Model calls / unit</th><th>Device</th>"
            f"<th>Config</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    return "".join(out)


def _index_data(sections: Sequence[_Section]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "sections": [
            {
                "id": s.sid,
                "suite": s.result.suite,
                "run_ids": [r.run.run_id for _, r, _ in s.sources],
                "target": s.result.run.target,
                "settings": s.differs,
                "offline": s.result.offline,
                "methods": list(s.methods),
                "metrics": [
                    {
                        "name": m.name,
                        "status": m.status,
                        "per_method": {
                            n: {
                                "mean": sc.mean,
                                "ci_low": sc.ci_low,
                                "ci_high": sc.ci_high,
                                "n": sc.n,
                                "group": sc.group,
                                "normalised": sc.normalised,
                            }
                            for n, sc in m.per_method.items()
                        },
                        "ceiling": None if m.ceiling is None else m.ceiling.estimate.to_json(),
                    }
                    for m in s.result.metrics
                ],
            }
            for s in sections
        ],
    }


def _index(sections: Sequence[_Section], units: _Units) -> str:
    failures = _sanity_failures(sections)
    nav = "".join(
        f'<li><a href="#{esc(s.sid)}">{esc(_title(s))}</a> '
        f"<small>{esc(', '.join(s.methods))}"
        f"{_OFFLINE_TAG if s.result.offline else ''}</small></li>"
        for s in sections
    )
    body = (
        f"<header><h1>{esc(SITE_TITLE)}</h1><p>Methods that label the units of vision networks "
        "with text, scored on shared suites. Every number comes with its 95% bootstrap interval "
        'over units. <a href="#provenance">Provenance</a>.</p>'
        f"<nav><ul>{nav}</ul></nav></header><main>"
        + "".join(_section_html(s, units, _fails_for(s, failures)) for s in sections)
        + "</main>"
    )
    return page(
        title=SITE_TITLE, body=body, footer=_provenance(sections), data=_index_data(sections)
    )


# --- unit pages -------------------------------------------------------------------------------


def _unit_score(metric: MetricSummary, u: UnitResult, method: str) -> str:
    if not metric.ok:
        return f'<td class="na" data-sort="" title="{esc(metric.reason or "")}">unavailable</td>'
    v = u.scores.get(metric.name, {}).get(method)
    if v is None:
        return f'<td class="num" data-sort="">{_DASH}</td>'
    if metric.value_type == "binary":
        return f'<td class="num" data-sort="{v!r}">{"yes" if v == 1 else "no"}</td>'
    return f'<td class="num" data-sort="{v!r}">{fmt(v)}</td>'


def _distributions(sec: _Section, u: UnitResult) -> str:
    """The unit's activation histogram on concept against other images, per method, from the
    faithfulness suite's details (nothing for other suites, or labels without one)."""
    if sec.result.suite != "faithfulness":
        return ""
    per = u.details.get("labels")
    if not isinstance(per, dict):
        return ""
    figures = []
    name = f"{u.unit.layer}:{u.unit.index}"
    for method in sec.methods:
        entry = per.get(method)
        dist = entry.get("distribution") if isinstance(entry, dict) else None
        if not isinstance(dist, dict):
            continue
        try:
            label = u.labels.get(method, "")
            svg = distribution_plot(
                [float(x) for x in dist["edges"]],
                [int(x) for x in dist["concept"]],
                [int(x) for x in dist["other"]],
                title=f"Unit {name}: activation on images with the concept of {method}'s label "
                f"against the other images",
            )
        except (KeyError, TypeError, ValueError) as e:  # a malformed entry is skipped, said so
            log.warning("unit %s: %s's activation distribution is unreadable (%s)", name, method, e)
            continue
        read_as = entry.get("formula") if isinstance(entry, dict) else None
        on_image = entry.get("on_the_image") if isinstance(entry, dict) else None
        # The faithfulness suite writes image-level leaves as "image:X" (bench.presence).
        image_note = (
            " (<code>image:X</code>: every pixel of an image that shows X: "
            + ", ".join(esc(str(x)) for x in on_image)
            + ")"
            if read_as and isinstance(on_image, list) and on_image
            else ""
        )
        figures.append(
            f"<figure>{svg}<figcaption>{esc(method)}: \u201c{esc(label)}\u201d"
            + (f" read as <code>{esc(read_as)}</code>{image_note}" if read_as else "")
            + "; each histogram is the share of its own images.</figcaption></figure>"
        )
    if not figures:
        return ""
    return (
        "<h3>Activation on concept against other images</h3>"
        f'<div class="dists">{"".join(figures)}</div>'
    )


def _unit_page(
    key: tuple[str, str, int],
    entries: Sequence[tuple[_Section, UnitResult]],
    exemplar_files: dict[tuple[str, UnitRef], str],
    generated: dict[tuple[str, UnitRef], list[tuple[str, str]]] | None = None,
) -> str:
    target, layer, index = key
    unit = UnitRef(layer=layer, index=index)
    name = f"{layer}:{index}"
    figures, seen = [], set()
    for sec, u in entries:
        rel = exemplar_files.get((sec.sid, u.unit))
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        figures.append(
            f'<figure><img class="exemplars" src="../{esc(rel)}" '
            f'alt="{esc(f"Top images of unit {name} with the activation regions outlined")}">'
            f"<figcaption>Top images of unit {esc(name)}, activation regions outlined (from "
            f"{esc(_title(sec))}).</figcaption></figure>"
        )
    exemplars = "".join(figures) or '<p class="muted">No exemplar images in these results.</p>'
    exemplars += _generated_figures(name, entries, generated or {})
    refs: dict[str, list[str]] = {}
    for _, u in entries:
        for kind, texts in u.references.items():
            bucket = refs.setdefault(kind, [])
            bucket.extend(t for t in texts if t not in bucket)
    ref_html = "".join(
        f"<h3>{esc(REFERENCE_TITLES.get(kind, kind))}</h3><ul>"
        + "".join(f'<li class="label">{esc(t)}</li>' for t in refs[kind])
        + "</ul>"
        for kind in sorted(refs, key=lambda k: (list(REFERENCE_TITLES).index(k), k))
    )
    if not ref_html:
        ref_html = '<p class="muted">No references for this unit.</p>'
    blocks = []
    for sec, u in entries:
        metrics = sec.result.metrics
        head = (
            '<th scope="col" data-type="text">Method</th><th scope="col" data-type="text">Label'
            '</th><th scope="col" data-type="text">Status</th>'
            + "".join(_metric_header(m) for m in metrics)
        )
        rows = []
        for n in sec.methods:
            info = sec.result.methods[n]
            status = u.method_status(n)
            if status == "error":
                label = f'<td class="err label">{esc(u.errors.get(n, ""))}</td>'
            else:
                label = f'<td class="label">{esc(u.labels.get(n, _DASH))}</td>'
            rows.append(
                f'<tr data-method="{esc(n)}">{_method_name_cell(info)}{label}'
                f"<td>{esc(status)}</td>{''.join(_unit_score(m, u, n) for m in metrics)}</tr>"
            )
        details = (
            f"<details><summary>details</summary>{_json_pre(u.details)}</details>"
            if u.details
            else ""
        )
        details = _distributions(sec, u) + details
        blocks.append(
            f'<section class="suite" data-suite="{esc(sec.result.suite)}"><h2>'
            f'<a href="../index.html#{esc(sec.sid)}">{esc(_title(sec))}</a></h2>'
            + (
                f'<p class="offline"><strong>Offline:</strong> {esc(sec.result.offline_note)}</p>'
                if sec.result.offline
                else ""
            )
            + f'<div class="scroll"><table class="sortable unit-scores"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>{details}</section>"
        )
    body = (
        f'<header><nav><a href="../index.html">\u2190 {esc(SITE_TITLE)}</a></nav>'
        f"<h1>Unit {esc(name)} <small>target {esc(target)}</small></h1></header><main>"
        f"<h2>Exemplars</h2>{exemplars}<h2>References</h2>{ref_html}" + "".join(blocks) + "</main>"
    )
    files = ", ".join(sorted({sec.display for sec, _ in entries}))
    footer = (
        f"<p>From {esc(files)} (result schema version {SCHEMA_VERSION}). Versions, configs and "
        'seeds: <a href="../index.html#provenance">provenance</a>.</p>'
    )
    data = {
        "target": target,
        "unit": unit.to_json(),
        "suites": [
            {
                "id": sec.sid,
                "suite": sec.result.suite,
                "labels": u.labels,
                "references": {k: list(v) for k, v in u.references.items()},
            }
            for sec, u in entries
        ],
    }
    return page(
        title=f"Unit {name} \u00b7 {target} \u00b7 {SITE_TITLE}",
        body=body,
        footer=footer,
        data=data,
    )


def _generated_figures(
    name: str,
    entries: Sequence[tuple[_Section, UnitResult]],
    generated: dict[tuple[str, UnitRef], list[tuple[str, str]]],
) -> str:
    """The ``generated`` suite's strips of a unit: per method, images generated from its label
    with the unit's activation under each."""
    figures = []
    for sec, u in entries:
        for method, rel in generated.get((sec.sid, u.unit), []):
            entry = u.details.get("labels", {}).get(method, {})
            prompt = entry.get("prompt") if isinstance(entry, dict) else None
            raw = entry.get("strip_activations") if isinstance(entry, dict) else None
            values = (
                [float(v) for v in raw]
                if isinstance(raw, list) and raw and all(isinstance(v, (int, float)) for v in raw)
                else []
            )
            cells = "".join(f"<span>{esc(fmt(v))}</span>" for v in values)
            width = f"width:{len(values) * 112}px;" if values else ""
            cols = f"grid-template-columns:repeat({len(values)},1fr)" if values else ""
            alt = f"Images generated from {method}'s label for unit {name}" + (
                f"; the unit's activation on each: {', '.join(fmt(v) for v in values)}"
                if values
                else ""
            )
            figures.append(
                f'<figure><div class="gen-strip" style="{width}{cols}">'
                f'<img src="../{esc(rel)}" alt="{esc(alt)}">{cells}</div>'
                f"<figcaption>{esc(method)}: images generated from "
                f'"{esc(prompt or u.labels.get(method, ""))}", the unit\'s activation under each '
                f"(from {esc(_title(sec))}).</figcaption></figure>"
            )
    if not figures:
        return ""
    return "<h2>Generated images</h2>" + "".join(figures)


def _generated_strips(
    sections: Sequence[_Section],
) -> tuple[dict[str, bytes], dict[tuple[str, UnitRef], list[tuple[str, str]]]]:
    """The ``generated`` suite's strips named in its unit details: site files, and
    (section, unit) -> [(method, site path)]."""
    files: dict[str, bytes] = {}
    found: dict[tuple[str, UnitRef], list[tuple[str, str]]] = {}
    read: dict[tuple[Path, str], str] = {}  # strips are shared by units: read each once
    for sec in sections:
        if sec.result.suite != "generated":
            continue
        for path, result, _ in sec.sources:
            for u in result.units:
                labels = u.details.get("labels")
                if not isinstance(labels, dict):
                    continue
                for method, entry in labels.items():
                    strip = entry.get("strip") if isinstance(entry, dict) else None
                    have = found.setdefault((sec.sid, u.unit), [])
                    if not isinstance(strip, str) or any(m == method for m, _ in have):
                        continue
                    if (path.parent, strip) not in read:
                        data = read_exemplar(path, replace(u, exemplars=strip))
                        if data is None:
                            continue
                        rel = f"{_GENERATED_DIR}/{hashlib.sha256(data).hexdigest()[:24]}.png"
                        files[rel] = data
                        read[(path.parent, strip)] = rel
                    have.append((method, read[(path.parent, strip)]))
    return files, found


# --- the site ---------------------------------------------------------------------------------


def render(loaded: Sequence[tuple[Path, SuiteResult]]) -> dict[str, bytes]:
    """The site as ``{relative path: bytes}`` for loaded result files (path, result).

    Reads only the exemplar images named by the results (relative to their files).
    """
    sections = _sections(loaded)
    units = _Units(sections)
    files: dict[str, bytes] = {}
    exemplar_files: dict[tuple[str, UnitRef], str] = {}
    for sec in sections:
        for path, result, _ in sec.sources:
            for u in result.units:
                if (sec.sid, u.unit) in exemplar_files:
                    continue
                data = read_exemplar(path, u)
                if data is None:
                    continue
                rel = f"{_EXEMPLAR_DIR}/{hashlib.sha256(data).hexdigest()[:24]}.png"
                files[rel] = data
                exemplar_files[(sec.sid, u.unit)] = rel
    generated_files, generated = _generated_strips(sections)
    files.update(generated_files)
    files["index.html"] = _index(sections, units).encode("utf-8")
    for key in sorted(units.pages):
        target, layer, index = key
        rel = units.file(target, UnitRef(layer=layer, index=index))
        page_html = _unit_page(key, units.pages[key], exemplar_files, generated)
        files[rel] = page_html.encode("utf-8")
    manifest = {
        "files": {p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())},
        "generator": "neuron-bench leaderboard",
        "results": [
            {"file": _display_path(p), "sha256": sha} for s in sections for p, _, sha in s.sources
        ],
        "schema_version": SCHEMA_VERSION,
    }
    files[MANIFEST] = (dumps(manifest, indent=2) + "\n").encode("utf-8")
    return dict(sorted(files.items()))


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``path`` atomically unless it already holds ``data`` (unchanged pages keep their
    modification time)."""
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write(path, data)


def _previous_files(out_dir: Path) -> list[str]:
    """Files a previous build wrote here (from its manifest), so stale unit pages go away;
    anything not listed (the user's own files) is never touched."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        import json

        listed = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        log.warning("%s is unreadable; not cleaning up files of the previous build", path)
        return []
    out = []
    for rel in listed if isinstance(listed, dict) else []:
        p = PurePosixPath(str(rel))
        if p.is_absolute() or ".." in p.parts or not p.parts:
            continue
        out.append(p.as_posix())
    return out


def _write_site(out_dir: Path, files: dict[str, bytes]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; expected a directory for the site.")
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = [rel for rel in _previous_files(out_dir) if rel not in files]
    for rel, data in files.items():
        if rel == MANIFEST:
            continue
        _write_if_changed(out_dir / rel, data)
    for rel in stale:
        p = out_dir / rel
        if p.is_file() and not p.is_symlink():
            p.unlink()
    for sub in (_UNIT_DIR, _EXEMPLAR_DIR):
        d = out_dir / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    # The manifest last: a build killed half-way leaves the previous manifest, whose files
    # are still cleaned up by the next build.
    _write_if_changed(out_dir / MANIFEST, files[MANIFEST])


def build(result_paths: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Build the leaderboard of ``result_paths`` into ``out_dir``; returns ``out_dir/index.html``.

    ``result_paths``: suite result files, run directories, or folders of runs (every
    ``suites/*.json`` below them). Raises :class:`bench.errors.DataError` naming the file for
    an unreadable or invalid result, :class:`bench.errors.UsageError` when nothing is found.
    Files of a previous build in ``out_dir`` that this one does not write are removed; other
    files there are left alone.
    """
    loaded = load_suite_results(result_paths)
    files = render(loaded)
    out = Path(out_dir)
    _write_site(out, files)
    n_units = sum(1 for p in files if p.startswith(f"{_UNIT_DIR}/"))
    log.info(
        "leaderboard: %d result files, %d unit pages -> %s",
        len(loaded),
        n_units,
        out / "index.html",
    )
    return out / "index.html"
