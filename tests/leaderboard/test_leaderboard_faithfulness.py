"""The leaderboard's metric report card, the marks on failing metrics' columns, the
ceiling-normalised columns, and the faithfulness suite's table and unit-page distribution plot."""

from __future__ import annotations

import re
from pathlib import Path

from bench.results import (
    Ceiling,
    Estimate,
    MethodCost,
    MethodInfo,
    MethodScore,
    MetricSummary,
    RunIdentity,
    SuiteResult,
    UnitResult,
    suite_result_path,
    write_suite_result,
)
from bench.schema import UnitRef
from leaderboard.build import build

TARGET = "synth.resnet"
HOSTILE = "<img src=x onerror=alert(1)>"


def _info(name: str, kind: str = "method") -> MethodInfo:
    return MethodInfo(name=name, version="1", kind=kind, cost=MethodCost(note="n/a"))  # type: ignore[arg-type]


def _score(mean: float, **kw: object) -> MethodScore:
    return MethodScore(mean=mean, ci_low=mean - 0.1, ci_high=mean + 0.1, n=4, group=1, **kw)  # type: ignore[arg-type]


def sanity_card() -> SuiteResult:
    units = [UnitRef(layer="fc", index=i) for i in range(4)]
    verdict = {
        "auroc": {
            "missing_labels": {"passed": False, "rate": 0.5, "passed_units": 2,
                               "judged_units": 4, "undefined_units": 0},
            "extra_labels": {"passed": True, "rate": 1.0, "passed_units": 4,
                             "judged_units": 4, "undefined_units": 0},
        },
        "f1": {
            "missing_labels": {"passed": True, "rate": 1.0, "passed_units": 4,
                               "judged_units": 4, "undefined_units": 0},
            "extra_labels": {"passed": True, "rate": 1.0, "passed_units": 4,
                             "judged_units": 4, "undefined_units": 0},
        },
    }  # fmt: skip
    na = {"applicable": False, "reason": "a text metric compares texts"}
    # text metrics: the presence tests do not apply; milannotations' BERTScore fails the
    # permutation test, final-layer's sentence cosine passes it
    verdict["milannotations/bertscore"] = {
        "missing_labels": na, "extra_labels": na,
        "permutation": {"passed": False, "rate": 0.75, "passed_units": 3, "judged_units": 4,
                        "undefined_units": 0, "same_label_units": 0},
    }  # fmt: skip
    verdict["final-layer/sentence-cosine"] = {
        "missing_labels": na, "extra_labels": na,
        "permutation": {"passed": True, "rate": 1.0, "passed_units": 4, "judged_units": 4,
                        "undefined_units": 0, "same_label_units": 0},
    }  # fmt: skip
    per_unit = {
        "missing_labels": {"auroc": [1.0, 1.0, 0.0, 0.0], "f1": [1.0] * 4},
        "extra_labels": {"auroc": [1.0] * 4, "f1": [1.0] * 4},
        "permutation": {
            "milannotations/bertscore": [1.0, 1.0, 1.0, 0.0],
            "final-layer/sentence-cosine": [1.0] * 4,
        },
    }
    metrics = tuple(
        MetricSummary(
            name=test,
            value_type="binary",
            settings={"test": test, "threshold": 0.9, "epsilon": 0.001},
            per_method={m: _score(sum(v) / 4) for m, v in per_unit[test].items()},
        )
        for test in ("missing_labels", "extra_labels", "permutation")
    )
    return SuiteResult(
        run=RunIdentity(run_id=f"metrics-check-{TARGET}", target=TARGET, probe="synthetic"),
        suite="sanity",
        methods={m: _info(m) for m in verdict},
        metrics=metrics,
        units=tuple(
            UnitResult(
                unit=u,
                references={"class_name": (f"class {u.index}",)},
                scores={t: {m: v[u.index] for m, v in per_unit[t].items()} for t in per_unit},
            )
            for u in units
        ),
        settings={"verdicts": verdict, "units": {"final": 4}},
    )


