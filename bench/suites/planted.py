"""``planted`` (synthetic targets): do labels name the concepts planted in units?

Some units of every synthetic target were trained to detect a chosen concept ("red",
"purple OR orange", "red AND circle", "yellow AND square AND NOT striped"), recorded in the
target's card. On those units there is ground truth, which no real-data suite has for hidden
units. Per planted unit and method:

* ``recovered`` (0/1): the label names the planted concept. A formula label (CompExp style: an
  upper-case ``AND``/``OR``/``NOT``, or a formula tree in the description's extras) must be
  *logically equivalent* to the planted formula (truth table,
  :func:`bench.formula.equivalent`), its leaves read as the world's concept words. Any
  other label must name *every concept word* of the planted formula, read with the synthetic
  world's phrase parser (:func:`bench.synth.text.parse_phrase`: plurals, synonyms and Broden
  suffixes count, "discs" is a circle, "stripy" striped); extra words are allowed. So
  NetDissect's single concept recovers a single-concept unit, and a composition needs all its
  parts named;
* the label's text similarity to the concept, read as a phrase ("red and circle"): BERTScore,
  sentence cosine and CLIP text cosine (unavailable offline) as in the other suites.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError, UsageError
from bench.formula import Formula, equivalent, from_json, json_leaves, parse, rename
from bench.schema import Description, UnitRef
from bench.suites.base import (
    MetricValues,
    Suite,
    SuiteContext,
    SuiteScores,
    TargetInfo,
    UnitEntry,
)
from bench.suites.text import TextJob, bertscore_preset, text_metrics

log = logging.getLogger(__name__)

_KEYWORD = re.compile(r"\b(AND|OR|NOT)\b")


@dataclass(frozen=True, kw_only=True, slots=True)
class PlantedConfig:
    #: BERTScore preset; ``None``: ``offline`` with offline text models, else ``dnd``.
    bertscore: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PlantedUnit:
    unit: UnitRef
    concept: str
    formula: list


def planted_units(target: str) -> list[PlantedUnit]:
    """The planted units of a synthetic target, from its card (or its recipe without one)."""
    from bench.synth.recipes import recipe
    from bench.synth.targets import load_card

    try:
        raw = load_card(target).get("planted_units") or []
        items = [(p["layer"], int(p["unit"]), p["concept"], p.get("formula")) for p in raw]
    except (BenchError, KeyError, TypeError, ValueError):
        items = [(p.layer, p.unit, p.concept, p.formula) for p in recipe(target).planted]
    out = []
    for layer, unit, concept, formula in items:
        if formula is None:
            from bench.synth.concepts import parse_formula

            formula = parse_formula(concept)
        out.append(
            PlantedUnit(unit=UnitRef(layer=layer, index=unit), concept=concept, formula=formula)
        )
    return out


def concept_phrase(concept: str) -> str:
    """A formula read as a phrase: ``red AND circle`` -> ``red and circle``."""
    return _KEYWORD.sub(lambda m: m.group(0).lower(), concept)


def _world_concept(word: str) -> str | None:
    """The world's concept a word names (``circles`` -> ``circle``), or ``None``."""
    from bench.synth.text import parse_phrase

    _, tree = parse_phrase(word)
    if tree is not None and tree[0] == "leaf":
        return str(tree[1])
    return None


def _label_formula(d: Description) -> Formula | None:
    """The formula of a formula label (its JSON tree in the extras, else its text), or ``None``
    for a free-text label. A malformed tree raises :class:`~bench.errors.FormulaError`."""
    tree = d.extras.get("formula") if isinstance(d.extras, dict) else None
    if isinstance(tree, list) and tree:
        return from_json(tree)
    if _KEYWORD.search(d.label):
        try:
            return parse(d.label)
        except BenchError:
            return None
    return None


def names_concept(d: Description, formula: list) -> tuple[bool, str]:
    """Whether description ``d`` names the planted ``formula`` (a JSON tree), and by which
    rule."""
    from bench.synth.text import parse_phrase

    planted = from_json(formula)
    try:
        found = _label_formula(d)
    except BenchError as e:
        return False, f"formula not comparable ({e})"
    if found is not None:
        world = {name: _world_concept(name) for name in set(found.leaves())}
        concepts = {name: c for name, c in world.items() if c is not None}
        if len(concepts) < len(world):
            return False, "formula with a leaf that is not a concept of the world"
        mapped = rename(found, concepts)
        try:
            return equivalent(mapped, planted), "equivalent formula"
        except BenchError as e:
            return False, f"formula not comparable ({e})"
    _, phrase_tree = parse_phrase(d.label)
    named = set(json_leaves(phrase_tree)) if phrase_tree is not None else set()
    wanted = set(planted.leaves())
    return wanted <= named, "every concept word"


class PlantedSuite(Suite[PlantedConfig]):
    """Recovery of the concepts planted in units of a synthetic target."""

    name = "planted"
    version = "1"
    text_models = ("bertscore", "sentence", "clip")
    summary = "recovery of the concepts planted in synthetic targets' units"

    def applicable(self, target: TargetInfo) -> str | None:
        if not target.synthetic:
            return "only synthetic targets have planted units (ground truth for hidden units)"
        return None

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        planted = planted_units(ctx.target.name)
        if not planted:
            raise UsageError(f"Synthetic target '{ctx.target.name}' has no planted units.")
        described = set(ctx.described_units())
        layers = {u.layer for u in described}
        units = [p for p in planted if not described or p.unit in described]
        if not units:
            raise UsageError(
                f"Suite 'planted': no method described a planted unit of '{ctx.target.name}' "
                f"({', '.join(str(p.unit) for p in planted)}); described layers: "
                f"{', '.join(sorted(layers)) or 'none'}."
            )
        recovered = MetricValues(
            name="recovered",
            value_type="binary",
            comparable_with_papers=False,
            note="ground truth of the synthetic world; no paper reports it",
            settings={
                "metric": "recovered",
                "rule": "formula labels: logically equivalent to the planted formula; other "
                "labels: every concept word of the planted formula named (synonyms and plurals "
                "read by the world's phrase parser)",
            },
        )
        details: dict[UnitRef, dict[str, Any]] = {}
        jobs: list[TextJob] = []
        for p in units:
            rules = {}
            for name, m in ctx.methods.items():
                d = m.get(p.unit)
                if d is None or not d.ok:
                    continue
                ok, rule = names_concept(d, p.formula)
                recovered.values.setdefault(name, {})[p.unit] = 1.0 if ok else 0.0
                rules[name] = rule
                jobs.append(TextJob(name, p.unit, d.label, (concept_phrase(p.concept),)))
            details[p.unit] = {"concept": p.concept, "formula": p.formula, "rules": rules}
        preset = bertscore_preset(ctx.options, "dnd", self.config.bertscore)
        metrics = [recovered] + text_metrics(
            jobs, options=ctx.options, device=ctx.device, bertscore=preset
        )
        entries = [
            UnitEntry(unit=p.unit, references={"planted": (p.concept,)}, details=details[p.unit])
            for p in units
        ]
        settings = {
            "planted_units": len(planted),
            "units": len(units),
            "bertscore_preset": preset,
            "reference": "the planted concept read as a phrase ('red AND circle' -> "
            "'red and circle')",
        }
        return SuiteScores(units=entries, metrics=metrics, settings=settings)
