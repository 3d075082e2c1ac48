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

The **text metrics** of the suites that score a label against reference texts (BERTScore,
sentence cosine, CLIP text cosine; :mod:`bench.suites.text`) go through the tests that apply to
them (:func:`metrics.sanity.text_test_scores`), each suite's metric a row of its own
(``milannotations/bertscore``, ...), with the suite's own references, models and presets:

* ``milannotations`` (every annotated unit): the correct labels are the suite's
  inter-annotator ceiling pairs, each annotation held out against the unit's other annotations
  (:func:`bench.suites.milannotations.leave_one_out`), the unit's score their mean (the
  suite's per-unit ceiling); ``permutation`` gives unit ``u`` another unit's annotations against
  ``u``'s references; ``constant`` the constant label ``depictions`` (the benchmark's baseline,
  :data:`bench.results.BASELINE`, the DnD finding); ``frequent_label`` the annotation written
  most often across the units (the simulated annotators' generic answer, "objects"), given to
  every unit: the constant exploit inside the annotations' own vocabulary;
* ``final-layer`` (every class) and ``planted`` (every planted unit): the correct label is the
  suite's reference itself (the class name; the planted concept read as a phrase), so it scores
  the metric's maximum by construction and the tests ask only whether another unit's reference,
  or ``depictions``, scores lower (every label there is different, so ``frequent_label`` is
  not applicable).

``missing_labels`` and ``extra_labels`` have no meaning for a text metric (there are no positive
images to drop or add): those cells are "not applicable", never a pass, with the reason in the
settings; ``frequent_label`` is a text-only test (for the presence metrics ``constant`` already
gives every unit the most frequent concept). A text metric the run cannot compute (CLIP cosine
with offline text models) is not applicable in every test, with its reason. Units whose
perturbed labels equal their own letter for letter cannot lose to them and are left out of that
test (counted as ``same_label_units``).

The other suites' metrics (``generated/auc``, ``generated/mad``, ``generated/p_value``,
``milannotations/identification-top1``, ..., ``planted/recovered``, ``cifar-auroc/auroc``,
``cifar-auroc/auprc``) go through the tests that apply to them, on the same known units, by
:mod:`bench.suites.sanity_rows` (``row_groups``; its docstring says how each test reads for each
metric and which do not apply).

The report card is a :class:`~bench.results.SuiteResult` like any suite's, read the other way
round: its "methods" are the metrics (``auroc``, ``f1``, ..., ``milannotations/bertscore``, ...),
its "metrics" the tests, each value the share of units that pass (per unit 1 or 0), with the
pass/fail verdict, the threshold and the unit counts in each metric summary's settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, UsageError
from bench.results import BASELINE, MethodCost, MethodInfo, RunIdentity, SuiteResult
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

#: The suites whose text metrics the card tests, in row order.
TEXT_SUITES: tuple[str, ...] = ("milannotations", "final-layer", "planted")
#: Range of each text metric for the epsilon rule (all are means of cosines, in [-1, 1];
#: a BERTScore rescaled with a baseline is not bounded there and uses
#: :func:`metrics.sanity.score_scale` instead).
TEXT_VALUE_RANGES: dict[str, tuple[float, float]] = {
    "bertscore": (-1.0, 1.0),
    "sentence-cosine": (-1.0, 1.0),
    "clip-cosine": (-1.0, 1.0),
}


