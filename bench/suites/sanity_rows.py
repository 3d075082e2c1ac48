"""The report card's rows for the metrics that are neither presence nor text metrics.

Each suite's metric is put through the four sanity tests on the card's known units, the way that
suite computes it, or marked not applicable with the reason:

* ``generated/auc``, ``generated/mad``, ``generated/p_value`` (CoSy): the unit's activations on
  ``n`` images generated from its label (the ``generated`` suite's component, prompt and
  pooling) against its activations on the probe images, the control. In NeuronEval's framework
  this is a metric of the unit's activations against a concept vector that is 1 on the generated
  images and 0 on the control images, so the label tests apply to that vector:
  ``missing_labels`` moves half of the generated images into the control set, ``extra_labels``
  moves random control images (probability ``p / (1 - p)``) into the generated set;
  ``permutation`` scores the unit on the images generated from another known unit's label
  (the same image sets, reused); ``constant`` on images generated from ``depictions``. The
  p-value is better when lower: the test asks that it rise.
* ``milannotations/identification-top1``, ``-mrr`` and ``final-layer/...``: the rank of the
  unit's own references among every unit's references (the suites' sentence encoder and
  similarity); the correct labels are the suite's ceiling pairs (milannotations: each annotation
  against the unit's other annotations) or the class name. A constant label ranks every unit's
  references in one fixed order, so it scores chance by construction; the test is still run
  (and must pass: the correct labels are far above chance).
* ``planted/recovered``: whether the label names the planted concept (the planted suite's rule);
  the correct label is the planted formula itself.
* ``cifar-auroc/auroc``, ``cifar-auroc/auprc``: the cifar-auroc suite's mechanism (for each
  class, the unit whose label is closest to the class name, by the suite's similarity, used as
  a classifier: AUROC and AUPRC of its spatial-mean activation, averaged over tied units) on the
  final-layer units, whose classes are known; a class's positives are the probe images where
  its concept is present (the held-out probe's classes have no known unit). ``permutation``
  shuffles the labels across the units (so each class picks another class's unit), ``constant``
  gives every unit ``depictions`` (every unit ties); the label tests drop or add positives of
  the class.

Tests that do not apply are "not applicable" with the reason, never a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.results import BASELINE
from bench.schema import UnitRef
from bench.suites.base import MetricValues, SuiteContext, UnitEntry

if TYPE_CHECKING:
    import numpy as np

    from bench.suites.sanity import KnownUnit, SanityConfig

log = logging.getLogger(__name__)

#: The groups of rows :func:`suite_rows` adds, in row order.
ROW_GROUPS: tuple[str, ...] = ("generated", "identification", "recovered", "cifar-auroc")
GENERATED_METRICS: tuple[str, ...] = ("auc", "mad", "p_value")
IDENTIFICATION_SUITES: tuple[str, ...] = ("milannotations", "final-layer")
IDENTIFICATION_METRICS: tuple[str, ...] = ("identification-top1", "identification-mrr")
CIFAR_METRICS: tuple[str, ...] = ("auroc", "auprc")
#: Range of each row's metric for the epsilon rule (``None``: :func:`metrics.sanity.score_scale`)
#: and whether higher is better.
RANGES: dict[str, tuple[tuple[float, float] | None, bool]] = {
    "generated/auc": ((0.0, 1.0), True),
    "generated/mad": (None, True),
    "generated/p_value": ((0.0, 1.0), False),
    "planted/recovered": ((0.0, 1.0), True),
    "cifar-auroc/auroc": ((0.0, 1.0), True),
    "cifar-auroc/auprc": ((0.0, 1.0), True),
    **{
        f"{s}/{m}": ((0.0, 1.0), True)
        for s in IDENTIFICATION_SUITES
        for m in IDENTIFICATION_METRICS
    },
}
NOT_PRESENCE = (
    "the metric compares a label's text with reference texts, not with per-image concept "
    "presence, so there are no positive labels to drop or add"
)
ALL_DIFFERENT = "every known unit's label is different: no label is more frequent"


def suite_rows(groups: tuple[str, ...], text_suites: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Card row -> (suite, metric) of the groups in ``groups`` (identification rows only for
    the suites in ``text_suites``)."""
    out: dict[str, tuple[str, str]] = {}
    for g in ROW_GROUPS:
        if g not in groups:
            continue
        if g == "generated":
            out.update({f"generated/{m}": ("generated", m) for m in GENERATED_METRICS})
        elif g == "identification":
            for s in IDENTIFICATION_SUITES:
                if s in text_suites:
                    out.update({f"{s}/{m}": (s, m) for m in IDENTIFICATION_METRICS})
        elif g == "recovered":
            out["planted/recovered"] = ("planted", "recovered")
        else:
            out.update({f"cifar-auroc/{m}": ("cifar-auroc", m) for m in CIFAR_METRICS})
    return out


