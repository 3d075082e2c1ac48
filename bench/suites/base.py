"""The suite contract, and the statistics every suite shares.

A suite is a class: subclass :class:`Suite`, set ``name``, ``version`` and ``Config`` (a frozen
dataclass whose defaults are the papers' protocol), implement ``_score`` (and ``applicable`` if it
only fits some targets). :meth:`Suite.score` is the final template method: it calls ``_score``
for per-item values, then computes, for every metric, each method's mean with a seeded 95%
bootstrap interval over items (units, or classes), the same per layer, significance groups
against the best method (paired bootstrap on the items every method was scored on), the
ceiling where the suite has one, and assembles the :class:`~bench.results.SuiteResult` the
leaderboard reads.

What a suite sees is a :class:`SuiteContext`: the run's identity, the target, every method's
labels (:class:`MethodLabels`; the constant ``depictions`` baseline included unless turned off),
the :class:`ScoreOptions` and a cache. It loads only what it needs: the target's weights and
images only when asked (``ctx.load_target()``), so text-only suites work offline without them.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.errors import ConfigError, UsageError
from bench.method import C, Configurable
from bench.results import (
    BASELINE,
    Ceiling,
    ClassResult,
    Estimate,
    MethodInfo,
    MethodScore,
    MetricSummary,
    RunIdentity,
    SuiteResult,
    UnitResult,
    publishable,
    with_normalised,
)
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    from bench.cache import Cache
    from bench.targets import Target, TargetSpec
    from metrics.result import MetricResult

log = logging.getLogger(__name__)

#: Text models: ``offline`` (the packaged all-MiniLM-L6-v2 for BERTScore and sentence cosine; CLIP
#: unavailable) or ``papers`` (roberta-large BERTScore presets, all-mpnet-base-v2, CLIP ViT-B/16).
TEXT_MODES: tuple[str, ...] = ("offline", "papers")
CONFIDENCE = 0.95
#: The constant baseline that ceiling-normalised scores are measured from (0 = its score).


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreOptions:
    """Settings shared by every suite of one scoring pass.

    ``text``: which text models score labels (:data:`TEXT_MODES`); ``offline`` is the default
    because nothing here can download the papers' models, and every offline number says it is
    not comparable with the papers. ``baseline``: score the constant ``depictions`` label beside
    the methods (constructed when the run lacks it). ``n_resamples``, ``seed``, ``alpha``: the
    bootstrap (intervals at 95%) and the significance level of the groups. ``device``: for text
    models and forward passes (``auto``: CUDA when available). ``download``: allow fetching data
    a suite needs (MILANNOTATIONS, CIFAR, the ImageNet synonym lines); never done silently.
    ``exemplars``: write each scored unit's exemplar strip (runs only) with
    ``exemplars_per_unit`` images. ``cache_dir``: the stage cache (default: the run's).
    """

    text: str = "offline"
    baseline: bool = True
    n_resamples: int = 10_000
    seed: int = 0
    alpha: float = 0.05
    device: str = "auto"
    download: bool = False
    exemplars: bool = True
    exemplars_per_unit: int = 6
    batch_size: int = 64
    cache_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.text not in TEXT_MODES:
            raise ConfigError(
                f"Expected text models {' or '.join(TEXT_MODES)}, got {self.text!r}. 'offline' "
                "uses the packaged all-MiniLM-L6-v2; 'papers' the papers' models (downloaded "
                "from the Hugging Face Hub on first use)."
            )
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int):
            raise ConfigError(f"Expected n_resamples to be an integer, got {self.n_resamples!r}.")
        if self.n_resamples < 100:
            raise ConfigError(f"Expected at least 100 bootstrap resamples, got {self.n_resamples}.")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"Expected a significance level alpha in (0, 1), got {self.alpha}.")
        if self.exemplars_per_unit < 1:
            raise ConfigError(f"Expected exemplars_per_unit >= 1, got {self.exemplars_per_unit}.")
        if self.batch_size < 1:
            raise ConfigError(f"Expected batch_size >= 1, got {self.batch_size}.")

    @property
    def offline(self) -> bool:
        return self.text == "offline"

    def bootstrap_settings(self) -> dict[str, Any]:
        return {
            "method": "percentile bootstrap over items, seeded",
            "confidence": CONFIDENCE,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "groups": "paired bootstrap against the best method on the items all were scored on",
            "alpha": self.alpha,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetInfo:
    """The target whose units were labelled. ``spec`` is ``None`` for a name that is not a
    registered target (labels of a network the harness cannot load, e.g. BigGAN, scored against
    a MILANNOTATIONS key). ``layers``: the layers the labels cover, in the target's order."""

    name: str
    spec: TargetSpec | None
    layers: tuple[str, ...] = ()

    @property
    def family(self) -> str | None:
        return None if self.spec is None else self.spec.family

    @property
    def synthetic(self) -> bool:
        return self.family == "synthetic"

    @property
    def final_layer(self) -> str | None:
        return None if self.spec is None else self.spec.final_layer

    def require_spec(self, suite: str) -> TargetSpec:
        if self.spec is None:
            from bench.registry import TARGETS

            raise UsageError(
                f"Suite '{suite}' needs a registered target, got '{self.name}'. Registered: "
                f"{', '.join(TARGETS.names())}."
            )
        return self.spec


def target_info(name: str, layers: Sequence[str] | None = None) -> TargetInfo:
    """:class:`TargetInfo` of ``name`` (its spec when registered)."""
    from bench.registry import TARGETS

    spec = TARGETS.get(name) if name in TARGETS else None
    if layers is None:
        layers = spec.layers if spec is not None else ()
    return TargetInfo(name=name, spec=spec, layers=tuple(layers))


@dataclass(kw_only=True)
class MethodLabels:
    """One method's labels: descriptions by unit, or a ``constant`` label for every unit (the
    ``depictions`` baseline constructed for a run that lacks it)."""

    info: MethodInfo
    descriptions: dict[UnitRef, Description] = field(default_factory=dict)
    constant: str | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def get(self, unit: UnitRef) -> Description | None:
        if self.constant is not None:
            return Description(unit=unit, label=self.constant, extras={"constant": True})
        return self.descriptions.get(unit)

    def label(self, unit: UnitRef) -> str | None:
        """The label scored for ``unit``: ``None`` when the method has none or failed there."""
        d = self.get(unit)
        return d.label if d is not None and d.ok else None

    def units(self, layer: str | None = None) -> list[UnitRef]:
        """Units this method described (none for a constant)."""
        return [u for u in self.descriptions if layer is None or u.layer == layer]


@dataclass(kw_only=True)
class SuiteContext:
    """What a suite may use: see the module docstring."""

    run: RunIdentity
    target: TargetInfo
    methods: dict[str, MethodLabels]
    options: ScoreOptions
    cache: Cache
    run_dir: Path | None = None
    weights: str | None = None
    #: The run's ``--probe-root`` as ``run.json`` holds it (``run.config`` cuts absolute paths
    #: to their last part for publishing, so suites must not read the directory from there).
    probe_root: str | None = None
    #: units -> relative exemplar strip paths (runs only; see bench.suites.strips).
    exemplar_writer: Callable[[Sequence[UnitRef]], dict[UnitRef, str]] | None = None
    _target: Target | None = None

    @property
    def device(self) -> str:
        from bench.environment import resolve_device

        return resolve_device(self.options.device)

    def load_target(self) -> Target:
        """The target network (loaded once; weights fetched with a checksum when missing)."""
        if self._target is None:
            from bench.targets import load_target

            self.target.require_spec("this suite")
            self._target = load_target(
                self.target.name,
                weights=self.weights,
                device=self.device,
                download=True,
                progress=self.options.progress,
                cache=self.cache,
            )
        return self._target

    def described_units(self, layers: Iterable[str] | None = None) -> list[UnitRef]:
        """Units some method (a constant label aside) described, in layer order then index."""
        wanted = None if layers is None else set(layers)
        found: set[UnitRef] = set()
        for m in self.methods.values():
            if m.constant is None:
                found.update(u for u in m.descriptions if wanted is None or u.layer in wanted)
        order = {layer: i for i, layer in enumerate(self.target.layers)}
        return sorted(found, key=lambda u: (order.get(u.layer, len(order)), u.layer, u.index))


# --- what _score returns ------------------------------------------------------------------------


@dataclass(kw_only=True)
class MetricValues:
    """One metric's per-item values for every method (and the ceiling), before statistics.

    ``values``: method -> item -> value; an item missing for a method (no label, failed) is
    not scored for it. Items are :class:`UnitRef` s, or any hashable key (cifar-auroc's
    ``(dataset, class)``). ``ceiling``: item -> value of the reference ceiling, if any.
    """

    name: str
    values: dict[str, dict[Hashable, float]] = field(default_factory=dict)
    ceiling: dict[Hashable, float] | None = None
    ceiling_note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    comparable_with_papers: bool = True
    note: str = ""
    higher_is_better: bool = True
    value_type: str = "real"
    status: str = "ok"
    reason: str | None = None

    @classmethod
    def from_result(cls, result: MetricResult, *, name: str | None = None) -> MetricValues:
        """Empty values with the model, settings and status of a metric wrapper's result."""
        return cls(
            name=name or result.metric,
            settings=dict(result.settings),
            comparable_with_papers=result.comparable_with_papers,
            note=result.note,
            status=result.status,
            reason=result.reason,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(kw_only=True)
class UnitEntry:
    """A unit the suite scored, with its references (kind -> texts) and suite details."""

    unit: UnitRef
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class SuiteScores:
    """What ``_score`` returns. ``order``: the items in display order (default: the units);
    ``layer_of``: item -> layer for the per-layer breakdown (default: a unit's layer; items
    without a layer get none). ``offline_notes``: what offline stand-ins mean for the numbers.
    ``groups_min_units``: significance groups are withheld (and the result says why) when fewer
    items than this are shared by every method."""

    units: list[UnitEntry]
    metrics: list[MetricValues]
    order: list[Hashable] | None = None
    layer_of: dict[Hashable, str] | None = None
    classes: list[ClassResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    offline_notes: list[str] = field(default_factory=list)
    groups_min_units: int = 0


# --- the contract --------------------------------------------------------------------------------


class Suite(Configurable[C], abc.ABC):
    """Base class of every suite. See the module docstring."""

    role: ClassVar[str] = "suite"
    #: One line for listings.
    summary: ClassVar[str] = ""
    #: The papers' text models the suite scores with under ``--text-models papers`` (keys of
    #: ``metrics.text.PAPERS_TEXT_MODELS``), checked by :meth:`check`.
    text_models: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "score" in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__} overrides Suite.score, which is final; implement _score."
            )

    def applicable(self, target: TargetInfo) -> str | None:
        """``None`` when the suite can score labels of ``target``; otherwise why not."""
        return None

    def check(self, target: TargetInfo, run: Mapping[str, Any], options: ScoreOptions) -> None:
        """Cheap preconditions of scoring a run of ``target`` configured as ``run`` (what
        ``run.json`` will hold under ``config``: components, component options, probe),
        checked by ``bench run`` before anything is recorded for the suites it was asked for:
        raise a :class:`~bench.errors.BenchError` saying what is missing and how to supply it.
        Loads no model. The base checks the papers' text models (:attr:`text_models`); a suite
        that overrides this calls ``super().check(...)``."""
        if self.text_models and not options.offline:
            from metrics.text import check_papers_text_models

            check_papers_text_models(self.text_models)

    @abc.abstractmethod
    def _score(self, ctx: SuiteContext) -> SuiteScores:
        """Per-item values of every metric for every method."""

    def score(self, ctx: SuiteContext) -> SuiteResult:
        """Score ``ctx.methods``: the final template method around ``_score``."""
        reason = self.applicable(ctx.target)
        if reason is not None:
            raise UsageError(f"Suite '{self.name}' does not apply to '{ctx.target.name}': {reason}")
        if not ctx.methods:
            raise UsageError(
                f"Suite '{self.name}': expected at least one method to score, got none."
            )
        scores = self._score(ctx)
        if not scores.units and not scores.classes:
            raise UsageError(
                f"Suite '{self.name}' found nothing to score for '{ctx.target.name}': no method "
                "labelled a unit the suite has references for."
            )
        order = scores.order if scores.order is not None else [u.unit for u in scores.units]
        layer_of = scores.layer_of
        if layer_of is None:
            layer_of = {k: k.layer for k in order if isinstance(k, UnitRef)}
        methods = list(ctx.methods)
        summaries = tuple(
            summarise(
                mv,
                methods,
                order,
                layer_of,
                ctx.options,
                groups_min_units=scores.groups_min_units,
            )
            for mv in scores.metrics
        )
        exemplars: dict[UnitRef, str] = {}
        if ctx.exemplar_writer is not None and ctx.options.exemplars and scores.units:
            exemplars = ctx.exemplar_writer([u.unit for u in scores.units])
        units = tuple(
            _unit_result(entry, ctx, scores.metrics, exemplars.get(entry.unit))
            for entry in scores.units
        )
        notes = list(dict.fromkeys(n for n in scores.offline_notes if n))
        offline = ctx.options.offline or bool(notes)
        if ctx.options.offline:
            from metrics.text import OFFLINE_NOTE

            notes.insert(0, f"text models: {OFFLINE_NOTE}")
        settings = {
            # File names, not this machine's paths: result files are meant for publishing.
            "suite": publishable(self.identity()),
            "text_models": ctx.options.text,
            "bootstrap": ctx.options.bootstrap_settings(),
            "baseline": ctx.options.baseline,
            **scores.settings,
        }
        return SuiteResult(
            run=ctx.run,
            suite=self.name,
            methods={m: ctx.methods[m].info for m in methods},
            metrics=summaries,
            units=units,
            classes=tuple(scores.classes),
            settings=settings,
            offline=offline,
            offline_note="; ".join(notes),
        )


def _unit_result(
    entry: UnitEntry, ctx: SuiteContext, metrics: Sequence[MetricValues], exemplars: str | None
) -> UnitResult:
    labels: dict[str, str] = {}
    status: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, m in ctx.methods.items():
        d = m.get(entry.unit)
        if d is None:
            continue
        if d.ok:
            labels[name] = d.label
        else:
            status[name] = "error"
            errors[name] = d.error or "failed"
    scores: dict[str, dict[str, float]] = {}
    for mv in metrics:
        if not mv.ok:
            continue
        per = {m: vals[entry.unit] for m, vals in mv.values.items() if entry.unit in vals}
        if per:
            scores[mv.name] = per
    return UnitResult(
        unit=entry.unit,
        labels=labels,
        references={k: tuple(v) for k, v in entry.references.items()},
        scores=scores,
        status=status,  # type: ignore[arg-type]
        errors=errors,
        exemplars=exemplars,
        details=entry.details,
    )


# --- statistics ----------------------------------------------------------------------------------


def _estimate(values: Sequence[float], options: ScoreOptions) -> Estimate:
    from metrics.stats import bootstrap_ci

    ci = bootstrap_ci(
        values, confidence=CONFIDENCE, n_resamples=options.n_resamples, seed=options.seed
    )
    # Percentile intervals of a constant are exactly the constant; guard float noise anyway.
    return Estimate(
        mean=ci.mean, ci_low=min(ci.low, ci.mean), ci_high=max(ci.high, ci.mean), n=ci.n
    )


def _per_layer(
    values: dict[Hashable, float],
    order: Sequence[Hashable],
    layer_of: dict[Hashable, str],
    options: ScoreOptions,
) -> dict[str, Estimate]:
    by_layer: dict[str, list[float]] = {}
    for k in order:
        if k in values and k in layer_of:
            by_layer.setdefault(layer_of[k], []).append(values[k])
    return {layer: _estimate(v, options) for layer, v in by_layer.items()}


def summarise(
    mv: MetricValues,
    methods: Sequence[str],
    order: Sequence[Hashable],
    layer_of: dict[Hashable, str],
    options: ScoreOptions,
    *,
    groups_min_units: int = 0,
) -> MetricSummary:
    """One metric's :class:`~bench.results.MetricSummary`: means, intervals, groups, ceiling.
    Groups are withheld when fewer than ``groups_min_units`` items are shared by all methods."""
    from metrics.stats import significance_groups

    settings = {**mv.settings, "bootstrap": options.bootstrap_settings()}
    if not mv.ok:
        return MetricSummary(
            name=mv.name,
            status="unavailable",
            reason=mv.reason or "unavailable",
            settings=settings,
            comparable_with_papers=False,
            note=mv.note,
            higher_is_better=mv.higher_is_better,
            value_type=mv.value_type,  # type: ignore[arg-type]
            alpha=options.alpha,
            confidence=CONFIDENCE,
        )
    scored = [m for m in methods if mv.values.get(m)]
    estimates = {
        m: _estimate([mv.values[m][k] for k in order if k in mv.values[m]], options) for m in scored
    }
    common = [k for k in order if all(k in mv.values[m] for m in scored)]
    groups = None
    note = mv.note
    if groups_min_units:
        settings["groups_min_units"] = groups_min_units
    if scored and common and len(common) < groups_min_units:
        withheld = (
            f"significance groups withheld: {len(common)} units shared by every method, fewer "
            f"than the {groups_min_units} a paired comparison needs here"
        )
        settings["groups_withheld"] = withheld
        note = f"{note}; {withheld}" if note else withheld[0].upper() + withheld[1:]
    elif scored and common:
        groups = significance_groups(
            {m: [mv.values[m][k] for k in common] for m in scored},
            alpha=options.alpha,
            higher_is_better=mv.higher_is_better,
            n_resamples=options.n_resamples,
            seed=options.seed,
        )
        settings["groups_over_items"] = len(common)
    per_method = {}
    for m in scored:
        e = estimates[m]
        cmp = groups.versus_best.get(m) if groups is not None else None
        per_method[m] = MethodScore(
            mean=e.mean,
            ci_low=e.ci_low,
            ci_high=e.ci_high,
            n=e.n,
            group=None if groups is None else groups.group[m],
            p_vs_best=None if cmp is None else _clip01(cmp.p_value),
            per_layer=_per_layer(mv.values[m], order, layer_of, options),
        )
    ceiling = None
    if mv.ceiling:
        c = _estimate([mv.ceiling[k] for k in order if k in mv.ceiling], options)
        ceiling = Ceiling(
            mean=c.mean,
            ci_low=c.ci_low,
            ci_high=c.ci_high,
            n=c.n,
            per_layer=_per_layer(mv.ceiling, order, layer_of, options),
            note=mv.ceiling_note,
        )
    if ceiling is not None and BASELINE in per_method:
        per_method = with_normalised(per_method, ceiling, higher_is_better=mv.higher_is_better)
        settings["normalised"] = NORMALISED_NOTE
    return MetricSummary(
        name=mv.name,
        settings=settings,
        comparable_with_papers=mv.comparable_with_papers,
        note=note,
        higher_is_better=mv.higher_is_better,
        value_type=mv.value_type,  # type: ignore[arg-type]
        per_method=per_method,
        ceiling=ceiling,
        alpha=options.alpha,
        confidence=CONFIDENCE,
    )


NORMALISED_NOTE = (
    f"(method - {BASELINE}) / (ceiling - {BASELINE}) from the means overall and per layer; "
    f"undefined where the ceiling does not exceed {BASELINE}"
)


def _clip01(p: float) -> float:
    return 0.0 if p < 0.0 else 1.0 if p > 1.0 or math.isnan(p) else p