def text_rows(suites: tuple[str, ...] = TEXT_SUITES) -> dict[str, tuple[str, str]]:
    """Card row -> (suite, text metric): ``milannotations/bertscore`` -> ("milannotations",
    "bertscore"), ... for every text metric of every suite in ``suites``."""
    from bench.suites.text import TEXT_METRICS

    return {f"{suite}/{m}": (suite, m) for suite in suites for m in TEXT_METRICS}


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
    #: The suites whose text metrics are put through the text tests (empty: none).
    text_suites: tuple[str, ...] = TEXT_SUITES
    #: The constant label of the text metrics' ``constant`` test.
    text_constant: str = BASELINE
    #: An ``annotations.csv`` for the milannotations text tests (``None``: the target's own,
    #: as the milannotations suite finds them).
    annotations: str | None = None
    #: The other suites' metrics put through the tests (:mod:`bench.suites.sanity_rows`):
    #: ``generated``, ``identification``, ``recovered``, ``cifar-auroc`` (empty: none).
    row_groups: tuple[str, ...] = ("generated", "identification", "recovered", "cifar-auroc")

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"Expected 0 < threshold <= 1, got {self.threshold}")
        if isinstance(self.units, str):
            object.__setattr__(self, "units", tuple(x for x in self.units.split(",") if x))
        bad = [u for u in self.units if u not in ("planted", "final")]
        if bad or not self.units:
            raise ValueError(f"Expected units among planted, final; got {list(self.units)}")
        if isinstance(self.text_suites, str):
            object.__setattr__(
                self, "text_suites", tuple(x for x in self.text_suites.split(",") if x)
            )
        bad = [x for x in self.text_suites if x not in TEXT_SUITES]
        if bad:
            raise ValueError(
                f"Expected text_suites among {', '.join(TEXT_SUITES)}; got {list(self.text_suites)}"
            )
        if isinstance(self.row_groups, str):
            object.__setattr__(
                self, "row_groups", tuple(x for x in self.row_groups.split(",") if x)
            )
        from bench.suites.sanity_rows import ROW_GROUPS

        bad = [x for x in self.row_groups if x not in ROW_GROUPS]
        if bad:
            raise ValueError(
                f"Expected row_groups among {', '.join(ROW_GROUPS)}; got {list(self.row_groups)}"
            )
        if not self.text_constant.strip():
            raise ValueError("Expected a non-empty text_constant.")


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
        from metrics.sanity import (
            FAITHFULNESS_NOT_APPLICABLE,
            SANITY_TESTS,
            TEXT_NOT_APPLICABLE,
            label_test_scores,
            unit_passes,
        )

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
        names = list(SANITY_TESTS) + (
            ["frequent_label"] if cfg.text_suites or cfg.row_groups else []
        )
        tests = {t: MetricValues(name=t, value_type="binary") for t in names}
        verdicts: dict[str, dict[str, Any]] = {}
        for metric, (fn, takes_alpha, value_range) in FAITHFULNESS_METRICS.items():

            def score(x: np.ndarray, y: np.ndarray, fn: Any = fn, ta: bool = takes_alpha) -> Any:
                return fn(x, y, cfg.alpha) if ta else fn(x, y)

            per_test = label_test_scores(score, a, c, seed=cfg.seed)
            verdicts[metric] = {
                t: {"applicable": False, "reason": FAITHFULNESS_NOT_APPLICABLE[t]}
                for t in tests
                if t not in SANITY_TESTS
            }
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
            mv.settings = {"test": test, "threshold": cfg.threshold, "epsilon": cfg.epsilon}
            mv.comparable_with_papers = False
            mv.note = "share of known units whose correct label scores higher than the perturbed"
        entries = {
            k.unit: UnitEntry(
                unit=k.unit,
                references={"planted" if k.kind == "planted" else "class_name": (k.concept,)},
                details={"kind": k.kind, "formula": str(pres.readings[known.index(k)].formula)},
            )
            for k in units
        }
        memo: dict[str, Any] = {}  # each text suite's units, read once
        text_settings = (
            _text_tests(ctx, cfg, tests, verdicts, entries, memo) if cfg.text_suites else {}
        )
        from bench.suites.sanity_rows import add_suite_rows

        def text_units(suite: str) -> Any:
            try:
                return _text_units(ctx, suite, cfg, memo)
            except _Unavailable as e:
                return e.reason
            except BenchError as e:
                return f"no references: {e}"

        rows_settings = add_suite_rows(
            ctx, cfg, units, acts, c, tests, verdicts, entries, text_units
        )
        for test, mv in tests.items():
            mv.settings["verdicts"] = {m: v[test] for m, v in verdicts.items()}
        settings = {
            "probe": probe.identity(),
            "images": source.num_images,
            "alpha": cfg.alpha,
            "pool": "mean",
            "units": {kind: sum(1 for k in units if k.kind == kind) for kind in cfg.units},
            "skipped_units": skipped,
            "verdicts": verdicts,
            "text": text_settings,
            "suite_rows": rows_settings,
            "not_applicable": {
                f"{', '.join(TEXT_NOT_APPLICABLE)} for the text metrics": next(
                    iter(TEXT_NOT_APPLICABLE.values())
                ),
                **{
                    f"{t} for the presence metrics": why
                    for t, why in FAITHFULNESS_NOT_APPLICABLE.items()
                },
                **{row: v["reason"] for row, v in text_settings.get("unavailable", {}).items()},
            }
            if text_settings
            else {},
        }
        from bench.suites.sanity_rows import suite_rows

        not_applicable = settings["not_applicable"]
        assert isinstance(not_applicable, dict)
        for row in suite_rows(cfg.row_groups, cfg.text_suites):
            by_reason: dict[str, list[str]] = {}
            for test, v in verdicts.get(row, {}).items():
                if v.get("applicable") is False:
                    by_reason.setdefault(v["reason"], []).append(test)
            for why, names_ in by_reason.items():
                not_applicable[f"{', '.join(names_)} for {row}"] = why
        return SuiteScores(
            units=list(entries.values()), metrics=list(tests.values()), settings=settings
        )