class _Card:
    """Writes verdicts and per-unit pass/fail values into the card's tables."""

    def __init__(
        self, cfg: SanityConfig, tests: dict[str, MetricValues], verdicts: dict[str, Any]
    ) -> None:
        self.cfg, self.tests, self.verdicts = cfg, tests, verdicts

    def not_applicable(self, row: str, test: str, reason: str) -> None:
        self.verdicts.setdefault(row, {})[test] = {"applicable": False, "reason": reason}

    def unavailable(self, row: str, reason: str) -> None:
        self.verdicts[row] = {t: {"applicable": False, "reason": reason} for t in self.tests}

    def judge(
        self,
        row: str,
        test: str,
        units: list[UnitRef],
        correct: np.ndarray,
        perturbed: np.ndarray,
        **extra: Any,
    ) -> None:
        import numpy as np

        from metrics.sanity import unit_passes

        value_range, higher = RANGES[row]
        sign = 1.0 if higher else -1.0
        passes, ok = unit_passes(
            sign * np.asarray(correct, dtype=np.float64),
            sign * np.asarray(perturbed, dtype=np.float64),
            value_range=value_range,
            epsilon=self.cfg.epsilon,
        )
        vals = self.tests[test].values.setdefault(row, {})
        for u, p_, d_ in zip(units, passes, ok, strict=True):
            if d_:
                vals[u] = 1.0 if p_ else 0.0
        judged = int(ok.sum())
        rate = float(passes.sum()) / judged if judged else None
        self.verdicts.setdefault(row, {})[test] = {
            "passed": rate is not None and rate >= self.cfg.threshold,
            "rate": rate,
            "passed_units": int(passes.sum()),
            "judged_units": judged,
            "undefined_units": int((~ok).sum()),
            "mean_correct": _mean(correct),
            "mean_perturbed": _mean(perturbed),
            **extra,
        }


def _mean(x: Any) -> float | None:
    import numpy as np

    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def label_of(k: KnownUnit) -> str:
    """A known unit's correct label as text: the planted concept read as a phrase, the class
    name."""
    from bench.suites.planted import concept_phrase

    return concept_phrase(k.concept) if k.kind == "planted" else k.concept


def add_suite_rows(
    ctx: SuiteContext,
    cfg: SanityConfig,
    units: list[KnownUnit],
    acts: dict[str, dict[str, np.ndarray]],
    presence: np.ndarray,
    tests: dict[str, MetricValues],
    verdicts: dict[str, Any],
    entries: dict[UnitRef, UnitEntry],
    text_units: Callable[[str], tuple[list[Any], dict[str, Any]] | str],
) -> dict[str, Any]:
    """Fill the rows of ``cfg.row_groups`` (see the module docstring); return their settings.

    ``units`` are the card's known units with a defined presence (``presence[i]`` of
    ``units[i]``), ``acts`` their layers' pooled activations over the probe; ``text_units(suite)``
    a text suite's units as the card's text tests read them, or why there are none."""
    card = _Card(cfg, tests, verdicts)
    settings: dict[str, Any] = {}
    for group in ROW_GROUPS:
        if group not in cfg.row_groups:
            continue
        rows = suite_rows((group,), cfg.text_suites)
        try:
            if group == "generated":
                settings[group] = _generated(ctx, cfg, card, units, acts)
            elif group == "identification":
                settings[group] = _identification(ctx, cfg, card, entries, text_units)
            elif group == "recovered":
                settings[group] = _recovered(cfg, card, units)
            else:
                settings[group] = _cifar(ctx, cfg, card, units, acts, presence)
        except BenchError as e:
            log.warning("metrics check: %s rows not tested: %s", group, e)
            for row in rows:
                card.unavailable(row, f"could not be computed: {e}")
            settings[group] = {"unavailable": str(e)}
    return settings


