"""The scoring suites: on a real run of the embedded default, and on small hand-made cases.

A real ``bench.api.run`` of the synthetic default (NetDissect and the constant baseline) is
scored with every suite; the numbers are checked against independent recomputations (the text
metrics called directly, activations from a plain forward pass, AUROC from
``metrics.classification``), the planted units against the target's card, and the statistics
against a direct computation on values written by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.api import RunConfig, run
from bench.errors import ConfigError, UnknownNameError, UsageError
from bench.results import PNG_SIGNATURE, SuiteResult, read_suite_result
from bench.schema import Description, UnitRef, dumps, write_json
from bench.suites.base import MetricValues, summarise
from bench.suites.cifar_auroc import auprc_per_class, auroc_per_class
from bench.suites.planted import concept_phrase, names_concept
from bench.suites.scoring import ScoreOptions, score_run, suite_names
from bench.suites.strips import outline, strip_file, strip_png
from metrics.classification import auroc, average_precision

TARGET = "synth.resnet"
OPTIONS = ScoreOptions(n_resamples=1000, device="cpu")
SUITES = ("milannotations", "final-layer", "cifar-auroc", "planted", "faithfulness", "generated")


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, SuiteResult]]:
    import torch

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("suites") / "run"
    result = run(RunConfig(methods=("netdissect", "depictions"), out=str(run_dir)))
    assert result.exit_code == 0
    report = score_run(run_dir, options=OPTIONS)
    assert set(report.results) == set(SUITES) and not report.skipped
    return run_dir, {name: read_suite_result(path) for name, path in report.results.items()}


def _descriptions(run_dir: Path, method: str) -> dict[UnitRef, Description]:
    from bench.schema import read_descriptions

    return {d.unit: d for d in read_descriptions(run_dir / method / "units.jsonl")}


def _unit_scores(result: SuiteResult, metric: str, method: str) -> dict[UnitRef, float]:
    return {
        u.unit: u.scores[metric][method]
        for u in result.units
        if metric in u.scores and method in u.scores[metric]
    }


# --- the run of the embedded default ------------------------------------------------------------


def test_every_suite_scores_the_run_with_baseline_ceiling_and_offline_notes(scored) -> None:
    run_dir, results = scored
    assert suite_names()[: len(SUITES)] == list(SUITES)
    for name, r in results.items():
        assert (run_dir / "suites" / f"{name}.json").is_file()
        assert r.suite == name and r.run.target == TARGET
        assert set(r.methods) == {"netdissect", "depictions"}
        assert r.methods["depictions"].kind == "baseline"
        assert r.methods["netdissect"].kind == "method"
        assert r.methods["netdissect"].cost.seconds_per_unit is not None
        assert r.offline and "not comparable with the papers" in r.offline_note
        assert r.settings["text_models"] == "offline"
        for m in r.metrics:
            if m.name == "clip-cosine":  # no offline CLIP: reported, never faked
                assert m.status == "unavailable" and "CLIP" in (m.reason or "")
                assert not m.per_method
            elif name == "faithfulness" and m.name != "parsed":
                # the constant label reads into no concept: unparsed, never scored
                assert m.ok and set(m.per_method) == {"netdissect"}
            else:
                assert m.ok and set(m.per_method) == {"netdissect", "depictions"}
                for s in m.per_method.values():
                    assert s.ci_low <= s.mean <= s.ci_high and s.group is not None
    mil = results["milannotations"]
    assert all(m.ceiling is not None for m in mil.metrics if m.ok)
    assert all(
        m.ceiling is None
        for r in results.values()
        if r.suite != "milannotations"
        for m in r.metrics
    )
    # Careful annotators (noise 0.2): NetDissect's concepts beat the constant label.
    for name in ("bertscore", "sentence-cosine"):
        per = mil.metric(name).per_method
        assert per["netdissect"].group == 1 and per["depictions"].group == 2
        assert per["netdissect"].mean > per["depictions"].mean


def test_milannotations_scores_equal_a_direct_computation(scored) -> None:
    from bench.cache import Cache
    from bench.milannotations import read_annotations_csv
    from bench.synth.annotators import synthetic_milannotations
    from metrics.text import sentence_cosine

    run_dir, results = scored
    r = results["milannotations"]
    root = synthetic_milannotations(Cache(), noise=0.2, targets=[TARGET])
    raw = read_annotations_csv(
        root / "synth.resnet-synthetic" / "annotations.csv", annotation_count=3
    )
    annotations = {UnitRef(layer=la, index=i): t for (la, i), t in raw.items()}
    nd = _descriptions(run_dir, "netdissect")
    units = [u.unit for u in r.units]
    assert units == [u for u in nd if u in annotations]  # every labelled, annotated unit
    assert all(u.references["annotations"] == annotations[u.unit] for u in r.units)
    assert {u.layer for u in units} == {"layer1", "layer2", "layer3"}  # fc is not annotated

    direct = sentence_cosine(
        [nd[u].label for u in units],
        [annotations[u] for u in units],
        preset="offline",
        device="cpu",
    )
    got = _unit_scores(r, "sentence-cosine", "netdissect")
    np.testing.assert_allclose([got[u] for u in units], direct.values, atol=1e-6)
    summary = r.metric("sentence-cosine")
    assert summary.per_method["netdissect"].mean == pytest.approx(np.mean(direct.values))
    assert summary.per_method["netdissect"].n == len(units)
    for layer, est in summary.per_method["netdissect"].per_layer.items():
        vals = [got[u] for u in units if u.layer == layer]
        assert est.n == len(vals) and est.mean == pytest.approx(np.mean(vals))

    # The ceiling: each annotation against the unit's two others, averaged over the three.
    cands, refs, owner = [], [], []
    for u in units:
        t = annotations[u]
        for i in range(len(t)):
            cands.append(t[i])
            refs.append(t[:i] + t[i + 1 :])
            owner.append(u)
    pairs = sentence_cosine(cands, refs, preset="offline", device="cpu").values
    per_unit = {u: np.mean([v for o, v in zip(owner, pairs, strict=True) if o == u]) for u in units}
    assert summary.ceiling is not None
    assert summary.ceiling.mean == pytest.approx(np.mean(list(per_unit.values())), abs=1e-6)
    assert summary.ceiling.note and set(summary.ceiling.per_layer) == {"layer1", "layer2", "layer3"}


def test_final_layer_references_are_the_class_names(scored) -> None:
    from bench.synth.targets import load_card
    from metrics.text import bertscore

    run_dir, results = scored
    r = results["final-layer"]
    names = load_card(TARGET)["class_names"]
    assert [u.unit for u in r.units] == [UnitRef(layer="fc", index=i) for i in range(len(names))]
    assert [u.references["class_name"][0] for u in r.units] == names
    nd = _descriptions(run_dir, "netdissect")
    some = [r.units[i].unit for i in (0, 7, 30)]
    direct = bertscore(
        [nd[u].label for u in some], [names[u.index] for u in some], preset="offline", device="cpu"
    )
    got = _unit_scores(r, "bertscore", "netdissect")
    np.testing.assert_allclose([got[u] for u in some], direct.values, atol=1e-6)
    assert r.settings["class_names"]["kind"] == "target"
    assert r.metric("bertscore").settings["preset"] == "offline"


def test_planted_units_come_from_the_card_and_recovery_follows_the_labels(scored) -> None:
    from bench.synth.targets import load_card

    run_dir, results = scored
    r = results["planted"]
    card = load_card(TARGET)["planted_units"]
    expected = {UnitRef(layer=p["layer"], index=p["unit"]): p["concept"] for p in card}
    assert {u.unit: u.references["planted"][0] for u in r.units} == expected
    nd = _descriptions(run_dir, "netdissect")
    got = _unit_scores(r, "recovered", "netdissect")
    for unit, concept in expected.items():
        # NetDissect gives one concept name: it recovers exactly the one-concept units it names.
        assert got[unit] == float(nd[unit].label == concept), (unit, nd[unit].label, concept)
    assert set(_unit_scores(r, "recovered", "depictions").values()) == {0.0}
    rec = r.metric("recovered")
    assert rec.value_type == "binary"
    assert rec.per_method["netdissect"].mean == pytest.approx(np.mean(list(got.values())))
    assert any(got.values()), "NetDissect should recover some single-concept planted unit"


def test_cifar_auroc_equals_a_hand_computation(scored) -> None:
    import torch

    from bench.synth.probes import SyntheticHeldoutProbe
    from bench.targets import load_target
    from metrics.text import load_sentence_encoder

    run_dir, results = scored
    r = results["cifar-auroc"]
    assert r.settings["layer"] == "layer3"  # the last layer before fc, as DnD's ResNet-50 layer4
    assert "stand in for CIFAR" in r.offline_note
    probe = SyntheticHeldoutProbe(n_images=1000)
    target = load_target(TARGET)
    acts = []
    with torch.no_grad():
        feats: list[torch.Tensor] = []
        handle = target.module("layer3").register_forward_hook(
            lambda m, i, o: feats.append(o.mean(dim=(2, 3)))
        )
        try:
            for start in range(0, len(probe), 250):
                x = torch.stack(
                    [
                        target.preprocessing.transform(probe.load_image(i), fixed_geometry=True)
                        for i in range(start, min(len(probe), start + 250))
                    ]
                )
                target.model(x)
        finally:
            handle.remove()
        acts = torch.cat(feats).numpy()
    labels = np.asarray(probe.labels)
    nd = {
        u: d.label for u, d in _descriptions(run_dir, "netdissect").items() if u.layer == "layer3"
    }
    enc = load_sentence_encoder("offline", "cpu")
    units = list(nd)
    lab_emb = enc.encode([nd[u] for u in units])
    lab_emb = lab_emb / np.linalg.norm(lab_emb, axis=1, keepdims=True)
    assert [c.name for c in r.classes] == probe.class_names
    for c_index, cls in enumerate(r.classes):
        match = cls.per_method["netdissect"]
        cemb = enc.encode([cls.name])[0]
        sims = lab_emb @ (cemb / np.linalg.norm(cemb))
        best = sims.max()
        assert match.similarity == pytest.approx(best, abs=1e-5)
        assert set(match.units) == {u for u, s in zip(units, sims, strict=True) if s >= best - 1e-5}
        y = labels == c_index
        au = np.mean([auroc(acts[:, u.index], y) for u in match.units])
        ap = np.mean([average_precision(acts[:, u.index], y) for u in match.units])
        assert match.scores["auroc-heldout"] == pytest.approx(au, abs=1e-4)
        assert match.scores["auprc-heldout"] == pytest.approx(ap, abs=1e-4)
        # The constant label ties every unit of the layer.
        assert len(cls.per_method["depictions"].units) == acts.shape[1]
    per = r.metric("auroc-heldout").per_method
    assert per["netdissect"].mean > per["depictions"].mean
    assert per["netdissect"].n == len(r.classes) and not per["netdissect"].per_layer


def test_exemplar_strips_are_written_once_and_results_are_deterministic(scored) -> None:
    from PIL import Image

    run_dir, results = scored
    for r in results.values():
        for u in r.units:
            assert u.exemplars == f"../exemplars/{strip_file(u.unit)}"
            data = (run_dir / "suites" / u.exemplars).resolve().read_bytes()
            assert data.startswith(PNG_SIGNATURE)
    img = Image.open(run_dir / "exemplars" / "layer1-3.png")
    # 6 exemplars of 64 px, enlarged twice, 2 px apart.
    assert img.size == (6 * 128 + 5 * 2, 128)
    before = {p.name: p.read_bytes() for p in (run_dir / "suites").iterdir()}
    strips = {p.name: p.stat().st_mtime_ns for p in (run_dir / "exemplars").iterdir()}
    score_run(run_dir, ["planted", "final-layer"], options=OPTIONS)
    for name in ("planted.json", "final-layer.json"):
        assert (run_dir / "suites" / name).read_bytes() == before[name]
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "exemplars").iterdir()} == strips


def test_no_strips_when_the_recorded_evidence_is_gone(scored, tmp_path: Path) -> None:
    import shutil

    run_dir, _ = scored
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("exemplars", "suites"))
    empty = ScoreOptions(n_resamples=1000, device="cpu", cache_dir=str(tmp_path / "empty"))
    report = score_run(copy, ["final-layer"], options=empty)
    r = read_suite_result(report.results["final-layer"])
    assert all(u.exemplars is None for u in r.units)
    assert not (copy / "exemplars").exists()  # nothing re-recorded for a picture


# --- choices and errors --------------------------------------------------------------------------


def _fake_run(run_dir: Path, target: str, descriptions: list[Description]) -> Path:
    """A run directory as bench.api.run writes it, with depictions' descriptions only."""
    from bench.schema import append_descriptions

    write_json(
        run_dir / "run.json",
        {
            "schema_version": 1,
            "run_id": "0123456789ab",
            "status": "complete",
            "config": {
                "target": target,
                "probe": "broden",
                "layers": ["layer4", "fc"],
                "methods": [{"name": "depictions", "version": "1", "config": {"label": "x"}}],
                "device": "cpu",
                "seed": 0,
            },
            "provenance": {},
        },
    )
    (run_dir / "depictions").mkdir(parents=True)
    append_descriptions(run_dir / "depictions" / "units.jsonl", descriptions)
    return run_dir