def faithfulness_result() -> SuiteResult:
    units = [UnitRef(layer="layer1", index=i) for i in range(2)]
    dist = {"edges": [0.0, 0.5, 1.0], "concept": [1, 3], "other": [5, 1]}
    return SuiteResult(
        run=RunIdentity(run_id="r1", target=TARGET, probe="synthetic"),
        suite="faithfulness",
        methods={"netdissect": _info("netdissect"), "depictions": _info("depictions", "baseline")},
        metrics=(
            MetricSummary(name="auroc", per_method={"netdissect": _score(0.9)}),
            MetricSummary(name="f1", per_method={"netdissect": _score(0.4)}),
        ),
        units=tuple(
            UnitResult(
                unit=u,
                labels={"netdissect": HOSTILE, "depictions": "depictions"},
                scores={"auroc": {"netdissect": 0.9}, "f1": {"netdissect": 0.4}},
                details={
                    "labels": {
                        "netdissect": {"formula": "red", "distribution": dist}
                        if u.index == 0
                        else {
                            "formula": "red AND image:grass",
                            "on_the_image": ["grass"],
                            "distribution": dist,
                        }
                    }
                },
            )
            for u in units
        ),
        settings={"labels": {"netdissect": {"units": 2, "unparsed": 0, "degenerate": 0}}},
    )


def milannotations_result() -> SuiteResult:
    u = UnitRef(layer="layer1", index=0)
    return SuiteResult(
        run=RunIdentity(run_id="r1", target=TARGET, probe="synthetic"),
        suite="milannotations",
        methods={"netdissect": _info("netdissect"), "depictions": _info("depictions", "baseline")},
        metrics=(
            MetricSummary(
                name="bertscore",
                per_method={
                    "netdissect": _score(
                        0.6,
                        normalised=0.4,
                        normalised_per_layer={"layer1": 0.25},
                        per_layer={"layer1": Estimate(mean=0.6, ci_low=0.5, ci_high=0.7, n=4)},
                    ),
                    "depictions": _score(0.4, normalised=0.0),
                },  # fmt: skip
                ceiling=Ceiling(mean=0.9, ci_low=0.8, ci_high=1.0, n=4),
            ),
        ),
        units=(
            UnitResult(
                unit=u,
                labels={"netdissect": "red", "depictions": "depictions"},
                scores={"bertscore": {"netdissect": 0.6, "depictions": 0.4}},
            ),
        ),
    )


def _write(root: Path) -> list[Path]:
    out = []
    for name, result in (
        ("metrics", sanity_card()),
        ("run", faithfulness_result()),
        ("run", milannotations_result()),
    ):
        out.append(write_suite_result(suite_result_path(root / name, result.suite), result))
    return out


def _section(index: str, suite: str) -> str:
    start = index.index(f'data-suite="{suite}"')
    end = index.find('<section class="suite"', start)
    return index[start : end if end > 0 else len(index)]