# --- generated (CoSy) ---------------------------------------------------------------------------


def cosy_scores(x: np.ndarray, on: np.ndarray) -> dict[str, np.ndarray]:
    """The ``generated`` suite's metrics per row of ``x`` (``[U, M]`` activations) with ``on``
    (``bool [U, M]``) marking the generated images, the rest the control: ``auc``, ``mad``,
    ``p_value``."""
    import numpy as np

    import metrics.faithfulness as mf

    auc, _, p = mf.mann_whitney_labels(x, on)
    return {"auc": auc, "mad": mf.mad(x, on.astype(np.float64)), "p_value": p}


def generated_test_scores(
    on_label: Callable[[int, int], np.ndarray],
    on_constant: np.ndarray,
    control: np.ndarray,
    *,
    seed: int = 0,
    score: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]] = cosy_scores,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """test -> metric -> ``(correct, perturbed)`` per unit for the CoSy metrics.

    ``on_label(i, j)``: unit ``i``'s activations (``float [n]``) on the images generated from
    unit ``j``'s correct label; ``on_constant`` (``[U, n]``) on those of the constant label;
    ``control`` (``[U, N0]``) on the control images. ``score(x, on)`` gives each metric per row
    (default: :func:`cosy_scores`). The label tests move images between the samples (``on``,
    NeuronEval's positives: the generated images); ``permutation`` uses another unit's images
    (a seeded derangement), ``constant`` the constant label's."""
    import numpy as np

    from metrics.sanity import add_positives, derange, drop_positives

    units = control.shape[0]
    own = np.stack([on_label(i, i) for i in range(units)])
    n = own.shape[1]
    rng = np.random.default_rng(seed)
    on = np.zeros((units, n + control.shape[1]), dtype=bool)
    on[:, :n] = True
    x = np.concatenate([own, control], axis=1)
    perm = derange(units, rng)
    variants = {
        "missing_labels": (x, drop_positives(on, rng)),
        "extra_labels": (x, add_positives(on, rng)),
        "permutation": (
            np.concatenate([np.stack([on_label(i, perm[i]) for i in range(units)]), control], 1),
            on,
        ),
        "constant": (np.concatenate([on_constant, control], axis=1), on),
    }
    correct = score(x, on)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for test, (xt, yt) in variants.items():
        perturbed = score(xt, yt)
        out[test] = {m: (correct[m], perturbed[m]) for m in correct}
    return out