def test_suites_that_do_not_apply_are_errors_when_asked_for_and_skipped_otherwise(
    tmp_path: Path,
) -> None:
    units = [Description(unit=UnitRef(layer="fc", index=i), label="x") for i in range(5)]
    run_dir = _fake_run(tmp_path / "run", "resnet50", units)
    with pytest.raises(UsageError, match="AlexNet, ResNet-152, BigGAN and DINO"):
        score_run(run_dir, ["milannotations"], options=OPTIONS)
    with pytest.raises(UsageError, match="only synthetic targets"):
        score_run(run_dir, ["planted"], options=OPTIONS)
    with pytest.raises(UnknownNameError, match="Did you mean 'milannotations'"):
        score_run(run_dir, ["milanotations"], options=OPTIONS)
    with pytest.raises(ConfigError, match="protocl"):
        score_run(
            run_dir,
            ["milannotations"],
            options=OPTIONS,
            suite_config={"milannotations": {"protocl": "dnd"}},
        )
    with pytest.raises(UsageError, match="not among the suites"):
        score_run(run_dir, ["final-layer"], options=OPTIONS, suite_config={"planted": {}})
    # Automatic choice: final-layer runs on text alone; cifar-auroc needs weights (offline here)
    # and CIFAR, faithfulness weights and a probe, generated Stable Diffusion, so they are
    # skipped with the reason; the others do not apply.
    report = score_run(run_dir, options=OPTIONS)
    assert set(report.results) == {"final-layer"}
    assert set(report.skipped) == {"cifar-auroc", "faithfulness", "generated"}
    r = read_suite_result(report.results["final-layer"])
    assert [u.unit.index for u in r.units] == list(range(5))
    assert r.units[0].references["class_name"] == ("tench",)
    # The run's own depictions is the baseline (no constant added); no evidence, no strips.
    assert set(r.methods) == {"depictions"} and r.units[0].exemplars is None


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="offline"):
        ScoreOptions(text="online")
    with pytest.raises(ConfigError, match="resamples"):
        ScoreOptions(n_resamples=10)


