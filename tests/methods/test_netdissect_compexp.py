"""The netdissect and compexp methods: planted-unit recovery on the synthetic targets, runs from
the command line on the embedded default and on a Broden directory, config and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.api import describe_cached
from bench.cache import Cache
from bench.cli import main
from bench.errors import ConfigError, RequirementError
from bench.evidence import NETDISSECT_QUANTILE
from bench.formula import equivalent, from_json, parse
from bench.record import record_cached
from bench.registry import METHODS, PROBES
from bench.schema import UnitRef, read_descriptions
from bench.synth.recipes import RECIPES
from bench.synth.targets import load_card
from bench.targets import load_target
from bench.testing import tiny_evidence
from methods.base import MethodContext
from methods.compexp import CompExp, CompExpAnalysis
from methods.netdissect import NetDissect


@pytest.fixture(scope="module")
def cache() -> Cache:
    # The session's cache (conftest points BENCH_CACHE_DIR at a private directory): recording
    # with the runner's settings lets the command-line test below reuse these records.
    return Cache()


def synthetic_evidence(cache: Cache, name: str):
    """Every layer of ``name`` on the synthetic probe, recorded as ``bench run`` records it."""
    return record_cached(
        cache, load_target(name), PROBES.get("synthetic")(None), None, store_maps=True
    )


def planted_descriptions(cache: Cache, name: str):
    planted = load_card(name)["planted_units"]
    ev = synthetic_evidence(cache, name)
    units = [UnitRef(layer=p["layer"], index=p["unit"]) for p in planted]
    ctx = MethodContext(cache=cache)
    nd = NetDissect().describe(units, ev, ctx)
    ce = CompExp().describe(units, ev, ctx)
    return planted, nd, ce


def split_planted(planted):
    singles = [p for p in planted if len(from_json(p["formula"]).leaves()) == 1]
    disjunctions = [p for p in planted if p["formula"][0] == "or"]
    conjunctions = [p for p in planted if p not in singles and p not in disjunctions]
    return singles, conjunctions, disjunctions


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_planted_units_are_recovered(cache: Cache, name: str) -> None:
    """NetDissect names every single-concept planted unit's concept; CompExp (beam 5, length 3)
    finds a formula equivalent to every planted conjunction (AND, AND NOT)."""
    planted, nd, ce = planted_descriptions(cache, name)
    singles, conjunctions, _ = split_planted(planted)
    assert singles
    for p, d in zip(planted, nd, strict=True):
        if p in singles:
            assert d.ok and d.label == p["concept"], (p, d.label, d.score)
    for p, d in zip(planted, ce, strict=True):
        if p in conjunctions:
            found = parse(d.label)
            assert equivalent(found, from_json(p["formula"])), (p["concept"], d.label, d.score)
            assert from_json(d.extras["formula"]) == found
            assert d.score >= d.extras["best_single_iou"] and d.extras["no_concept"] is False
    assert sum(len(split_planted(load_card(n)["planted_units"])[1]) for n in RECIPES) >= 4


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_planted_disjunctions_are_recovered(cache: Cache, name: str) -> None:
    """CompExp (beam 5, length 3) finds every planted OR unit's disjunction (two of the probe's
    rare colours, see bench/data/synth/README.md)."""
    planted, _, ce = planted_descriptions(cache, name)
    _, _, disjunctions = split_planted(planted)
    assert disjunctions
    for p, d in zip(planted, ce, strict=True):
        if p in disjunctions:
            assert equivalent(parse(d.label), from_json(p["formula"])), (p["concept"], d.label)


def test_netdissect_output_fields(cache: Cache) -> None:
    _, nd, _ = planted_descriptions(cache, "synth.convnet")
    for d in nd:
        ex = d.extras
        assert d.score_name == "iou" and 0.0 <= d.score <= 1.0
        assert ex["interpretable"] == (d.score > 0.04)
        assert ex["convention"] == "lite" and ex["no_concept"] is False
        # The overall best is the best of the per-category bests.
        best = max(ex["per_category"].values(), key=lambda v: v["iou"])
        assert best["label"] == d.label and best["iou"] == pytest.approx(d.score)
        assert ex["per_category"][ex["category"]]["label"] == d.label
        assert "-" not in d.label or not d.label.endswith(("-c", "-s"))


def test_original_convention_never_scores_higher(cache: Cache) -> None:
    ev = synthetic_evidence(cache, "synth.resnet")
    units = [UnitRef(layer="layer3", index=i) for i in range(ev.layer("layer3").num_units)]
    ctx = MethodContext(cache=cache)
    lite = NetDissect().describe(units, ev, ctx)
    orig = NetDissect(convention="original").describe(units, ev, ctx)
    assert all(o.score <= li.score + 1e-12 for o, li in zip(orig, lite, strict=True))
    assert any(o.score < li.score - 1e-6 for o, li in zip(orig, lite, strict=True))


def test_analysis_preset_and_config_errors() -> None:
    assert (CompExpAnalysis().config.beam_size, CompExpAnalysis().config.max_length) == (10, 10)
    assert (CompExp().config.beam_size, CompExp().config.max_length) == (5, 3)
    assert set(METHODS.names()) >= {"netdissect", "compexp", "compexp-analysis"}
    with pytest.raises(ConfigError, match="convention"):
        NetDissect(convention="fast")
    with pytest.raises(ConfigError, match="beam_size"):
        CompExp(beam_size=0)
    with pytest.raises(ConfigError, match="length_penalty"):
        CompExp(length_penalty=1.5)


def test_needs_maps_and_segmentations(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    units = [UnitRef(layer="conv", index=0)]
    ctx = MethodContext(cache=cache)
    without_maps = tiny_evidence(cache)
    with pytest.raises(RequirementError, match="maps"):
        NetDissect().describe(units, without_maps, ctx)
    ev = tiny_evidence(cache, store_maps=True)
    ev.probe.has_segmentations = False  # an instance attribute shadows the class's
    with pytest.raises(RequirementError, match="segmentations"):
        CompExp().describe(units, ev, ctx)


def test_plateaus_at_the_threshold_give_empty_masks(tmp_path: Path) -> None:
    """The conformance kit's colour detectors output one constant value on their colour, so the
    top-0.5% quantile equals the maximum and, as in NetDissect, nothing lies strictly above it:
    every IoU is 0. Such a unit gets the "no concept" record (NetDissect-Lite gives no label,
    CompExp's original ``NONE``), not the first concept (``red``), which an argmax over an
    all-zero row (NetDissect) or the best single concept of an empty beam (CompExp) would pick."""
    from methods.compexp import NO_CONCEPT_LABEL as COMPEXP_NONE
    from methods.netdissect import NO_CONCEPT_LABEL

    cache = Cache(tmp_path)
    ev = tiny_evidence(cache, store_maps=True)
    le = ev.layer("conv")
    assert (le.threshold(NETDISSECT_QUANTILE)[:3] == le.pooled_max[:, :3].max(axis=0)).all()
    units = [UnitRef(layer="conv", index=i) for i in range(3)]
    out, _ = describe_cached(NetDissect(), units, ev, MethodContext(cache=cache))
    for d in out:
        assert d.ok and d.score == 0.0 and d.label == NO_CONCEPT_LABEL
        assert d.extras["no_concept"] is True and d.extras["interpretable"] is False
        assert d.extras["unit_area"] == 0 and d.extras["concept"] is None
        assert "never exceeds its threshold" in d.extras["reason"]
    for method in (CompExp(), CompExpAnalysis()):
        out, _ = describe_cached(method, units, ev, MethodContext(cache=cache))
        for d in out:
            assert d.ok and d.score == 0.0 and d.label == COMPEXP_NONE, (method.name, d.label)
            assert d.extras["no_concept"] is True and d.extras["formula"] is None
            assert d.extras["best_single"] is None and d.extras["unit_area"] == 0
            assert "never exceeds its threshold" in d.extras["reason"]


def test_cli_runs_on_the_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    synthetic_evidence(Cache(), "synth.resnet")  # recorded once per session
    rc = main(["run", "--methods", "netdissect,compexp", "--out", str(out)])
    assert rc == 0
    assert "recording: from cache" in capsys.readouterr().out
    nd = [
        d for d in read_descriptions(out / "netdissect" / "units.jsonl") if d.unit.layer == "layer3"
    ]
    ce = read_descriptions(out / "compexp" / "units.jsonl")
    assert len(nd) == 64 and len(ce) == 16 + 32 + 64 + 48
    assert all(d.ok for d in nd + ce)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["record"]["maps"] is True
    labels = {d.unit.index: d.label for d in nd}
    assert labels[14] == "circle" and labels[27] == "star"


def test_cli_runs_on_a_broden_directory(tmp_path: Path) -> None:
    from bench.synth.broden_export import write_broden

    root = tmp_path / "broden"
    root.mkdir()
    write_broden(root, n_images=60, seed=11)
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            "--methods",
            "netdissect,compexp",
            "--target",
            "synth.convnet",
            "--layers",
            "conv2",
            "--probe",
            "broden",
            "--probe-root",
            str(root),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    nd = read_descriptions(out / "netdissect" / "units.jsonl")
    assert len(nd) == 48 and all(d.ok for d in nd)
    # The real-Broden default categories: object, part, scene, texture, color (those present).
    cats = set(nd[0].extras["per_category"])
    assert cats == {"object", "scene", "color"}
    assert {d.label for d in nd} & {"blue", "yellow", "red", "green", "orange", "purple"}