class _Unavailable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text_units(
    ctx: SuiteContext, suite: str, cfg: SanityConfig, memo: dict[str, Any] | None = None
) -> tuple[
    list[tuple[UnitRef, list[str], list[tuple[str, ...]], dict[str, tuple[str, ...]]]], dict
]:
    """One suite's units for the text tests: ``(unit, labels, references per label, the
    unit's references as its card entry shows them)`` each, and what they are (settings).
    Raises :class:`_Unavailable` when the suite does not apply to the target. ``memo`` keeps
    the answer (or the error) per suite for the next caller of the same card."""
    if memo is not None:
        if suite not in memo:
            try:
                memo[suite] = _text_units(ctx, suite, cfg)
            except (_Unavailable, BenchError) as e:
                memo[suite] = e
        found = memo[suite]
        if isinstance(found, Exception):
            raise found
        return found  # type: ignore[no-any-return]
    if suite == "milannotations":
        from bench.suites.milannotations import CEILING_NOTE, MilannotationsSuite, leave_one_out

        mil = MilannotationsSuite(annotations=cfg.annotations)
        reason = mil.applicable(ctx.target)
        if reason is not None:
            raise _Unavailable(reason)
        annotations, source = mil.annotations(ctx)
        order = {layer: i for i, layer in enumerate(ctx.target.layers)}
        out = []
        for u in sorted(annotations, key=lambda u: (order.get(u.layer, len(order)), u.index)):
            pairs = leave_one_out(annotations[u])
            if pairs:
                out.append(
                    (
                        u,
                        [p[0] for p in pairs],
                        [p[1] for p in pairs],
                        {"annotations": annotations[u]},
                    )
                )
        return out, {
            "annotations": source,
            "labels": f"the suite's inter-annotator ceiling pairs ({CEILING_NOTE}); a unit's "
            "score is their mean",
            "permutation": "another unit's annotations, each against this unit's references",
        }
    if suite == "final-layer":
        from bench.suites.final_layer import FinalLayerSuite, target_class_names

        reason = FinalLayerSuite().applicable(ctx.target)
        spec = ctx.target.spec
        if reason is None and (spec is None or not spec.final_layer):
            reason = "the target has no final layer"
        if reason is not None:
            raise _Unavailable(reason)
        assert spec is not None
        names, names_from = target_class_names(ctx.target)
        return [
            (UnitRef(layer=spec.final_layer, index=i), [n], [(n,)], {"class_name": (n,)})
            for i, n in enumerate(names)
        ], {
            "class_names": names_from,
            "labels": "the class name, against the class name: the final-layer suite's only "
            "reference, so the correct label scores the maximum by construction",
            "permutation": "another class's name",
        }
    if suite == "planted":
        from bench.suites.planted import concept_phrase, planted_units

        if not ctx.target.synthetic:
            raise _Unavailable("only synthetic targets have planted units")
        planted = planted_units(ctx.target.name)
        out = []
        for p in planted:
            phrase = concept_phrase(p.concept)
            out.append((p.unit, [phrase], [(phrase,)], {"planted": (p.concept,)}))
        return out, {
            "labels": "the planted concept read as a phrase, against itself: the planted "
            "suite's reference, so the correct label scores the maximum by construction",
            "permutation": "another planted unit's concept",
        }
    raise UsageError(f"Expected a text suite among {', '.join(TEXT_SUITES)}, got {suite!r}.")