# --- statistics, classifiers, rules, pictures ---------------------------------------------------


def test_summary_means_intervals_groups_ceiling_and_layers() -> None:
    units = [UnitRef(layer=la, index=i) for la in ("a", "b") for i in range(20)]
    rng = np.random.default_rng(1)
    good = {u: 0.8 + 0.05 * rng.standard_normal() for u in units}
    same = {u: v + 1e-3 * rng.standard_normal() for u, v in good.items()}
    bad = {u: 0.2 + 0.05 * rng.standard_normal() for u in units}
    mv = MetricValues(
        name="m",
        values={"good": good, "same": same, "bad": bad},
        ceiling={u: 0.9 for u in units},
        ceiling_note="c",
    )
    layer_of = {u: u.layer for u in units}
    s = summarise(mv, ["bad", "good", "same"], units, layer_of, OPTIONS)
    assert s.per_method["good"].mean == pytest.approx(np.mean(list(good.values())))
    assert s.per_method["good"].n == 40
    assert {s.per_method[m].group for m in ("good", "same")} == {1}
    assert s.per_method["bad"].group == 2 and s.per_method["bad"].p_vs_best < 0.01
    assert s.per_method["good"].per_layer["a"].mean == pytest.approx(
        np.mean([good[u] for u in units if u.layer == "a"])
    )
    assert s.ceiling is not None and s.ceiling.mean == pytest.approx(0.9)
    assert s.ceiling.ci_low == pytest.approx(0.9) and set(s.ceiling.per_layer) == {"a", "b"}
    # A method missing a unit is scored on its own units; groups use the common ones.
    del mv.values["bad"][units[0]]
    s = summarise(mv, ["bad", "good", "same"], units, layer_of, OPTIONS)
    assert s.per_method["bad"].n == 39 and s.settings["groups_over_items"] == 39
    # Same seed, same numbers.
    assert dumps(s.to_json()) == dumps(
        summarise(mv, ["bad", "good", "same"], units, layer_of, OPTIONS).to_json()
    )
    binary = MetricValues(name="r", value_type="binary", values={"x": {u: 1.0 for u in units}})
    sb = summarise(binary, ["x"], units, layer_of, OPTIONS)
    assert sb.per_method["x"].mean == 1.0 and sb.value_type == "binary"
    na = summarise(
        MetricValues(name="c", status="unavailable", reason="no CLIP"),
        ["x"],
        units,
        layer_of,
        OPTIONS,
    )
    assert na.status == "unavailable" and na.reason == "no CLIP" and not na.per_method


