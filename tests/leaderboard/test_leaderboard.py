"""The suite-result schema and the static leaderboard built from it.

Result files are written here the way suites write them (``<run_dir>/suites/<suite>.json`` next
to the run's ``run.json``), with labels and annotations that try to inject markup, then the site
is built and checked: deterministic bytes, escaping everywhere, links that resolve, nothing
external, a clear error naming a broken file.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bench.errors import DataError, UsageError
from bench.results import (
    Ceiling,
    ClassMatch,
    ClassResult,
    Estimate,
    MethodCost,
    MethodInfo,
    MethodScore,
    MetricSummary,
    RunIdentity,
    SuiteResult,
    UnitResult,
    read_run_identity,
    read_suite_result,
    suite_result_path,
    write_suite_result,
)
from bench.schema import SCHEMA_VERSION, UnitRef, dumps, write_json
from leaderboard.build import MANIFEST, build, safe_name
from leaderboard.html import json_for_script

SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_LABEL = "<img src=x onerror=alert(1)>"
# Payloads that would leave a trace a browser test can look for if they ever ran.
SCRIPT_TRACE = '<script>window.__xss = 1; document.title = "pwned"</script>'
IMG_TRACE = '<img src=x onerror="window.__xss = 2">'
QUOTES_LABEL = "a \"quoted\" 'label' & <b>bold</b>"
ANNOTATION_BREAKOUT = "</script><script>window.__xss = 3</script> <!-- \u2028 \u2029"
URL_TEXT = "see http://example.com/not-a-link"
HOSTILE_LAYER = '../x/"<layer>"'
RAW_PAYLOADS = (SCRIPT_LABEL, IMG_LABEL, SCRIPT_TRACE, IMG_TRACE, QUOTES_LABEL, ANNOTATION_BREAKOUT)
TARGET = "synth.resnet"
RUN_ID = "3f2a9c81d0e4"


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4), colour).save(path, format="PNG")
    return path.read_bytes()


def _run_json(run_dir: Path) -> None:
    """A ``run.json`` with the structure ``bench.api.run`` writes."""
    write_json(
        run_dir / "run.json",
        {
            "created": "2025-01-02T03:04:05Z",
            "schema_version": SCHEMA_VERSION,
            "run_id": RUN_ID,
            "config": {
                "methods": [
                    {"name": "depictions", "version": "1", "config": {"label": "depiction"}},
                    {"name": "milan", "version": "2", "config": {"beam_size": 5}},
                    {"name": "netdissect", "version": "1", "config": {"quantile": 0.005}},
                ],
                "target": TARGET,
                "weights": None,
                "layers": ["layer3", "layer4"],
                "probe": "synthetic",
                "seed": 7,
                "batch_size": 64,
            },
            "provenance": {
                "python": "3.11.7",
                "platform": "Linux-x86_64",
                "versions": {"neuron-bench": "0.1.0", "torch": "2.14.1", "bert-score": None},
                "target": {"name": TARGET, "sha256": "ab" * 32},
                "probe": {"name": "synthetic", "seed": 0},
            },
            "stages": {"record": {"status": "done"}},
            "status": "complete",
        },
    )


def _methods(*, imported: bool = False) -> dict[str, MethodInfo]:
    methods = {
        "milan": MethodInfo(
            name="milan",
            version="2",
            config={"beam_size": 5},
            cost=MethodCost(seconds_per_unit=0.5, model_calls_per_unit={"captioner": 1.0}),
        ),
        "netdissect": MethodInfo(
            name="netdissect",
            version="1",
            config={"quantile": 0.005},
            cost=MethodCost(seconds_per_unit=0.02, device="cpu"),
        ),
        "depictions": MethodInfo(
            name="depictions",
            version="1",
            config={"label": "depiction"},
            kind="baseline",
            cost=MethodCost(seconds_per_unit=0.0),
        ),
    }
    if imported:
        methods["clip-dissect"] = MethodInfo(
            name="clip-dissect", version="file", kind="imported", source="clip_dissect.csv (csv)"
        )
    return methods


def _score(mean: float, group: int, per_layer: dict[str, float] | None = None) -> MethodScore:
    return MethodScore(
        mean=mean,
        ci_low=mean - 0.05,
        ci_high=mean + 0.05,
        n=6,
        group=group,
        p_vs_best=None if group == 1 and mean > 0.5 else 0.01,
        per_layer={
            layer: Estimate(mean=v, ci_low=v - 0.1, ci_high=v + 0.1, n=3)
            for layer, v in (per_layer or {}).items()
        },
    )


LABELS = {
    ("layer3", 0): {"milan": SCRIPT_LABEL, "netdissect": "red", "depictions": "depiction"},
    ("layer3", 1): {"milan": SCRIPT_TRACE, "netdissect": IMG_LABEL, "depictions": "depiction"},
    ("layer3", 2): {"milan": QUOTES_LABEL, "netdissect": IMG_TRACE, "depictions": "depiction"},
    ("layer4", 0): {"milan": "red circles", "netdissect": URL_TEXT, "depictions": "depiction"},
    ("layer4", 1): {"milan": "striped\u2028sky", "netdissect": "sky", "depictions": "depiction"},
}


def milannotations_result(run_dir: Path) -> SuiteResult:
    exemplar = _png(run_dir / "exemplars" / "layer3-0.png", (200, 20, 20))
    _png(run_dir / "exemplars" / "layer4-1.png", (20, 20, 200))
    assert exemplar.startswith(b"\x89PNG")
    units = []
    for (layer, index), labels in LABELS.items():
        units.append(
            UnitResult(
                unit=UnitRef(layer=layer, index=index),
                labels=dict(labels),
                references={
                    "annotations": [
                        "red things",
                        ANNOTATION_BREAKOUT if index == 0 else "a sky",
                        "stripes",
                    ]
                },
                scores={
                    "bertscore": {
                        "milan": 0.6 + index / 100,
                        "netdissect": 0.4,
                        "depictions": 0.45,
                    },
                    "sentence-cosine": {"milan": 0.5, "netdissect": 0.3, "depictions": 0.2},
                },
                exemplars=(
                    f"../exemplars/{layer}-{index}.png"
                    if (layer, index) in {("layer3", 0), ("layer4", 1)}
                    else None
                ),
            )
        )
    units.append(
        UnitResult(
            unit=UnitRef(layer="layer4", index=2),
            labels={"netdissect": "grass", "depictions": "depiction"},
            status={"milan": "error"},
            errors={"milan": "captioner failed: <out of memory>"},
            references={"annotations": ["grass", "green", "lawn"]},
            scores={"bertscore": {"netdissect": 0.5, "depictions": 0.4}},
        )
    )
    metrics = (
        MetricSummary(
            name="bertscore",
            settings={"preset": "offline", "model": "all-MiniLM-L6-v2", "idf": False},
            comparable_with_papers=False,
            note="offline BERTScore (all-MiniLM-L6-v2): not comparable with the papers",
            per_method={
                "milan": _score(0.61, 1, {"layer3": 0.6, "layer4": 0.62}),
                "depictions": _score(0.45, 2, {"layer3": 0.44, "layer4": 0.46}),
                "netdissect": _score(0.42, 2, {"layer3": 0.41, "layer4": 0.43}),
            },
            ceiling=Ceiling(
                mean=0.71,
                ci_low=0.66,
                ci_high=0.76,
                n=6,
                per_layer={"layer3": Estimate(mean=0.7, ci_low=0.6, ci_high=0.8, n=3)},
                note="each annotation against the other two",
            ),
        ),
        MetricSummary(
            name="clip-cosine",
            status="unavailable",
            reason="CLIP ViT-B/16 text weights are not available offline",
            comparable_with_papers=False,
        ),
        MetricSummary(
            name="sentence-cosine",
            settings={"model": "all-MiniLM-L6-v2"},
            comparable_with_papers=False,
            per_method={
                "milan": _score(0.5, 1),
                "netdissect": _score(0.3, 2),
                "depictions": _score(0.2, 3),
            },
        ),
    )
    return SuiteResult(
        run=read_run_identity(run_dir),
        suite="milannotations",
        settings={"protocol": "all", "layers": ["layer3", "layer4"], "bootstrap_seed": 0},
        offline=True,
        offline_note="offline BERTScore (all-MiniLM-L6-v2): not comparable with the papers",
        methods=_methods(),
        metrics=metrics,
        units=tuple(units),
    )


def planted_result(run_dir: Path) -> SuiteResult:
    units = (
        UnitResult(
            unit=UnitRef(layer="layer3", index=0),
            labels={
                "milan": SCRIPT_LABEL,
                "netdissect": "red",
                "depictions": "depiction",
                "clip-dissect": "red AND circle",
            },
            references={"planted": ["red AND circle"]},
            scores={
                "recovered": {"milan": 0, "netdissect": 0, "depictions": 0, "clip-dissect": 1},
                "similarity": {
                    "milan": 0.2,
                    "netdissect": 0.7,
                    "depictions": 0.1,
                    "clip-dissect": 1.0,
                },
            },
        ),
        UnitResult(
            unit=UnitRef(layer=HOSTILE_LAYER, index=3),
            labels={
                "milan": "blue",
                "netdissect": IMG_LABEL,
                "depictions": "depiction",
                "clip-dissect": "blue",
            },
            references={"planted": ["blue"], "class_name": ["tench, Tinca tinca"]},
            scores={
                "recovered": {"milan": 1, "netdissect": 0, "depictions": 0, "clip-dissect": 1},
                "similarity": {
                    "milan": 1.0,
                    "netdissect": 0.1,
                    "depictions": 0.1,
                    "clip-dissect": 1.0,
                },
            },
            details={"concept": "blue", "note": SCRIPT_TRACE},
        ),
    )
    return SuiteResult(
        run=read_run_identity(run_dir),
        suite="planted",
        settings={"match": "every concept word"},
        methods=_methods(imported=True),
        metrics=(
            MetricSummary(
                name="recovered",
                value_type="binary",
                per_method={
                    "clip-dissect": MethodScore(mean=1.0, ci_low=1.0, ci_high=1.0, n=2, group=1),
                    "milan": MethodScore(mean=0.5, ci_low=0.0, ci_high=1.0, n=2, group=1),
                    "netdissect": MethodScore(mean=0.0, ci_low=0.0, ci_high=0.0, n=2, group=2),
                    "depictions": MethodScore(mean=0.0, ci_low=0.0, ci_high=0.0, n=2, group=2),
                },
            ),
            MetricSummary(
                name="similarity",
                per_method={
                    "clip-dissect": _score(1.0, 1),
                    "milan": _score(0.6, 1),
                    "netdissect": _score(0.4, 2),
                    "depictions": _score(0.1, 3),
                },
            ),
        ),
        units=units,
    )


def cifar_result(run_dir: Path) -> SuiteResult:
    return SuiteResult(
        run=read_run_identity(run_dir),
        suite="cifar-auroc",
        settings={"layer": "layer4", "classes": "synthetic held-out"},
        methods=_methods(),
        metrics=(
            MetricSummary(
                name="auroc",
                per_method={"milan": _score(0.8, 1), "netdissect": _score(0.7, 1)},
            ),
            MetricSummary(
                name="auprc",
                per_method={"milan": _score(0.6, 1), "netdissect": _score(0.5, 2)},
            ),
        ),
        units=(
            UnitResult(
                unit=UnitRef(layer="layer4", index=0),
                labels={"milan": "red circles", "netdissect": URL_TEXT},
            ),
        ),
        classes=(
            ClassResult(
                name="anything <red>",
                dataset="synthetic",
                n=100,
                n_positive=10,
                per_method={
                    "milan": ClassMatch(
                        units=(UnitRef(layer="layer4", index=0),),
                        similarity=0.9,
                        scores={"auroc": 0.8, "auprc": 0.6},
                    ),
                    "netdissect": ClassMatch(
                        units=(
                            UnitRef(layer="layer4", index=0),
                            UnitRef(layer="layer4", index=1),
                        ),
                        similarity=0.5,
                        scores={"auroc": 0.7},
                    ),
                },
            ),
        ),
    )


def write_results(root: Path) -> list[Path]:
    """Three suite result files of one run, written as suites write them; returns their paths."""
    run_dir = root / f"{TARGET}-synthetic-{RUN_ID}"
    run_dir.mkdir(parents=True)
    _run_json(run_dir)
    paths = []
    for make in (milannotations_result, planted_result, cifar_result):
        result = make(run_dir)
        paths.append(write_suite_result(suite_result_path(run_dir, result.suite), result))
    return paths


@pytest.fixture()
def results(tmp_path: Path) -> list[Path]:
    return write_results(tmp_path / "results")


def _site(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _html_files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in out.rglob("*.html")
    }


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (attribute, value)
        self.ids: set[str] = set()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.text: list[str] = []
        self._script: dict[str, str | None] | None = None
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        for name in ("href", "src", "action", "srcset", "xlink:href"):
            if name in a and a[name] is not None:
                self.links.append((name, a[name]))  # type: ignore[arg-type]
        if a.get("id"):
            self.ids.add(a["id"])  # type: ignore[arg-type]
        if tag == "script":
            self._script = a

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts.append((self._script, data))
        else:
            self.text.append(data)


def _parse(text: str) -> _Collector:
    c = _Collector()
    c.feed(text)
    c.close()
    return c


# --- schema -----------------------------------------------------------------------------------


def test_schema_round_trip_is_exact_and_canonical(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _run_json(run_dir)
    for make in (milannotations_result, planted_result, cifar_result):
        result = make(run_dir)
        path = write_suite_result(suite_result_path(run_dir, result.suite), result)
        assert path == run_dir / "suites" / f"{result.suite}.json"
        back = read_suite_result(path)
        assert back == result
        assert back.to_json() == result.to_json()
        first = path.read_bytes()
        write_suite_result(path, back)
        assert path.read_bytes() == first  # canonical: sorted keys, stable floats
        raw = json.loads(first)
        assert raw["kind"] == "suite-result" and raw["schema_version"] == SCHEMA_VERSION


def test_run_identity_is_copied_from_run_json(tmp_path: Path) -> None:
    _run_json(tmp_path)
    run = read_run_identity(tmp_path)
    assert (run.run_id, run.target, run.probe, run.seed) == (RUN_ID, TARGET, "synthetic", 7)
    assert run.created == "2025-01-02T03:04:05Z"
    assert run.provenance["versions"]["torch"] == "2.14.1"
    assert run.config["methods"][1]["name"] == "milan"
    with pytest.raises(DataError, match="no run.json"):
        read_run_identity(tmp_path / "missing")


def test_method_info_and_estimate_from_harness_values() -> None:
    info = MethodInfo.from_identity(
        {"name": "depictions", "version": "1", "config": {"label": "depiction"}}, kind="baseline"
    )
    assert (info.name, info.version, info.kind, info.config) == (
        "depictions",
        "1",
        "baseline",
        {"label": "depiction"},
    )
    from metrics.stats import bootstrap_ci

    interval = bootstrap_ci([0.1, 0.2, 0.9, 0.4], n_resamples=200, seed=1)
    e = Estimate.from_interval(interval)
    assert (e.mean, e.ci_low, e.ci_high, e.n) == (
        interval.mean,
        interval.low,
        interval.high,
        4,
    )


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value


INVALID = [
    (("metrics", 0, "per_method", "milan", "ci_low"), "NaN", r"ci_low: expected a finite number"),
    (("metrics", 0, "per_method", "milan", "mean"), None, r"mean: expected a finite number"),
    (("metrics", 0, "per_method", "milan", "ci_low"), 0.99, r"expected ci_low <= ci_high"),
    (("metrics", 0, "per_method", "milan", "n"), 0, r"n: expected an integer >= 1"),
    (("metrics", 0, "per_method", "milan", "colour"), "red", r"unknown field\(s\) 'colour'"),
    (("metrics", 0, "per_method", "milan", "group"), 2, r"groups must start at 1"),
    (
        ("metrics", 1, "per_method"),
        {"milan": {"mean": 1, "ci_low": 0, "ci_high": 1, "n": 1}},
        r"unavailable metric must not carry numbers",
    ),  # fmt: skip
    (("metrics", 1, "reason"), None, r"unavailable metric needs a reason"),
    (("metrics", 2, "name"), "bertscore", r"metric 'bertscore' appears twice"),
    (("units", 0, "labels", "milam"), "x", r"method 'milam' is not among the suite's methods"),
    (("units", 0, "scores", "rouge"), {"milan": 0.1}, r"metric 'rouge' is not among"),
    (("units", 0, "scores", "clip-cosine"), {"milan": 0.1}, r"'clip-cosine' is unavailable"),
    (("units", 0, "references", "caption"), ["x"], r"references key: expected one of"),
    (("units", 0, "references", "annotations"), "one string", r"expected a list of strings"),
    (("units", 0, "exemplars"), "/etc/passwd.png", r"exemplars: expected a path relative"),
    (("units", 0, "exemplars"), "strip.jpg", r"exemplars: expected a .png file"),
    (("units", 0, "status", "netdissect"), "error", r"gives no message"),
    (("units", 1, "unit"), {"layer": "layer3", "index": 0}, r"unit appears twice"),
    (("units", 1, "unit", "index"), -1, r"unit index >= 0"),
    (("methods", "milan", "name"), "milan2", r"the key must equal the name"),
    (("methods", "milan", "kind"), "oracle", r"kind: expected one of method, imported, baseline"),
    (("methods", "milan", "cost", "seconds_per_unit"), -1.0, r"expected >= 0"),
    (("offline_note",), "", r"offline result must say what offline means"),
    (("suite",), "../milannotations", r"suite: expected a name"),
    (("run", "run_id"), 12, r"run_id: expected a string"),
    (("kind",), "scores", r"expected a suite result"),
    (("schema_version",), 2, r"newer neuron-bench: upgrade"),
    (("metrics",), {}, r"metrics: expected a list"),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID)
def test_invalid_result_files_are_data_errors_naming_file_and_field(
    tmp_path: Path, path: tuple[Any, ...], value: Any, message: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _run_json(run_dir)
    d = milannotations_result(run_dir).to_json()
    _set(d, path, value)
    bad = run_dir / "suites" / "bad.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_suite_result(bad)
    assert str(bad) in str(info.value)


def test_binary_metric_scores_must_be_zero_or_one(tmp_path: Path) -> None:
    _run_json(tmp_path)
    d = planted_result(tmp_path).to_json()
    d["units"][0]["scores"]["recovered"]["milan"] = 0.5
    with pytest.raises(ValueError, match=r"binary metric takes 0 or 1"):
        SuiteResult.from_json(d)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"kind": "suite-result", "schema_', r"not valid JSON"),
        (b"[1, 2]", r"expected a suite result"),
        (b"\xff\xfe\x00garbage", r"cannot read"),
    ],
)
def test_unreadable_result_file(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "suites" / "x.json"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_suite_result(bad)
    assert str(bad) in str(info.value)


# --- the site ---------------------------------------------------------------------------------


def test_build_is_deterministic(results: list[Path], tmp_path: Path) -> None:
    index = build(results, tmp_path / "a")
    assert index == tmp_path / "a" / "index.html"
    build(list(reversed(results)), tmp_path / "b")  # argument order does not matter
    a, b = _site(tmp_path / "a"), _site(tmp_path / "b")
    assert a == b
    build(results, tmp_path / "a")  # rebuilding in place changes nothing
    assert _site(tmp_path / "a") == a
    # From the run directory (or any folder above it) the same result files are found.
    build([results[0].parent.parent.parent], tmp_path / "c")
    assert _site(tmp_path / "c") == a
    manifest = json.loads(a[MANIFEST])
    assert set(manifest["files"]) == set(a) - {MANIFEST}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256(a[rel]).hexdigest() == digest
    assert not any(str(tmp_path) in v.decode("utf-8", "replace") for v in a.values())


def test_every_label_is_escaped(results: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "site"
    build(results, out)
    pages = _html_files(out)
    assert len(pages) > 5
    for rel, text in pages.items():
        for raw in RAW_PAYLOADS:
            assert raw not in text, f"{raw!r} appears unescaped in {rel}"
        parsed = _parse(text)
        # Only our own two scripts: the JSON data block and the sorting script.
        assert [a.get("type") for a, _ in parsed.scripts] in (["application/json", None],)
        for tag, attrs in parsed.tags:
            assert not any(k.startswith("on") for k in attrs), f"{tag} {attrs} in {rel}"
            assert not (tag == "img" and attrs.get("src") == "x"), rel
        for attrs, data in parsed.scripts:
            if attrs.get("type") == "application/json":
                assert "<" not in data and ">" not in data and "&" not in data
                assert "\u2028" not in data and "\u2029" not in data
                json.loads(data)
    # The payloads are shown as text: the parser gives back the exact strings.
    index_text = "".join(_parse(pages["index.html"]).text)
    for raw in (SCRIPT_LABEL, IMG_LABEL, SCRIPT_TRACE, IMG_TRACE, QUOTES_LABEL, URL_TEXT):
        assert raw in index_text
    unit = pages["units/layer3-0.html"]
    parsed = _parse(unit)
    assert SCRIPT_LABEL in "".join(parsed.text)
    assert ANNOTATION_BREAKOUT in "".join(parsed.text)
    data = json.loads(next(d for a, d in parsed.scripts if a.get("type") == "application/json"))
    milan = next(s for s in data["suites"] if s["suite"] == "milannotations")
    assert milan["labels"]["milan"] == SCRIPT_LABEL
    assert ANNOTATION_BREAKOUT in milan["references"]["annotations"]


def test_json_for_script_escapes_and_round_trips() -> None:
    value = {"x": "</script><!-- & \u2028\u2029 >"}
    text = json_for_script(value)
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == value


def test_links_resolve_and_nothing_is_external(results: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "site"
    build(results, out)
    pages = _html_files(out)
    parsed = {rel: _parse(text) for rel, text in pages.items()}
    n_links = 0
    for rel, p in parsed.items():
        for attr, value in p.links:
            n_links += 1
            assert not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//)", value, re.I), (rel, attr, value)
            target, _, fragment = value.partition("#")
            dest = rel if not target else (PurePosixPath(rel).parent / target).as_posix()
            resolved = (out / dest).resolve()
            assert resolved.is_file(), f"{rel}: {attr}={value!r} -> missing {dest}"
            assert out.resolve() in resolved.parents
            if fragment:
                key = resolved.relative_to(out.resolve()).as_posix()
                assert fragment in parsed[key].ids, f"{rel}: #{fragment} not in {key}"
        text = pages[rel]
        assert "url(" not in text and "@import" not in text
        # "http" only in text, never in a src or href.
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert n_links > 20
    # Every unit of every result has a page, with a file name safe for any layer string.
    unit_pages = sorted(p for p in pages if p.startswith("units/"))
    assert "units/layer3-0.html" in unit_pages and "units/layer4-2.html" in unit_pages
    hostile = f"units/{safe_name(HOSTILE_LAYER)}-3.html"
    assert hostile in unit_pages
    assert re.fullmatch(r"units/[A-Za-z0-9_.~-]+\.html", hostile)
    assert not safe_name(HOSTILE_LAYER).startswith(".")
    # Exemplars are copied byte for byte and shown on the unit page.
    src = results[0].parent.parent / "exemplars" / "layer3-0.png"
    copied = [p for p in out.glob("exemplars/*.png") if p.read_bytes() == src.read_bytes()]
    assert len(copied) == 1
    assert f"../exemplars/{copied[0].name}" in pages["units/layer3-0.html"]
    assert "exemplars/" not in pages["units/layer3-1.html"]


def test_index_shows_tables_groups_ceiling_unavailable_and_plots(
    results: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(results, out)
    index = (out / "index.html").read_text(encoding="utf-8")
    sections = re.findall(r'<section class="suite" id="([^"]+)" data-suite="([^"]+)"', index)
    # Suites in the order, whatever the file order.
    assert [s for _, s in sections] == ["milannotations", "cifar-auroc", "planted"]
    milan = index[index.index('data-suite="milannotations"') : index.index('data-suite="cifar')]
    table = milan[: milan.index("</table>")]
    # Rows best first on the first metric; every method, the baseline tagged, the ceiling apart.
    rows = re.findall(r'<tr data-method="([^"]+)">', table)
    assert rows == ["milan", "depictions", "netdissect"]
    assert '<span class="tag">baseline</span>' in table
    ceiling = table[table.index('<tbody class="ceiling">') :]
    assert (
        "inter-annotator ceiling" in ceiling and "0.710" in ceiling and "[0.660, 0.760]" in ceiling
    )
    # Significance group 1 is marked on milan's cells only; intervals printed.
    milan_row = table[table.index('data-method="milan"') : table.index('data-method="depictions"')]
    assert milan_row.count('class="num g1"') == 2 and "[0.560, 0.660]" in milan_row
    dep_row = table[table.index('data-method="depictions"') : table.index('data-method="netdis')]
    assert "g1" not in dep_row and 'class="num g2"' in dep_row and 'class="num g3"' in dep_row
    # The unavailable metric is a cell saying so, in every row, never a number.
    assert table.count(">unavailable</td>") == 4
    assert "CLIP ViT-B/16 text weights are not available offline" in milan
    assert "offline BERTScore (all-MiniLM-L6-v2): not comparable with the papers" in milan
    # Sortable headers; per-layer breakdown with the ceiling; plots as inline SVG.
    assert 'class="sortable results"' in table and 'data-type="num"' in table
    assert '<table class="sortable perlayer">' in milan
    assert milan.count("<svg") == 3  # bertscore, sentence-cosine, quality vs cost
    assert "seconds per unit (log scale)" in milan
    assert '<rect class="band"' in milan  # the ceiling band in the interval plot
    # Imported labels appear as a named method; binary metric rows; per-class detail.
    planted = index[index.index('data-suite="planted"') :]
    assert '<tr data-method="clip-dissect">' in planted and '<span class="tag">imported</span>' in (
        planted
    )
    assert "Not plotted, no cost measured: clip-dissect (imported labels)." in planted
    cifar = index[index.index('data-suite="cifar-auroc"') : index.index('data-suite="planted"')]
    assert '<table class="sortable perclass">' in cifar and "anything &lt;red&gt;" in cifar
    assert cifar.count('href="units/layer4-0.html"') >= 2
    # Provenance footer: versions, configs, seeds, schema version, the files included.
    footer = index[index.index("<footer>") :]
    for text in (
        "Provenance",
        "2.14.1",
        "beam_size",
        RUN_ID,
        "result schema version 1",
        f"{TARGET}-synthetic-{RUN_ID}/suites/milannotations.json",
        "2025-01-02T03:04:05Z",
        "<td>7</td>",
    ):
        assert text in footer, text


def test_unit_page_shows_labels_references_scores(results: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "site"
    build(results, out)
    page = (out / "units" / "layer3-0.html").read_text(encoding="utf-8")
    for text in (
        "Unit layer3:0",
        "Annotations",
        "red things",
        "Planted concept",
        "red AND circle",  # from the planted suite, merged onto the same unit page
        f'<a href="../index.html#milannotations--{TARGET}--',  # the table's id names suite, target
        f"milannotations \u00b7 {TARGET}</a>",
        "0.600",  # milan's BERTScore on this unit
        ">no</td>",  # milan did not recover the planted concept
        ">yes</td>",  # clip-dissect did
    ):
        assert text in page, text
    failed = (out / "units" / "layer4-2.html").read_text(encoding="utf-8")
    assert "captioner failed: &lt;out of memory&gt;" in failed and "<td>error</td>" in failed


def test_errors_name_the_file(results: list[Path], tmp_path: Path) -> None:
    broken = results[0].parent / "broken.json"
    broken.write_text('{"kind": "suite-result", "schema_version": 1, "run": ', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(broken))):
        build(results + [broken], tmp_path / "site")
    assert not (tmp_path / "site").exists()  # nothing written on error
    with pytest.raises(UsageError, match="no such file"):
        build([tmp_path / "nope.json"], tmp_path / "site")
    with pytest.raises(UsageError, match="at least one"):
        build([], tmp_path / "site")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no suite results found"):
        build([empty], tmp_path / "site")
    copy = tmp_path / "copy" / "suites" / "planted.json"
    copy.parent.mkdir(parents=True)
    shutil.copy(results[1], copy)
    with pytest.raises(DataError, match="both hold suite 'planted'"):
        build([results[1], copy], tmp_path / "site")
    (results[0].parent.parent / "exemplars" / "layer4-1.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(DataError, match=r"layer4:1: exemplar image .* is not a PNG"):
        build(results[:1], tmp_path / "site")
    (results[0].parent.parent / "exemplars" / "layer4-1.png").unlink()
    with pytest.raises(DataError, match=r"layer4:1: exemplar image .* cannot be read"):
        build(results[:1], tmp_path / "site")
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        build(results[1:], file_out)


def test_rebuild_removes_stale_pages_but_not_other_files(
    results: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(results, out)
    (out / "notes.txt").write_text("mine")
    hostile = out / "units" / f"{safe_name(HOSTILE_LAYER)}-3.html"
    assert hostile.is_file()
    build(results[:1], out)  # without the planted suite, the hostile unit has no page
    assert not hostile.exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert _site(out) == {**_site_of(results[:1], tmp_path / "fresh"), "notes.txt": b"mine"}


def _site_of(paths: list[Path], out: Path) -> dict[str, bytes]:
    build(paths, out)
    return _site(out)


def test_safe_name() -> None:
    names = ["layer4", "layer4.0.conv1", "a/b", "a_b", "a b", "..", ".hidden", "é", "x" * 200]
    safe = [safe_name(n) for n in names]
    assert safe[:2] == ["layer4", "layer4.0.conv1"]
    assert len(set(safe)) == len(names)
    for s in safe:
        assert re.fullmatch(r"[A-Za-z0-9_.~-]+", s) and not s.startswith(".") and len(s) <= 69


def test_schema_dumps_of_result_has_no_nan_literals(tmp_path: Path) -> None:
    _run_json(tmp_path)
    text = dumps(planted_result(tmp_path).to_json())
    assert "NaN" not in text and "Infinity" not in text
    with pytest.raises(ValueError, match="finite"):
        MethodScore(mean=float("nan"), ci_low=0.0, ci_high=1.0, n=1)
    with pytest.raises(ValueError, match="binary metric's mean"):
        MetricSummary(
            name="recovered",
            value_type="binary",
            per_method={"m": MethodScore(mean=1.5, ci_low=1.0, ci_high=2.0, n=1)},
        )
    assert RunIdentity(run_id="r", target="t").probe is None


def test_module_entry_point(
    results: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leaderboard.__main__ import main

    assert main([str(results[0].parent.parent), "--out", str(tmp_path / "site")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "site" / "index.html")
    assert main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.json" in err and err.count("\n") == 1


def test_exemplar_paths_that_leave_the_run_are_refused(results: list[Path], tmp_path: Path) -> None:
    run_dir = results[0].parent.parent
    secret = run_dir.parent / "outside.png"
    shutil.copy(run_dir / "exemplars" / "layer3-0.png", secret)  # a valid PNG outside the run
    doc = json.loads(results[0].read_text(encoding="utf-8"))
    unit = next(u for u in doc["units"] if u.get("exemplars"))
    unit["exemplars"] = "../../outside.png"
    results[0].write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match=r"outside the run directory"):
        build(results[:1], tmp_path / "site")
    assert not (tmp_path / "site").exists()
    # A link inside the run that points out of it is refused too.
    link = run_dir / "exemplars" / "link.png"
    link.symlink_to(secret)
    unit["exemplars"] = "../exemplars/link.png"
    results[0].write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match=r"outside the run directory"):
        build(results[:1], tmp_path / "site")
