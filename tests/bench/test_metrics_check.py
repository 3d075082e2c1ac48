"""``bench metrics check``: the report card equals metrics.sanity run directly on the same units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.results import read_suite_result
from bench.suites.sanity import TEXT_SUITES, text_rows
from bench.suites.sanity_rows import ROW_GROUPS, suite_rows
from metrics.faithfulness import FAITHFULNESS_METRICS
from metrics.sanity import SANITY_TESTS, TEXT_NOT_APPLICABLE, judge, run_label_tests

TARGET = "synth.convnet"
N_IMAGES = 300
ANNOTATIONS = [
    ("red things", "red shapes", "objects that are red"),
    ("blue squares", "blue boxes", "objects"),
    ("striped patterns", "stripes", "striped green objects"),
    ("water", "the sea", "objects"),  # a generic answer, twice: the frequent label
]


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import torch

    from bench.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("metrics")
    # A small annotations.csv: the milannotations text tests without recording exemplars.
    csv = out / "annotations.csv"
    csv.write_text(
        "layer,unit,summary\n"
        + "".join(f"conv1,{u},{t}\n" for u, texts in enumerate(ANNOTATIONS) for t in texts),
        encoding="utf-8",
    )
    rc = main(
        ["metrics", "check", "--target", TARGET, "--n-images", str(N_IMAGES), "--out", str(out)]
        + ["--device", "cpu", "--annotations", str(csv)]
    )
    assert rc == 0
    return out / TARGET / "suites" / "sanity.json", str(out)


def test_report_card_equals_the_sanity_tests_run_directly(card) -> None:  # type: ignore[no-untyped-def]
    from bench.cache import Cache
    from bench.dissect import concept_table_cached
    from bench.presence import SegmentationPresence, label_reader, segmentation_presence
    from bench.probes import load_probe
    from bench.suites.base import target_info
    from bench.suites.faithfulness import pooled_activations
    from bench.suites.sanity import known_units
    from bench.targets import load_target

    path, _ = card
    result = read_suite_result(path)
    assert result.suite == "sanity" and result.run.target == TARGET
    assert set(result.methods) == set(FAITHFULNESS_METRICS) | set(text_rows()) | set(
        suite_rows(ROW_GROUPS, TEXT_SUITES)
    )
    assert [m.name for m in result.metrics] == [*SANITY_TESTS, "frequent_label"]

    cache = Cache()
    info = target_info(TARGET)
    known = known_units(info, ("planted", "final"))
    assert sum(k.kind == "planted" for k in known) == 6  # the card's planted units
    assert sum(k.kind == "final" for k in known) == 48  # one per class
    probe = load_probe("synthetic", None, options={"n_images": N_IMAGES}, cache=cache)
    source = SegmentationPresence(concept_table_cached(cache, probe))
    pres = segmentation_presence(
        [k.concept for k in known],
        source,
        extras=[{"formula": k.formula} if k.formula else None for k in known],
        reader=label_reader(probe.name),
    )
    keep = [
        i
        for i, r in enumerate(pres.readings)
        if r.parsed and 0 < pres.presence[i].sum() < pres.presence.shape[1]
    ]
    units = [known[i] for i in keep]
    assert len([u for u in result.units if u.details.get("kind") != "text"]) == len(units)
    acts = pooled_activations(
        load_target(TARGET, device="cpu", cache=cache),
        probe,
        sorted({k.unit.layer for k in units}),
        cache=cache,
        device="cpu",
    )
    a = np.stack([acts[k.unit.layer]["mean"][:, k.unit.index] for k in units]).astype(float)
    c = pres.presence[keep]
    verdicts = result.settings["verdicts"]
    summaries = {m.name: m for m in result.metrics}
    for metric, (fn, takes_alpha, value_range) in FAITHFULNESS_METRICS.items():
        na = [t for t, v in verdicts[metric].items() if v.get("applicable") is False]
        assert na == ["frequent_label"]  # the constant test already is that for presence

        def score(x, y, fn=fn, ta=takes_alpha):  # type: ignore[no-untyped-def]
            return fn(x, y, 0.005) if ta else fn(x, y)

        for o in run_label_tests(metric, score, a, c, value_range=value_range):
            v = verdicts[metric][o.test]
            assert (v["passed_units"], v["judged_units"], v["passed"]) == (
                o.passed_units,
                o.judged_units,
                o.passed,
            ), (metric, o.test)
            mean = summaries[o.test].per_method[metric].mean
            assert mean == pytest.approx(o.passed_units / o.judged_units)


def test_report_card_holds_the_text_metrics_with_the_presence_tests_not_applicable(card) -> None:  # type: ignore[no-untyped-def]
    from bench.suites.base import target_info
    from bench.suites.final_layer import target_class_names
    from metrics.sanity import text_test_scores
    from metrics.text import sentence_cosine

    path, _ = card
    result = read_suite_result(path)
    verdicts = result.settings["verdicts"]
    text = result.settings["text"]
    assert text["constant"] == "depictions"
    assert text["suites"]["milannotations"]["units"] == len(ANNOTATIONS)
    assert text["suites"]["milannotations"]["annotations"]["kind"] == "annotations.csv"
    assert text["suites"]["planted"]["units"] == 6
    assert verdicts["milannotations/bertscore"]["frequent_label"]["label"] == "objects"
    assert verdicts["milannotations/bertscore"]["constant"]["label"] == "depictions"
    for row, (suite, metric) in text_rows().items():
        per = verdicts[row]
        assert set(per) == {*SANITY_TESTS, "frequent_label"}
        for test in ("missing_labels", "extra_labels"):
            # not applicable, never a pass, with the reason
            assert per[test]["applicable"] is False and "passed" not in per[test]
            assert per[test]["reason"]
        if metric == "clip-cosine":  # no CLIP weights offline: n/a throughout, with the reason
            assert all(v["applicable"] is False for v in per.values())
            assert "CLIP" in text["unavailable"][row]["reason"]
            continue
        tested = ["permutation", "constant"] + (
            ["frequent_label"] if suite == "milannotations" else []
        )
        if suite != "milannotations":  # every class name and planted concept is different
            assert per["frequent_label"]["applicable"] is False
        for test in tested:
            v = per[test]
            assert (
                v["judged_units"] + v["same_label_units"] + v["undefined_units"]
                == (text["suites"][suite]["units"])
            ), (row, test)
            assert v["passed"] == (v["passed_units"] >= 0.9 * v["judged_units"])
    assert any(
        TEXT_NOT_APPLICABLE["missing_labels"] in v
        for v in result.settings["not_applicable"].values()
    )
    # The final-layer row equals the text tests run directly: each class's name against itself,
    # another class's name, "depictions".
    names, _ = target_class_names(target_info(TARGET))

    def cosine(c: list[str], r: list[list[str]]) -> np.ndarray:
        return np.asarray(sentence_cosine(c, r, preset="offline", device="cpu").values)

    direct = text_test_scores(
        cosine, [[n] for n in names], [[(n,)] for n in names], constant="depictions", seed=0
    )
    for test, t in direct.items():
        o = judge(test, "m", t.correct[~t.same], t.perturbed[~t.same], value_range=(-1.0, 1.0))
        v = verdicts["final-layer/sentence-cosine"][test]
        assert (v["passed_units"], v["judged_units"]) == (o.passed_units, o.judged_units)
        assert t.correct == pytest.approx(np.ones(len(names)), abs=1e-6)


def test_report_card_holds_the_other_suites_metrics(card) -> None:  # type: ignore[no-untyped-def]
    from bench.schema import Description
    from bench.suites.planted import names_concept, planted_units
    from metrics.sanity import derange

    path, _ = card
    result = read_suite_result(path)
    verdicts = result.settings["verdicts"]
    rows = suite_rows(ROW_GROUPS, TEXT_SUITES)
    assert set(result.settings["suite_rows"]) == set(ROW_GROUPS)
    known = [u for u in result.units if u.details.get("kind") in ("planted", "final")]
    for row, (suite, _) in rows.items():
        per = verdicts[row]
        assert set(per) == {*SANITY_TESTS, "frequent_label"}, row
        for test, v in per.items():
            if v.get("applicable") is False:
                assert v["reason"] and "passed" not in v, (row, test)
                continue
            assert v["passed"] == (v["passed_units"] >= 0.9 * v["judged_units"]), (row, test)
            assert v["judged_units"] + v["undefined_units"] >= 2, (row, test)
        if suite == "generated":
            # CoSy reads the concept vector "generated, not control": all four tests apply
            assert all(per[t].get("applicable", True) for t in SANITY_TESTS)
            assert per["constant"]["label"] == "depictions"
            assert all(
                per[t]["judged_units"] + per[t]["undefined_units"] == len(known)
                for t in SANITY_TESTS
            )
        elif suite in ("milannotations", "final-layer"):
            assert per["missing_labels"]["applicable"] is False
            assert "reference texts" in per["missing_labels"]["reason"]
    # a constant label ranks the classes' names in one fixed order: chance, and it must pass
    const = verdicts["final-layer/identification-top1"]["constant"]
    assert const["judged_units"] == 48 and const["passed_units"] >= 47 and const["passed"]
    assert verdicts["final-layer/identification-top1"]["permutation"]["mean_correct"] == 1.0
    assert verdicts["milannotations/identification-mrr"]["frequent_label"]["label"] == "objects"
    assert result.settings["suite_rows"]["identification"]["milannotations"]["units"] == len(
        ANNOTATIONS
    )
    # cifar-auroc: each class picks its own final-layer unit by its name
    cifar = result.settings["suite_rows"]["cifar-auroc"]
    finals = sum(u.details["kind"] == "final" for u in known)  # classes present on the probe
    assert cifar["correct_picks_own_unit"] == cifar["units"] == finals
    # planted/recovered equals the planted suite's rule run directly
    in_card = {u.unit for u in known if u.details["kind"] == "planted"}
    planted = [p for p in planted_units(TARGET) if p.unit in in_card]

    def rec(p, label):  # type: ignore[no-untyped-def]
        return names_concept(Description(unit=p.unit, label=label), p.formula)[0]

    assert all(rec(p, p.concept) for p in planted)
    perm = derange(len(planted), np.random.default_rng(0))
    v = verdicts["planted/recovered"]
    assert v["permutation"]["passed_units"] == sum(
        not rec(p, planted[perm[i]].concept) for i, p in enumerate(planted)
    )
    assert v["constant"]["passed_units"] == len(planted)  # "depictions" names no concept