def _generated(
    ctx: SuiteContext,
    cfg: SanityConfig,
    card: _Card,
    units: list[KnownUnit],
    acts: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    import numpy as np

    from bench.suites.generated import GeneratedSuite

    gen = GeneratedSuite(strip_images=0)
    t2i, comp_info = gen._component(ctx)
    layers = list(dict.fromkeys(k.unit.layer for k in units))
    labels = [label_of(k) for k in units]
    prompts = [gen.config.prompt_for(t) for t in labels]
    constant_prompt = gen.config.prompt_for(BASELINE)
    gen_acts, _ = gen._generate(
        ctx, t2i, list(dict.fromkeys([*prompts, constant_prompt])), layers, cfg.seed
    )
    n = gen._n_images(ctx)

    def a1(i: int, prompt: str) -> np.ndarray:
        k = units[i]
        return np.asarray(gen_acts[prompt][k.unit.layer][:, k.unit.index], dtype=np.float64)

    a0 = np.stack(
        [np.asarray(acts[k.unit.layer]["mean"][:, k.unit.index], dtype=np.float64) for k in units]
    )  # [U, N0]
    per_test = generated_test_scores(
        lambda i, j: a1(i, prompts[j]),
        np.stack([a1(i, constant_prompt) for i in range(len(units))]),
        a0,
        seed=cfg.seed,
    )
    refs = [k.unit for k in units]
    for test, by_metric in per_test.items():
        for m, (correct, perturbed) in by_metric.items():
            extra: dict[str, Any] = {}
            if test == "constant":
                extra["label"] = BASELINE
            card.judge(f"generated/{m}", test, refs, correct, perturbed, **extra)
    for m in GENERATED_METRICS:
        for test in card.tests:
            if test not in per_test:
                card.not_applicable(f"generated/{m}", test, ALL_DIFFERENT)
    return {
        "units": len(units),
        "n_images": n,
        "prompt": gen.config.prompt,
        "pool": "mean",
        "seed": cfg.seed,
        "prompts": len(set(prompts)) + 1,
        "text_to_image": comp_info,
        "control": "the card's probe images",
        "labels": "the planted concept read as a phrase; the class name",
        "missing_labels": "half of the generated images moved into the control set",
        "extra_labels": "random control images moved into the generated set (p / (1 - p))",
        "permutation": "the images generated from another known unit's label",
        "constant": f"the images generated from {BASELINE!r}",
        "p_value": "lower is better: a unit passes when its p-value rises by more than epsilon",
    }


# --- identification ------------------------------------------------------------------------------


def own_rank(
    labels: np.ndarray, own: np.ndarray, references: np.ndarray, owners: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(top1, reciprocal_rank)`` per label, as the identification scores rank: label ``k``
    (embedding ``labels[k]``) against every unit's references (``references`` ``[U, D]``, the
    mean of each unit's reference embeddings), its own unit ``owners[k]`` standing for
    ``own[k]`` (its own references for this label: milannotations' leave-one-out mean). Cosines
    clipped to [-1, 1]; ties share the mean rank, top-1 is ``1 / ties`` with none higher."""
    import numpy as np

    sim = np.clip(labels @ references.T, -1.0, 1.0)
    own_s = np.clip(np.einsum("kd,kd->k", labels, own), -1.0, 1.0)
    sim[np.arange(len(labels)), np.asarray(owners, dtype=np.int64)] = own_s
    higher = (sim > own_s[:, None]).sum(axis=1).astype(np.float64)
    ties = (sim == own_s[:, None]).sum(axis=1).astype(np.float64)
    top1 = np.where(higher == 0, 1.0 / ties, 0.0)
    return top1, 1.0 / (higher + (ties + 1.0) / 2.0)


def _identification(
    ctx: SuiteContext,
    cfg: SanityConfig,
    card: _Card,
    entries: dict[UnitRef, UnitEntry],
    text_units: Callable[[str], tuple[list[Any], dict[str, Any]] | str],
) -> dict[str, Any]:
    import numpy as np

    from bench.suites.text import embed, encoder_for, identity
    from metrics.sanity import text_test_scores

    out: dict[str, Any] = {}
    enc: Any = None
    cache: dict[str, np.ndarray] = {}

    def vectors(texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            for t, e in zip(todo, embed(enc, todo), strict=True):
                cache[t] = e
        return np.stack([cache[t] for t in texts])

    for suite in IDENTIFICATION_SUITES:
        if suite not in cfg.text_suites:
            continue
        rows = [f"{suite}/{m}" for m in IDENTIFICATION_METRICS]
        found = text_units(suite)
        if isinstance(found, str) or len(found[0]) < 2:
            reason = (
                found
                if isinstance(found, str)
                else f"{len(found[0])} unit(s) with references; ranking needs 2"
            )
            for row in rows:
                card.unavailable(row, reason)
            continue
        units, what = found
        if enc is None:
            enc, _ = encoder_for(ctx.options, ctx.device, kind="sentence")
        # every unit's references, as the suite ranks them (milannotations: all annotations)
        all_refs = [
            list(shown.get("annotations") or shown.get("class_name") or ()) for *_, shown in units
        ]
        # one batch: every text the tests score (the labels are the units' own references)
        vectors(
            [t for r in all_refs for t in r]
            + [t for x in units for t in x[1]]
            + [cfg.text_constant]
        )
        ref_emb = np.stack([vectors(r).mean(axis=0) for r in all_refs])  # [U, D]

        def ranks(
            cands: list[str], refs: list[list[str]], owners: list[int], ref_emb: Any = ref_emb
        ) -> np.ndarray:
            own = np.stack([vectors(r).mean(axis=0) for r in refs])
            return np.stack(own_rank(vectors(cands), own, ref_emb, owners), axis=1)

        both: dict[str, np.ndarray] = {}  # both metrics from one ranking of the same pairs

        def metric_fn(j: int, both: dict[str, np.ndarray] = both, ranks: Any = ranks) -> Any:
            def fn(cands: list[str], refs: list[list[str]], owners: list[int]) -> np.ndarray:
                key = repr((cands, refs, owners))
                if key not in both:
                    both[key] = ranks(cands, refs, owners)
                return both[key][:, j]

            return fn

        refs_u = [u for u, *_ in units]
        for j, m in enumerate(IDENTIFICATION_METRICS):
            row = f"{suite}/{m}"
            scores = text_test_scores(
                metric_fn(j),
                [x[1] for x in units],
                [x[2] for x in units],
                constant=cfg.text_constant,
                seed=cfg.seed,
                with_owners=True,
            )
            for test in card.tests:
                if test in ("missing_labels", "extra_labels"):
                    card.not_applicable(row, test, NOT_PRESENCE)
                elif test not in scores:
                    card.not_applicable(row, test, ALL_DIFFERENT)
                else:
                    t = scores[test]
                    keep = ~t.same
                    extra: dict[str, Any] = {"same_label_units": int(t.same.sum())}
                    if test != "permutation":
                        extra["label"] = t.labels[0][0]
                    card.judge(
                        row,
                        test,
                        [u for u, k in zip(refs_u, keep, strict=True) if k],
                        t.correct[keep],
                        t.perturbed[keep],
                        **extra,
                    )
        for u, _, _, shown in units:
            entry = entries.setdefault(u, UnitEntry(unit=u, details={"kind": "text"}))
            entry.references.update(shown)
        out[suite] = {
            "units": len(units),
            "encoder": identity(enc),
            "candidates": "every unit's references (the mean of their embeddings); the own "
            "references of a milannotations label are the unit's other annotations",
            "constant": "a constant label ranks every unit's references in one fixed order: "
            "chance by construction (top-1 1/units); still tested",
            **{k: v for k, v in what.items() if k != "labels"},
        }
    return out


# --- planted: recovered --------------------------------------------------------------------------


def _recovered(cfg: SanityConfig, card: _Card, units: list[KnownUnit]) -> dict[str, Any]:
    import numpy as np

    from bench.schema import Description
    from bench.suites.planted import names_concept
    from metrics.sanity import derange

    row = "planted/recovered"
    planted = [k for k in units if k.kind == "planted" and k.formula]
    if len(planted) < 2:
        card.unavailable(row, f"{len(planted)} planted unit(s) with a defined concept; need 2")
        return {"units": len(planted)}

    def recovered(k: KnownUnit, label: str) -> float:
        ok, _ = names_concept(Description(unit=k.unit, label=label), k.formula or [])
        return 1.0 if ok else 0.0

    perm = derange(len(planted), np.random.default_rng(cfg.seed))
    correct = np.array([recovered(k, k.concept) for k in planted])
    refs = [k.unit for k in planted]
    card.judge(
        row,
        "permutation",
        refs,
        correct,
        np.array([recovered(k, planted[perm[i]].concept) for i, k in enumerate(planted)]),
    )
    card.judge(
        row,
        "constant",
        refs,
        correct,
        np.array([recovered(k, cfg.text_constant) for k in planted]),
        label=cfg.text_constant,
    )
    for test in card.tests:
        if test in ("missing_labels", "extra_labels"):
            card.not_applicable(
                row,
                test,
                "recovered reads the label's words against the planted formula, not per-image "
                "concept presence, so there are no positive labels to drop or add",
            )
        elif test not in ("permutation", "constant"):
            card.not_applicable(row, test, ALL_DIFFERENT)
    return {
        "units": len(planted),
        "labels": "the planted concept (its formula text): recovered by construction",
        "permutation": "another planted unit's concept",
    }


# --- cifar-auroc ---------------------------------------------------------------------------------


def _cifar(
    ctx: SuiteContext,
    cfg: SanityConfig,
    card: _Card,
    units: list[KnownUnit],
    acts: dict[str, dict[str, np.ndarray]],
    presence: np.ndarray,
) -> dict[str, Any]:
    import numpy as np

    from bench.suites.cifar_auroc import TIE_TOLERANCE, CifarAurocSuite, auprc_per_class
    from bench.suites.cifar_auroc import auroc_per_class as auroc_pc
    from metrics.sanity import add_positives, derange, drop_positives

    idx = [i for i, k in enumerate(units) if k.kind == "final"]
    rows = [f"cifar-auroc/{m}" for m in CIFAR_METRICS]
    if len(idx) < 2:
        for row in rows:
            card.unavailable(row, f"{len(idx)} final-layer unit(s) with a defined class; need 2")
        return {"units": len(idx)}
    final = [units[i] for i in idx]
    layer = final[0].unit.layer
    a = np.stack(
        [np.asarray(acts[layer]["mean"][:, k.unit.index], dtype=np.float64) for k in final]
    )  # [U, N]: candidate units
    pos = np.asarray(presence, dtype=np.float64)[idx] > 0.5  # [C, N]: class c = unit c's class
    names = [k.concept for k in final]
    suite = CifarAurocSuite()
    rng = np.random.default_rng(cfg.seed)
    perm = derange(len(final), rng)
    label_sets = {
        "correct": names,
        "permutation": [names[perm[j]] for j in range(len(final))],
        "constant": [BASELINE] * len(final),
    }
    texts = list(dict.fromkeys(t for labs in label_sets.values() for t in labs))
    sims, sim_settings, sim_notes = suite._similarity(ctx, names, texts)
    ensemble = np.mean(np.stack(list(sims.values())), axis=0)  # [C, texts]
    where = {t: i for i, t in enumerate(texts)}

    def chosen(labels: list[str]) -> list[np.ndarray]:
        sim = ensemble[:, [where[t] for t in labels]]  # [C, U]
        return [np.flatnonzero(s >= s.max() - TIE_TOLERANCE) for s in sim]

    def table(positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[U, C]`` AUROC and AUPRC of every unit for every class."""
        pt = positives.T
        return (
            np.stack([auroc_pc(a[j], pt) for j in range(len(final))]),
            np.stack([auprc_per_class(a[j], pt) for j in range(len(final))]),
        )

    def per_class(tab: np.ndarray, picks: list[np.ndarray]) -> np.ndarray:
        return np.array([tab[p, c].mean() for c, p in enumerate(picks)])

    base = table(pos)
    picks = chosen(names)
    correct = [per_class(t, picks) for t in base]
    variants = {
        "missing_labels": (table(drop_positives(pos, rng)), picks),
        "extra_labels": (table(add_positives(pos, rng)), picks),
        "permutation": (base, chosen(label_sets["permutation"])),
        "constant": (base, chosen(label_sets["constant"])),
    }
    refs = [k.unit for k in final]
    for test, (tabs, chosen_units) in variants.items():
        for j, m in enumerate(CIFAR_METRICS):
            extra: dict[str, Any] = {}
            if test == "constant":
                extra["label"] = BASELINE
            card.judge(
                f"cifar-auroc/{m}",
                test,
                refs,
                correct[j],
                per_class(tabs[j], chosen_units),
                **extra,
            )
    for row in rows:
        for test in card.tests:
            if test not in variants:
                card.not_applicable(row, test, ALL_DIFFERENT)
    return {
        "units": len(final),
        "layer": layer,
        "classes": "the final-layer classes; a class's positives are the probe images where its "
        "concept is present (the held-out probe's classes have no known unit)",
        "correct_picks_own_unit": int(sum(len(p) == 1 and p[0] == c for c, p in enumerate(picks))),
        **sim_settings,
        "notes": sim_notes,
    }