def test_vectorised_auroc_and_auprc_equal_the_metric_functions() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 1)  # many ties
    scores[:30] = 0.0  # a ReLU's zeros
    classes = rng.integers(0, 5, size=200)
    positives = classes[:, None] == np.arange(6)[None, :]  # class 5 has no positive
    au = auroc_per_class(scores, positives)
    ap = auprc_per_class(scores, positives)
    for c in range(5):
        assert au[c] == pytest.approx(auroc(scores, positives[:, c]), abs=1e-12)
        assert ap[c] == pytest.approx(average_precision(scores, positives[:, c]), abs=1e-12)
    assert math.isnan(au[5]) and math.isnan(ap[5])


@pytest.mark.parametrize(
    ("label", "concept", "expected"),
    [
        ("red", "red", True),
        ("red things", "red", True),
        ("Red circles", "red AND circle", True),
        ("round red shapes", "red AND circle", True),  # "round" reads as circle
        ("red", "red AND circle", False),
        ("circle AND red", "red AND circle", True),  # formula: equivalent
        ("red OR circle", "red AND circle", False),  # formula: all words, not equivalent
        ("purple or orange objects", "purple OR orange", True),
        ("purple objects", "purple OR orange", False),
        ("yellow squares without stripes", "yellow AND square AND NOT striped", True),
        ("yellow AND NOT striped AND square", "yellow AND square AND NOT striped", True),
        ("yellow AND square", "yellow AND square AND NOT striped", False),
        ("depiction", "red", False),
    ],
)
def test_planted_recovery_rule(label: str, concept: str, expected: bool) -> None:
    from bench.synth.concepts import parse_formula

    d = Description(unit=UnitRef(layer="l", index=0), label=label)
    assert names_concept(d, parse_formula(concept))[0] is expected