def test_report_card_and_failing_columns_are_marked(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build(_write(tmp_path / "results"), site)
    index = (site / "index.html").read_text(encoding="utf-8")
    card = _section(index, "sanity")
    assert "metric report card" in card
    rows = dict(re.findall(r'<tr data-metric="([^"]+)">(.*?)</tr>', card))
    # the faithfulness metrics first, then the text metrics
    assert list(rows) == ["auroc", "f1", "final-layer/sentence-cosine", "milannotations/bertscore"]
    assert "FAIL" in rows["auroc"] and "2/4" in rows["auroc"] and 'class="insane"' in rows["auroc"]
    assert "FAIL" not in rows["f1"] and rows["f1"].count(">pass ") == 2
    # a test that does not apply to a text metric is n/a with its reason, never a pass
    text = rows["final-layer/sentence-cosine"]
    assert text.count(">n/a<") == 2 and text.count(">pass ") == 1
    assert "not applicable: a text metric compares texts" in text
    assert 'class="insane"' not in text
    mil_row = rows["milannotations/bertscore"]
    assert "FAIL" in mil_row and "3/4" in mil_row and mil_row.count(">n/a<") == 2
    assert "at least 90%" in card
    faith = _section(index, "faithfulness")
    heads = re.findall(r"<th scope=\"col\"[^>]*>(auroc|f1) ", faith)
    assert heads == ["auroc", "f1"]
    auroc_head = re.search(r'<th scope="col"[^>]*>auroc [^<]*<sup[^>]*>', faith)
    assert auroc_head is not None and "fails-sanity" in auroc_head.group(0)
    f1_head = re.search(r'<th scope="col"[^>]*>f1 ', faith)
    assert f1_head is not None and "fails-sanity" not in f1_head.group(0)
    assert "missing_labels on synth.resnet: 2/4 units pass, threshold 90%" in faith
    table = faith[: faith.index("</table>")]
    assert table.count('class="fails-sanity') == 3  # the header and both rows' cells
    # A text metric's failure marks its own suite's column only: milannotations' bertscore.
    mil = _section(index, "milannotations")
    mil_table = mil[: mil.index("</table>")]
    bert_head = re.search(r'<th scope="col"[^>]*>bertscore [^<]*<sup[^>]*>', mil_table)
    assert bert_head is not None and "fails-sanity" in bert_head.group(0)
    assert "permutation on synth.resnet: 3/4 units pass, threshold 90%" in mil
    assert "milannotations/bertscore" not in faith and "permutation" not in faith
    # Labels from the result are escaped everywhere.
    assert HOSTILE not in index


def test_ceiling_normalised_column_beside_the_raw_one(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build(_write(tmp_path / "results"), site)
    mil = _section((site / "index.html").read_text(encoding="utf-8"), "milannotations")
    table = mil[: mil.index("</table>")]
    assert "bertscore normalised" in table
    row = table[table.index('data-method="netdissect"') :]
    row = row[: row.index("</tr>")]
    assert '<td class="num normalised" data-sort="0.4">0.400</td>' in row
    ceiling = table[table.index('<tbody class="ceiling">') :]
    assert '<td class="num normalised" data-sort="1.0">1.000</td>' in ceiling
    assert "norm. 0.250" in mil  # the per-layer table


def test_faithfulness_table_counts_and_unit_page_distribution(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build(_write(tmp_path / "results"), site)
    faith = _section((site / "index.html").read_text(encoding="utf-8"), "faithfulness")
    assert '<table class="sortable labelcounts">' in faith
    counts = faith[faith.index("labelcounts") :]
    assert re.search(r'data-method="netdissect">.*?<td class="num" data-sort="2">2</td>', counts)
    page = (site / "units" / "layer1-0.html").read_text(encoding="utf-8")
    assert "Activation on concept against other images" in page
    svg = page[page.index('<svg class="plot dist"') :]
    svg = svg[: svg.index("</svg>")]
    assert "concept (4)" in svg and "other images (6)" in svg
    assert svg.count('<polygon class="on"') == 1 and svg.count('<polygon class="off"') == 1
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    # an image-level leaf is explained where it is shown, and only there
    assert "read as <code>red</code>;" in page and "image:X" not in page
    other = (site / "units" / "layer1-1.html").read_text(encoding="utf-8")
    assert "read as <code>red AND image:grass</code>" in other
    assert "every pixel of an image that shows X: grass)" in other


def test_activation_histograms_equal_numpy_per_unit() -> None:
    import numpy as np

    from bench.suites.faithfulness import activation_histograms

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 200))
    a[3] = 1.5  # a constant unit: everything in the first bin
    on = rng.random((5, 200)) < 0.2
    edges, c_on, c_off = activation_histograms(a, on, bins=8)
    for j in range(5):
        lo, hi = a[j].min(), a[j].max()
        rng_j = (lo, hi) if hi > lo else (lo, lo + 1.0)
        want_on, want_edges = np.histogram(a[j][on[j]], bins=8, range=rng_j)
        want_off, _ = np.histogram(a[j][~on[j]], bins=8, range=rng_j)
        np.testing.assert_allclose(edges[j], want_edges, rtol=1e-12)
        # numpy's bins are half-open but for the last, like ours; float edges may move a value
        # sitting exactly on an edge by one bin, which random normals do not do
        np.testing.assert_array_equal(c_on[j], want_on)
        np.testing.assert_array_equal(c_off[j], want_off)
    assert c_on.sum() + c_off.sum() == a.size


def test_a_run_and_an_imported_file_share_one_faithfulness_table() -> None:
    """The label counts and where the activations came from describe what was scored, not how:
    a run's result and an imported file's (activations from a forward pass over the same probe)
    merge into one table whose counts cover both."""
    from dataclasses import replace

    from leaderboard.merge import differing_settings, tables

    run = faithfulness_result()
    run = replace(
        run,
        # n: the units each summary was taken over (a merge rebuilds them from the unit scores)
        metrics=tuple(
            replace(m, per_method={k: replace(v, n=2) for k, v in m.per_method.items()})
            for m in run.metrics
        ),
        settings={**run.settings, "activations_from": "the run's recording"},
    )
    imported = replace(
        run,
        run=replace(run.run, run_id="r2"),
        methods={"clip-dissect": _info("clip-dissect", "imported")},
        metrics=tuple(
            replace(m, per_method={"clip-dissect": replace(_score(0.7), n=2)}) for m in run.metrics
        ),
        units=tuple(
            replace(
                u,
                labels={"clip-dissect": "red"},
                scores={k: {"clip-dissect": 0.7} for k in u.scores},
                details={},
            )
            for u in run.units
        ),
        settings={
            "labels": {"clip-dissect": {"units": 2, "unparsed": 0, "degenerate": 0}},
            "activations_from": "a forward pass over the probe",
        },
    )
    (table,) = tables([(Path("a"), run), (Path("b"), imported)])
    assert table.merged
    assert set(table.result.methods) == {"netdissect", "depictions", "clip-dissect"}
    assert set(table.result.settings["labels"]) == {"netdissect", "clip-dissect"}
    assert table.result.settings["activations_from"] == (
        "a forward pass over the probe; the run's recording"
    )
    assert differing_settings([run, imported]) == [{}, {}]
    # A setting of how the labels were scored still separates them.
    other = replace(imported, settings={**imported.settings, "alpha": 0.01})
    assert len(tables([(Path("a"), run), (Path("b"), other)])) == 2


def test_failing_marks_are_keyed_by_suite_and_metric(tmp_path: Path) -> None:
    """The presence ``mad`` row fails; ``generated``'s ``mad`` column is another metric and
    stays unmarked, while the ``generated/p_value`` row marks that suite's p_value column."""
    card = sanity_card()
    fail = {"passed": False, "rate": 0.25, "passed_units": 1, "judged_units": 4}
    card.settings["verdicts"]["mad"] = {"missing_labels": fail}
    card.settings["verdicts"]["generated/p_value"] = {"permutation": fail}
    units = [UnitRef(layer="layer1", index=i) for i in range(2)]
    generated = SuiteResult(
        run=RunIdentity(run_id="r1", target=TARGET, probe="synthetic"),
        suite="generated",
        methods={"netdissect": _info("netdissect")},
        metrics=tuple(
            MetricSummary(name=n, settings={"metric": n}, per_method={"netdissect": _score(0.5)})
            for n in ("auc", "mad", "p_value")
        ),
        units=tuple(
            UnitResult(unit=u, labels={"netdissect": "red"}, scores={"mad": {"netdissect": 0.5}})
            for u in units
        ),
    )
    root = tmp_path / "results"
    paths = [
        write_suite_result(suite_result_path(root / name, r.suite), r)
        for name, r in (("metrics", card), ("run", generated), ("run2", faithfulness_result()))
    ]
    build(paths, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    gen = _section(index, "generated")
    gen_table = gen[: gen.index("</table>")]
    heads = {
        name: "fails-sanity" in head
        for head, name in re.findall(r'(<th scope="col"[^>]*>(auc|mad|p_value) )', gen_table)
    }
    assert heads == {"auc": False, "mad": False, "p_value": True}
    assert "permutation on synth.resnet: 1/4 units pass" in gen
    assert "missing_labels on synth.resnet: 1/4" not in gen