def _text_tests(
    ctx: SuiteContext,
    cfg: SanityConfig,
    tests: dict[str, MetricValues],
    verdicts: dict[str, dict[str, Any]],
    entries: dict[UnitRef, UnitEntry],
    memo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Put every text metric of ``cfg.text_suites`` through the text tests; fill ``tests``,
    ``verdicts`` and ``entries``; return the settings that say what was done."""
    import numpy as np

    from bench.suites.text import bertscore_preset, text_metric
    from metrics.sanity import TEXT_NOT_APPLICABLE, TEXT_TESTS, text_test_scores, unit_passes

    paper_presets = {"milannotations": "milan", "final-layer": "dnd", "planted": "dnd"}
    settings: dict[str, Any] = {"constant": cfg.text_constant, "suites": {}, "unavailable": {}}
    rows = text_rows(cfg.text_suites)
    for suite in cfg.text_suites:
        try:
            units, what = _text_units(ctx, suite, cfg, memo)
            if len(units) < 2:
                raise _Unavailable(
                    f"{len(units)} unit(s) with references; the permutation test needs 2"
                )
        except (_Unavailable, BenchError) as e:
            reason = e.reason if isinstance(e, _Unavailable) else f"no references: {e}"
            if not isinstance(e, _Unavailable):
                log.warning("metrics check: %s text metrics not tested: %s", suite, e)
            for row, (s_, _) in rows.items():
                if s_ == suite:
                    verdicts[row] = {t: {"applicable": False, "reason": reason} for t in tests}
                    settings["unavailable"][row] = {"reason": reason}
            continue
        preset = bertscore_preset(ctx.options, paper_presets[suite], None)
        # idf over every annotation once, as the milannotations suite computes it (milan preset)
        idf = (
            [t for *_, shown in units for t in shown["annotations"]]
            if suite == "milannotations"
            else None
        )
        suite_settings: dict[str, Any] = {
            "units": len(units),
            "bertscore_preset": preset,
            **what,
        }
        settings["suites"][suite] = suite_settings
        for u, _, _, refs in units:
            entry = entries.setdefault(u, UnitEntry(unit=u, details={"kind": "text"}))
            entry.references.update(refs)
            entry.details.setdefault("text_suites", []).append(suite)
        for row, (s_, metric) in rows.items():
            if s_ != suite:
                continue
            model: dict[str, Any] = {}

            def score(
                cands: list[str],
                refs: list[list[str]],
                metric: str = metric,
                model: dict[str, Any] = model,
                preset: str = preset,
                idf: list[str] | None = idf,
            ) -> Any:
                result = text_metric(
                    metric, cands, refs, options=ctx.options, device=ctx.device,
                    preset=preset, idf_sentences=idf,
                )  # fmt: skip
                if not result.ok:
                    raise _Unavailable(result.reason or f"{metric} is unavailable")
                model.update(result.settings)
                return result.values

            try:
                scores = text_test_scores(
                    score,
                    [x[1] for x in units],
                    [x[2] for x in units],
                    constant=cfg.text_constant,
                    seed=cfg.seed,
                )
            except _Unavailable as e:
                verdicts[row] = {t: {"applicable": False, "reason": e.reason} for t in tests}
                settings["unavailable"][row] = {"reason": e.reason}
                continue
            value_range: tuple[float, float] | None = TEXT_VALUE_RANGES[metric]
            if model.get("rescale_with_baseline"):
                value_range = None
            verdicts[row] = {}
            for test in tests:
                if test not in TEXT_TESTS:
                    verdicts[row][test] = {
                        "applicable": False,
                        "reason": TEXT_NOT_APPLICABLE[test],
                    }
                    continue
                if test not in scores:
                    verdicts[row][test] = {
                        "applicable": False,
                        "reason": "every unit's label is different: no label is more frequent",
                    }
                    continue
                t = scores[test]
                keep = ~t.same
                passes, ok = unit_passes(
                    t.correct[keep], t.perturbed[keep], value_range=value_range,
                    epsilon=cfg.epsilon,
                )  # fmt: skip
                kept = [x[0] for x, k in zip(units, keep, strict=True) if k]
                vals = tests[test].values.setdefault(row, {})
                for u, p_, d_ in zip(kept, passes, ok, strict=True):
                    if d_:
                        vals[u] = 1.0 if p_ else 0.0
                judged = int(ok.sum())
                rate = float(passes.sum()) / judged if judged else None
                verdicts[row][test] = {
                    "passed": rate is not None and rate >= cfg.threshold,
                    "rate": rate,
                    "passed_units": int(passes.sum()),
                    "judged_units": judged,
                    "undefined_units": int((~ok).sum()),
                    "same_label_units": int(t.same.sum()),
                    "mean_correct": float(np.mean(t.correct)),
                    "mean_perturbed": float(np.mean(t.perturbed)),
                }
                if test != "permutation":
                    verdicts[row][test]["label"] = t.labels[0][0]
            suite_settings.setdefault("models", {})[metric] = {
                k: model[k] for k in ("model", "model_name", "preset", "num_layers") if k in model
            }
            suite_settings.setdefault("value_ranges", {})[metric] = value_range
    if not settings["unavailable"]:
        del settings["unavailable"]
    return settings


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
    from bench.suites.sanity_rows import suite_rows

    cfg = suite.config
    rows = (
        list(FAITHFULNESS_METRICS)
        + list(text_rows(cfg.text_suites))
        + list(suite_rows(cfg.row_groups, cfg.text_suites))
    )
    methods = {
        m: MethodLabels(
            info=MethodInfo(
                name=m, version="1", kind="method", cost=MethodCost(note="a metric, not a method")
            )
        )
        for m in rows
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