def test_planted_recovery_reads_a_compexp_formula_tree() -> None:
    from bench.synth.concepts import parse_formula

    tree = ["and", ["leaf", "circle"], ["leaf", "red-c"]]  # Broden colour suffix
    d = Description(
        unit=UnitRef(layer="l", index=0), label="circle AND red", extras={"formula": tree}
    )
    assert names_concept(d, parse_formula("red AND circle")) == (True, "equivalent formula")
    assert (
        concept_phrase("yellow AND square AND NOT striped") == "yellow and square and not striped"
    )


def test_strip_outlines_the_mask_and_is_deterministic() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    edge = outline(mask)
    assert edge.sum() == 12 and not edge[3:5, 3:5].any() and edge[2, 2:6].all()
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    masks = np.stack([mask[None], np.zeros((1, 8, 8), dtype=bool)]).astype(np.uint8)
    png = strip_png(images, masks, tile=8)
    assert png == strip_png(images, masks, tile=8) and png.startswith(PNG_SIGNATURE)
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(png)))
    assert pixels.shape == (8, 8 * 2 + 2, 3)
    assert (pixels[2, 2] == (0, 255, 255)).all() and (pixels[4, 4] == 0).all()
    assert (pixels[:, 8:10] == 255).all()  # the gap
    assert not (pixels[:, 10:] == (0, 255, 255)).all(axis=-1).any()  # empty mask: no outline
    assert strip_file(UnitRef(layer="features.0", index=3)) == "features.0-3.png"
    odd = strip_file(UnitRef(layer="a/b", index=1))
    assert "/" not in odd and odd != strip_file(UnitRef(layer="a_b", index=1))


