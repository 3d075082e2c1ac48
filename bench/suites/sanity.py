"""``sanity``: the metric report card (``bench metrics check``).

NeuronEval's sanity tests (Oikarinen et al. 2025; :mod:`metrics.sanity`) put every faithfulness
metric the benchmark ships through four tests on units whose truth is known:

* the **planted units** of a synthetic target, with their planted concept;
* the **final-layer units**, with their class name.

Each unit's pooled activation over the probe (spatial mean) is scored against the presence of
its true concept (:mod:`bench.presence`, from the probe's segmentations; a class name is read
into concepts like any label: "red circle" -> ``red AND circle``), then against a worse label:

* ``missing_labels``: half of the concept's positive images dropped;
* ``extra_labels``: random negatives turned positive, about doubling the positives;
* ``permutation``: another unit's concept (labels shuffled across the units);
* ``constant``: the most frequent concept among the units, for every unit.

A unit passes a test when the score drops by more than ``epsilon`` (0.001 of the metric's range);
a metric passes a test when at least ``threshold`` (90%) of the units with a defined score pass.

The report card is a :class:`~bench.results.SuiteResult` like any suite's, read the other way
round: its "methods" are the metrics (``auroc``, ``f1``, ...), its "metrics" the four tests, each
value the share of units that pass (per unit 1 or 0), with the pass/fail verdict, the threshold
and the unit counts in each metric summary's settings. The text metrics of the agreement suites
(BERTScore, sentence and CLIP cosine) compare texts, not presence, so these tests do not apply to
them; the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.results import MethodCost, MethodInfo, RunIdentity, SuiteResult
from bench.schema import UnitRef
from bench.suites.base import (
    MethodLabels,
    MetricValues,
    ScoreOptions,
    Suite,
    SuiteContext,
    SuiteScores,
    TargetInfo,
    UnitEntry,
    target_info,
)

if TYPE_CHECKING:
    from bench.cache import Cache

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class SanityConfig:
    #: Top fraction for the metrics that binarise the unit (IoU, F1, recall, ...).
    alpha: float = 0.005
    #: NeuronEval's epsilon (in units of the metric's range).
    epsilon: float = 0.001
    #: Share of units that must pass for a metric to pass a test.
    threshold: float = 0.9
    #: Seed of the perturbations.
    seed: int = 0
    #: Images of the synthetic probe (``None``: the probe's default).
    n_images: int | None = None
    #: Which units: ``planted`` and/or ``final``.
    units: tuple[str, ...] = ("planted", "final")

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"Expected 0 < threshold <= 1, got {self.threshold}")
        if isinstance(self.units, str):
            object.__setattr__(self, "units", tuple(x for x in self.units.split(",") if x))
        bad = [u for u in self.units if u not in ("planted", "final")]
        if bad or not self.units:
            raise ValueError(f"Expected units among planted, final; got {list(self.units)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class KnownUnit:
    unit: UnitRef
    concept: str
    kind: str  # "planted" or "final"
    formula: list | None = None


def known_units(target: TargetInfo, kinds: tuple[str, ...]) -> list[KnownUnit]:
    """Units of ``target`` whose truth is known: planted units (synthetic targets) and the
    final layer's units with their class names."""
    out: list[KnownUnit] = []
    if "planted" in kinds and target.synthetic:
        from bench.suites.planted import planted_units

        for p in planted_units(target.name):
            out.append(KnownUnit(unit=p.unit, concept=p.concept, kind="planted", formula=p.formula))
    spec = target.spec
    if "final" in kinds and spec is not None and spec.final_layer:
        from bench.suites.final_layer import target_class_names

        names, _ = target_class_names(target)
        for i, name in enumerate(names):
            out.append(
                KnownUnit(
                    unit=UnitRef(layer=spec.final_layer, index=i),
                    concept=str(name).replace("_", " "),
                    kind="final",
                )
            )
    return out