def test_faithfulness_reads_the_recorded_evidence_and_matches_a_forward_pass(scored) -> None:
    from bench.cache import Cache
    from bench.dissect import concept_table_cached
    from bench.presence import SegmentationPresence, label_reader, segmentation_presence
    from bench.probes import load_probe
    from bench.suites.faithfulness import pooled_activations
    from bench.targets import load_target
    from metrics.faithfulness import auroc as faith_auroc

    run_dir, results = scored
    r = results["faithfulness"]
    assert r.settings["activations_from"] == "the run's recorded evidence"
    labels = r.settings["labels"]
    assert labels["depictions"]["unparsed"] == labels["depictions"]["units"] == len(r.units)
    assert r.metric("parsed").per_method["depictions"].mean == 0.0
    # the same AUROC from an independent forward pass over the probe
    # The suite file names the cache by its last part only (publishable); the run used the
    # session's cache (BENCH_CACHE_DIR, set by conftest).
    cache = Cache()
    config = r.run.config
    probe = load_probe(config["probe"], None, options=config["probe_options"], cache=cache)
    source = SegmentationPresence(concept_table_cached(cache, probe))
    target = load_target(TARGET, device="cpu", cache=cache)
    descriptions = _descriptions(run_dir, "netdissect")
    checked = 0
    for u in r.units[:12]:
        value = u.scores.get("auroc", {}).get("netdissect")
        if value is None:
            continue
        acts = pooled_activations(target, probe, [u.unit.layer], cache=cache, device="cpu")
        d = descriptions[u.unit]
        pres = segmentation_presence(
            [d.label], source, extras=[d.extras], reader=label_reader(probe.name)
        )
        a = acts[u.unit.layer]["mean"][:, u.unit.index]
        assert value == pytest.approx(float(faith_auroc(a, pres.presence[0])[0]), abs=1e-3)
        checked += 1
    assert checked >= 5


def test_ceiling_normalised_scores_by_hand() -> None:
    from bench.results import MetricSummary
    from metrics.stats import ceiling_normalised

    assert ceiling_normalised(0.6, 0.4, 0.9) == pytest.approx(0.4)
    assert ceiling_normalised(0.4, 0.4, 0.9) == 0.0
    assert ceiling_normalised(0.3, 0.4, 0.9) == pytest.approx(-0.2)
    assert ceiling_normalised(0.6, 0.5, 0.5) is None  # no room between baseline and ceiling
    assert ceiling_normalised(0.6, 0.5, 0.4) is None  # ceiling below the constant label
    assert ceiling_normalised(0.2, 0.4, 0.1, higher_is_better=False) == pytest.approx(2 / 3)

    units = [UnitRef(layer=la, index=i) for la in ("a", "b") for i in range(2)]
    # a: method 0.6, 0.8; depictions 0.4, 0.4; ceiling 0.9, 0.9 -> (0.7-0.4)/(0.9-0.4) = 0.6
    # b: method 0.5, 0.5; depictions 0.5, 0.3; ceiling 0.6, 0.8 -> (0.5-0.4)/(0.7-0.4) = 1/3
    method = dict(zip(units, [0.6, 0.8, 0.5, 0.5], strict=True))
    depictions = dict(zip(units, [0.4, 0.4, 0.5, 0.3], strict=True))
    ceiling = dict(zip(units, [0.9, 0.9, 0.6, 0.8], strict=True))
    mv = MetricValues(
        name="m", values={"x": method, "depictions": depictions}, ceiling=ceiling, ceiling_note="c"
    )
    s = summarise(mv, ["x", "depictions"], units, {u: u.layer for u in units}, OPTIONS)
    x = s.per_method["x"]
    # overall: (0.6 - 0.4) / (0.8 - 0.4)
    assert x.normalised == pytest.approx(0.5)
    assert x.normalised_per_layer == pytest.approx({"a": 0.6, "b": 1 / 3})
    assert s.per_method["depictions"].normalised == 0.0
    assert "normalised" in s.settings
    again = MetricSummary.from_json(s.to_json())
    assert again.per_method["x"].normalised == pytest.approx(0.5)
    assert again.per_method["x"].normalised_per_layer == pytest.approx({"a": 0.6, "b": 1 / 3})
    # No ceiling, or no depictions: no normalised scores.
    mv.ceiling = None
    s = summarise(mv, ["x", "depictions"], units, {u: u.layer for u in units}, OPTIONS)
    assert (
        s.per_method["x"].normalised is None and "normalised" not in s.to_json()["per_method"]["x"]
    )