class SanitySuite(Suite[SanityConfig]):
    """The metric report card (see the module docstring). Not a suite of method labels: it is
    run by ``bench metrics check`` (:func:`metrics_check`), not by ``bench score``."""

    name = "sanity"
    version = "1"
    summary = "sanity tests of every faithfulness metric on units whose truth is known"

    def applicable(self, target: TargetInfo) -> str | None:
        if target.spec is None:
            return "it is not a registered target, so it cannot be run on images"
        return None

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        import numpy as np

        from bench.dissect import concept_table_cached
        from bench.presence import SegmentationPresence, label_reader, segmentation_presence
        from bench.probes import load_probe
        from bench.suites.faithfulness import pooled_activations
        from metrics.faithfulness import FAITHFULNESS_METRICS
        from metrics.sanity import SANITY_TESTS, label_test_scores, unit_passes

        cfg = self.config
        known = known_units(ctx.target, cfg.units)
        if not known:
            raise UsageError(f"Target '{ctx.target.name}' has no units whose truth is known.")
        probe_name = ctx.run.probe or ("synthetic" if ctx.target.synthetic else None)
        if probe_name is None:
            raise UsageError(
                "bench metrics check needs a probe with segmentations (--probe broden)."
            )
        options = {"n_images": cfg.n_images} if cfg.n_images is not None else {}
        probe = load_probe(probe_name, None, options=options, cache=ctx.cache)
        source = SegmentationPresence(concept_table_cached(ctx.cache, probe))
        pres = segmentation_presence(
            [k.concept for k in known],
            source,
            extras=[{"formula": k.formula} if k.formula else None for k in known],
            reader=label_reader(probe.name),
        )
        defined = np.array(
            [
                r.parsed and 0 < np.nansum(p) < p.size
                for r, p in zip(pres.readings, pres.presence, strict=True)
            ]
        )
        units = [k for k, ok in zip(known, defined, strict=True) if ok]
        skipped = {
            "unparsed": [
                k.concept for k, r in zip(known, pres.readings, strict=True) if not r.parsed
            ],
            "absent_or_everywhere": sum(
                1
                for k, r, ok in zip(known, pres.readings, defined, strict=True)
                if r.parsed and not ok
            ),
        }
        if len(units) < 2:
            raise UsageError(
                f"Expected at least 2 known units whose concept is on some probe images, got "
                f"{len(units)} ({skipped})."
            )
        target = ctx.load_target()
        layers = list(dict.fromkeys(k.unit.layer for k in units))
        acts = pooled_activations(
            target, probe, layers, cache=ctx.cache, device=ctx.device,
            batch_size=ctx.options.batch_size,
        )  # fmt: skip
        a = np.stack([acts[k.unit.layer]["mean"][:, k.unit.index] for k in units]).astype(float)
        c = pres.presence[defined]
        tests = {t: MetricValues(name=t, value_type="binary") for t in SANITY_TESTS}
        verdicts: dict[str, dict[str, Any]] = {}
        for metric, (fn, takes_alpha, value_range) in FAITHFULNESS_METRICS.items():

            def score(x: np.ndarray, y: np.ndarray, fn: Any = fn, ta: bool = takes_alpha) -> Any:
                return fn(x, y, cfg.alpha) if ta else fn(x, y)

            per_test = label_test_scores(score, a, c, seed=cfg.seed)
            verdicts[metric] = {}
            for test, (correct, perturbed) in per_test.items():
                passes, ok = unit_passes(
                    correct, perturbed, value_range=value_range, epsilon=cfg.epsilon
                )
                kept = units
                if test == "constant":
                    const = np.broadcast_to(c[int(np.argmax((c > 0.5).sum(axis=1)))], c.shape)
                    kept = [
                        k for k, s in zip(units, np.all(c == const, axis=1), strict=True) if not s
                    ]
                vals = tests[test].values.setdefault(metric, {})
                for k, p_, d_ in zip(kept, passes, ok, strict=True):
                    if d_:
                        vals[k.unit] = 1.0 if p_ else 0.0
                judged = int(ok.sum())
                rate = float(passes.sum()) / judged if judged else None
                verdicts[metric][test] = {
                    "passed": rate is not None and rate >= cfg.threshold,
                    "rate": rate,
                    "passed_units": int(passes.sum()),
                    "judged_units": judged,
                    "undefined_units": int((~ok).sum()),
                }
        for test, mv in tests.items():
            mv.settings = {
                "test": test,
                "threshold": cfg.threshold,
                "epsilon": cfg.epsilon,
                "verdicts": {m: v[test] for m, v in verdicts.items()},
            }
            mv.comparable_with_papers = False
            mv.note = "share of known units whose correct label scores higher than the perturbed"
        entries = [
            UnitEntry(
                unit=k.unit,
                references={"planted" if k.kind == "planted" else "class_name": (k.concept,)},
                details={"kind": k.kind, "formula": str(pres.readings[known.index(k)].formula)},
            )
            for k in units
        ]
        settings = {
            "probe": probe.identity(),
            "images": source.num_images,
            "alpha": cfg.alpha,
            "pool": "mean",
            "units": {kind: sum(1 for k in units if k.kind == kind) for kind in cfg.units},
            "skipped_units": skipped,
            "verdicts": verdicts,
            "not_applicable": {
                "bertscore, sentence-cosine, clip-cosine": "text-to-text metrics of the agreement "
                "suites: they compare a label with reference texts, not with concept presence, so "
                "the presence perturbations do not apply"
            },
        }
        return SuiteScores(units=entries, metrics=list(tests.values()), settings=settings)


def metrics_check(
    target: str,
    *,
    config: SanityConfig | None = None,
    options: ScoreOptions | None = None,
    cache: Cache | None = None,
) -> SuiteResult:
    """Run the report card on ``target`` (see the module docstring)."""
    from bench.cache import Cache
    from bench.environment import provenance
    from metrics.faithfulness import FAITHFULNESS_METRICS

    options = options or ScoreOptions(baseline=False)
    suite = SanitySuite(**({} if config is None else _fields(config)))
    info = target_info(target)
    methods = {
        m: MethodLabels(
            info=MethodInfo(
                name=m, version="1", kind="method", cost=MethodCost(note="a metric, not a method")
            )
        )
        for m in FAITHFULNESS_METRICS
    }
    ctx = SuiteContext(
        run=RunIdentity(
            run_id=f"metrics-check-{target}",
            target=target,
            probe="synthetic" if info.synthetic else None,
            provenance=provenance(),
        ),
        target=info,
        methods=methods,
        options=options,
        cache=cache or (Cache(options.cache_dir) if options.cache_dir else Cache()),
    )
    return suite.score(ctx)


def _fields(config: SanityConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in SanityConfig.__dataclass_fields__}
