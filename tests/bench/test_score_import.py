"""Scoring labels written by other tools (``bench.scoring.score_labels``), offline.

Label files, annotations and CIFAR batches are written here in their real formats. Text-only
suites must not load target weights or images: ``load_target`` is made to fail in those tests.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench.errors import DataError, DownloadError, UnknownNameError, UsageError
from bench.results import read_suite_result
from bench.schema import UnitRef
from bench.suites.scoring import ScoreOptions, score_labels

OPTIONS = ScoreOptions(n_resamples=1000, device="cpu")

TALLY_HEADER = [
    "unit",
    "category",
    "label",
    "score",
    "color-label",
    "color-truth",
    "color-activation",
    "color-intersect",
    "color-iou",
    "object-label",
    "object-truth",
    "object-activation",
    "object-intersect",
    "object-iou",
]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _tally(path: Path, rows: list[tuple[int, str, str, float]]) -> Path:
    """A NetDissect-Lite tally.csv: 1-based units, Broden suffixes, sorted by score."""
    out = []
    for unit, category, label, score in rows:
        out.append(
            [unit, category, label, score, "red-c", 10, 20, 5, 0.01, "tree", 30, 20, 6, 0.02]
        )
    return _write_csv(path, TALLY_HEADER, out)


@pytest.fixture()
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything loads a target's weights."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a text-only suite loaded target weights")

    monkeypatch.setattr("bench.targets.load_target", refuse)


def test_netdissect_lite_tally_on_resnet50_final_layer(tmp_path: Path, no_weights) -> None:
    from torchvision.models import ResNet50_Weights

    from leaderboard.build import build
    from metrics.text import sentence_cosine

    tally = _tally(
        tmp_path / "tally.csv",
        [(3, "object", "shark", 0.3), (1, "material", "water", 0.2), (2, "color", "orange-c", 0.1)],
    )
    report = score_labels(
        tally,
        "netdissect-lite",
        target="resnet50",
        suite="final-layer",
        out=tmp_path / "out",
        options=OPTIONS,
    )
    path = report.results["final-layer"]
    assert path == tmp_path / "out" / "suites" / "final-layer.json"
    r = read_suite_result(path)
    names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    # 1-based units became 0-based; the layer defaulted to the final layer; suffixes went.
    assert [u.unit for u in r.units] == [UnitRef(layer="fc", index=i) for i in range(3)]
    labels = [u.labels["netdissect-lite"] for u in r.units]
    assert labels == ["water", "orange", "shark"]
    assert [u.references["class_name"] for u in r.units] == [(n,) for n in names[:3]]
    info = r.methods["netdissect-lite"]
    assert info.kind == "imported" and info.source == "tally.csv (netdissect-lite)"
    assert info.config["sha256"] == hashlib.sha256(tally.read_bytes()).hexdigest()
    assert r.methods["depictions"].kind == "baseline"
    assert {u.labels["depictions"] for u in r.units} == {"depiction"}
    direct = sentence_cosine(labels, names[:3], preset="offline", device="cpu")
    got = [u.scores["sentence-cosine"]["netdissect-lite"] for u in r.units]
    np.testing.assert_allclose(got, direct.values, atol=1e-6)
    assert r.run.target == "resnet50" and r.run.probe is None
    assert all(u.exemplars is None for u in r.units)
    # The same labels again: the same run id, the same bytes.
    before = path.read_bytes()
    again = score_labels(
        tally,
        "netdissect-lite",
        target="resnet50",
        suite="final-layer",
        out=tmp_path / "out",
        options=OPTIONS,
    )
    assert again.results["final-layer"].read_bytes() == before
    site = build([tmp_path / "out"], tmp_path / "site")
    html = site.read_text(encoding="utf-8")
    assert "netdissect-lite" in html and "imported" in html


def _annotations(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    return _write_csv(path, ["layer", "unit", "summary"], [list(r) for r in rows])


def test_milan_labels_on_alexnet_against_a_local_annotations_csv(
    tmp_path: Path, no_weights
) -> None:
    from metrics.text import bertscore

    ann = _annotations(
        tmp_path / "annotations.csv",
        [
            ("conv1", 0, "red and orange stripes"),
            ("conv1", 0, "stripes"),
            ("conv1", 0, "orange lines"),
            ("conv1", 1, "dog faces"),
            ("conv1", 1, "animals"),
            ("conv1", 1, "fur"),
            ("conv2", 0, "sky"),
            ("conv2", 0, "blue sky"),
            ("conv2", 0, "the sky above"),
        ],
    )
    labels = _write_csv(
        tmp_path / "descriptions.csv",
        ["layer", "unit", "description"],
        [
            ["conv1", 0, "striped patterns"],
            ["conv1", 1, "dog heads"],
            ["conv2", 0, "sky"],
            ["conv2", 5, "grass"],
        ],
    )
    report = score_labels(
        labels,
        "milan",
        target="alexnet",
        suite="milannotations",
        name="milan-base",
        out=tmp_path / "out",
        options=OPTIONS,
        suite_config={"milannotations": {"annotations": str(ann)}},
    )
    r = read_suite_result(report.results["milannotations"])
    # MILANNOTATIONS' conv1..conv5 are torchvision's features.0/3/6/8/10; conv2:5 has no
    # annotations and is not scored.
    assert [u.unit for u in r.units] == [
        UnitRef(layer="features.0", index=0),
        UnitRef(layer="features.0", index=1),
        UnitRef(layer="features.3", index=0),
    ]
    assert r.units[0].references["annotations"] == (
        "red and orange stripes",
        "stripes",
        "orange lines",
    )
    assert set(r.methods) == {"milan-base", "depictions"}
    bs = r.metric("bertscore")
    assert bs.ceiling is not None and bs.ceiling.n == 3
    assert set(bs.per_method["milan-base"].per_layer) == {"features.0", "features.3"}
    direct = bertscore(
        ["sky"], [("sky", "blue sky", "the sky above")], preset="offline", device="cpu"
    )
    assert r.units[2].scores["bertscore"]["milan-base"] == pytest.approx(direct.values[0], abs=1e-6)
    assert r.settings["annotations"]["kind"] == "annotations.csv"


def test_dnd_protocol_keeps_only_reliable_units(tmp_path: Path, no_weights) -> None:
    ann = _annotations(
        tmp_path / "annotations.csv",
        [
            ("conv1", 0, "a red car"),
            ("conv1", 0, "a red car"),
            ("conv1", 0, "cars"),
            ("conv1", 1, "dog"),
            ("conv1", 1, "ocean waves"),
            ("conv1", 1, "a keyboard"),
            ("conv1", 2, "blue sky"),
            ("conv1", 2, "sky"),
            ("conv1", 2, "blue sky"),
        ],
    )
    labels = _write_csv(
        tmp_path / "d.csv",
        ["layer", "unit", "description"],
        [["conv1", 0, "red cars"], ["conv1", 1, "animals"], ["conv1", 2, "sky"]],
    )
    report = score_labels(
        labels,
        "milan",
        target="alexnet",
        suite="milannotations",
        out=tmp_path / "out",
        options=OPTIONS,
        suite_config={"milannotations": {"annotations": str(ann), "protocol": "dnd"}},
    )
    r = read_suite_result(report.results["milannotations"])
    assert [u.unit.index for u in r.units] == [0, 2]
    assert all(u.details["reliable"] and u.details["max_pair_cosine"] > 0.81 for u in r.units)
    assert r.settings["units_reliable"] == 2 and r.settings["protocol"] == "dnd"
    # Offline there is no CLIP: the threshold is calibrated to the stand-in encoder, keeping
    # the share of units CLIP's 0.81 keeps in DnD's notebook (103 of 200), and says so.
    assert "calibrated to this encoder" in r.settings["reliable_calibration"]
    threshold = r.settings["reliable_threshold"]
    assert threshold != 0.81
    assert all(u.details["max_pair_cosine"] > threshold for u in r.units)
    assert "stands in" in r.offline_note and f"{threshold:.4f}" in r.offline_note
    # Two units are too few for significance groups: withheld, and the result says why.
    for m in r.metrics:
        if m.ok:
            assert all(s.group is None for s in m.per_method.values())
            assert "significance groups withheld: 2 units" in m.note
            assert m.settings["groups_min_units"] == 20
    # DnD's 0.81 given explicitly: used as given.
    given = score_labels(
        labels,
        "milan",
        target="alexnet",
        suite="milannotations",
        out=tmp_path / "o3",
        options=OPTIONS,
        suite_config={
            "milannotations": {
                "annotations": str(ann),
                "protocol": "dnd",
                "reliable_threshold": 0.81,
            }
        },
    )
    g = read_suite_result(given.results["milannotations"])
    assert g.settings["reliable_threshold"] == 0.81
    assert g.settings["reliable_calibration"].startswith("given")
    with pytest.raises(UsageError, match="none of 3 units is reliable"):
        score_labels(
            labels,
            "milan",
            target="alexnet",
            suite="milannotations",
            out=tmp_path / "o2",
            options=OPTIONS,
            suite_config={
                "milannotations": {
                    "annotations": str(ann),
                    "protocol": "dnd",
                    "reliable_threshold": 1.0,
                }
            },
        )


def test_milannotations_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_weights) -> None:
    labels = _write_csv(tmp_path / "d.csv", ["layer", "unit", "description"], [["conv1", 0, "red"]])
    with pytest.raises(UsageError, match="AlexNet, ResNet-152, BigGAN and DINO"):
        score_labels(
            labels,
            "milan",
            target="resnet50",
            suite="milannotations",
            out=tmp_path / "o",
            options=OPTIONS,
        )
    monkeypatch.setenv("MILAN_DATA_DIR", str(tmp_path / "milan"))
    with pytest.raises(DataError, match="download"):
        score_labels(
            labels,
            "milan",
            target="alexnet",
            suite="milannotations",
            out=tmp_path / "o",
            options=OPTIONS,
        )


def test_synonym_lines_are_fetched_on_request_with_a_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_bytes, no_weights
) -> None:
    from bench.suites import final_layer

    body = "\n".join(f"class {i}, synonym {i}" for i in range(1000)).encode()
    base, hits = serve_bytes(body)
    monkeypatch.setattr(final_layer, "SYNONYMS_URL", f"{base}/imagenet_labels.txt")
    tally = _tally(tmp_path / "tally.csv", [(1, "object", "fish", 0.3)])
    options = ScoreOptions(n_resamples=1000, device="cpu", cache_dir=str(tmp_path / "cache"))
    args = dict(
        target="resnet50",
        suite="final-layer",
        out=tmp_path / "out",
        suite_config={"final-layer": {"class_names": "synonyms"}},
    )
    with pytest.raises(DownloadError, match="--download"):
        score_labels(tally, "netdissect-lite", options=options, **args)
    assert hits == []  # nothing fetched without --download
    monkeypatch.setattr(final_layer, "SYNONYMS_SHA256", "0" * 64)
    online = ScoreOptions(
        n_resamples=1000, device="cpu", cache_dir=options.cache_dir, download=True
    )
    with pytest.raises(DownloadError, match="checksum"):
        score_labels(tally, "netdissect-lite", options=online, **args)
    monkeypatch.setattr(final_layer, "SYNONYMS_SHA256", hashlib.sha256(body).hexdigest())
    report = score_labels(tally, "netdissect-lite", options=online, **args)
    r = read_suite_result(report.results["final-layer"])
    assert r.units[0].references["class_name"] == ("class 0, synonym 0",)
    assert r.settings["class_names"]["kind"] == "synonyms"
    assert (tmp_path / "cache" / "datasets" / "imagenet_labels.txt").read_bytes() == body
    with pytest.raises(UsageError, match="not an ImageNet-1k classifier"):
        score_labels(
            tally,
            "netdissect-lite",
            target="synth.resnet",
            suite="final-layer",
            out=tmp_path / "o3",
            options=online,
            suite_config={"final-layer": {"class_names": "synonyms"}},
        )


def test_import_errors(tmp_path: Path, no_weights) -> None:
    tally = _tally(tmp_path / "tally.csv", [(1001, "object", "fish", 0.3)])
    with pytest.raises(DataError, match="1000 classes"):
        score_labels(
            tally,
            "netdissect-lite",
            target="resnet50",
            suite="final-layer",
            out=tmp_path / "a",
            options=OPTIONS,
        )
    ok = _tally(tmp_path / "ok.csv", [(1, "object", "fish", 0.3)])
    with pytest.raises(UsageError, match="cannot be named 'depictions'"):
        score_labels(
            ok,
            "netdissect-lite",
            target="resnet50",
            suite="final-layer",
            name="depictions",
            out=tmp_path / "b",
            options=OPTIONS,
        )
    with pytest.raises(UnknownNameError, match="resnet50"):
        score_labels(
            ok,
            "netdissect-lite",
            target="resnet5",
            suite="final-layer",
            out=tmp_path / "c",
            options=OPTIONS,
        )
    with pytest.raises(UnknownNameError, match="Did you mean 'final-layer'"):
        score_labels(
            ok,
            "netdissect-lite",
            target="resnet50",
            suite="final_layer",
            out=tmp_path / "d",
            options=OPTIONS,
        )
    with pytest.raises(UsageError, match="--layer"):
        score_labels(
            ok,
            "netdissect-lite",
            target="resnet50",
            suite="cifar-auroc",
            out=tmp_path / "e",
            options=OPTIONS,
        )


# --- cifar-auroc on a real-format CIFAR-10 ------------------------------------------------------

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar10(root: Path, n_per_class: int = 2) -> tuple[np.ndarray, list[int]]:
    """``cifar-10-batches-py`` with a test batch as the authors published it (Python 2 pickles)."""
    from tests.bench.test_probes import _py2_pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    labels = [c for c in range(10) for _ in range(n_per_class)]
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(
        _py2_pickle(
            {
                "batch_label": "testing batch 1 of 1",
                "labels": labels,
                "data": data,
                "filenames": [f"{i}.png" for i in range(len(labels))],
            }
        )
    )
    (folder / "batches.meta").write_bytes(
        _py2_pickle({"num_cases_per_batch": len(labels), "label_names": CIFAR10, "num_vis": 3072})
    )
    return data, labels


def test_cifar_auroc_on_cifar10_with_local_weights(tmp_path: Path) -> None:
    import torch
    from torchvision.models import resnet18

    from bench.probes.cifar import CifarProbe
    from bench.targets import load_target
    from metrics.classification import auroc, average_precision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), weights)
    _, labels = _cifar10(tmp_path / "cifar")
    rows = [["layer4", i, name, 0.5] for i, name in enumerate(CIFAR10)] + [
        ["layer4", 10, "cat", 0.4]  # ties with unit 3 for "cat"
    ]
    descriptions = _write_csv(
        tmp_path / "descriptions.csv", ["layer", "unit", "description", "similarity"], rows
    )
    options = ScoreOptions(n_resamples=1000, device="cpu", cache_dir=str(tmp_path / "cache"))
    report = score_labels(
        descriptions,
        "clip-dissect",
        target="resnet18",
        suite="cifar-auroc",
        weights=str(weights),
        out=tmp_path / "out",
        options=options,
        suite_config={"cifar-auroc": {"root": str(tmp_path / "cifar"), "datasets": ["cifar10"]}},
    )
    r = read_suite_result(report.results["cifar-auroc"])
    assert r.settings["layer"] == "layer4" and [c.name for c in r.classes] == CIFAR10
    assert [m.name for m in r.metrics] == ["auroc-cifar10", "auprc-cifar10"]

    target = load_target("resnet18", weights=str(weights))
    probe = CifarProbe(tmp_path / "cifar", name="cifar10")
    x = torch.stack(
        [target.preprocessing.transform(probe.load_image(i)) for i in range(len(probe))]
    )
    grabbed: list[torch.Tensor] = []
    handle = target.module("layer4").register_forward_hook(
        lambda m, i, o: grabbed.append(o.mean(dim=(2, 3)))
    )
    with torch.no_grad():
        target.model(x)
    handle.remove()
    acts = grabbed[0].numpy()
    y = np.asarray(labels)
    for c, cls in enumerate(r.classes):
        match = cls.per_method["clip-dissect"]
        expected = [3, 10] if cls.name == "cat" else [c]
        assert [u.index for u in match.units] == expected
        assert match.similarity == pytest.approx(1.0, abs=1e-5)
        au = np.mean([auroc(acts[:, i], y == c) for i in expected])
        ap = np.mean([average_precision(acts[:, i], y == c) for i in expected])
        assert match.scores["auroc-cifar10"] == pytest.approx(au, abs=1e-4)
        assert match.scores["auprc-cifar10"] == pytest.approx(ap, abs=1e-4)
        assert cls.n == 20 and cls.n_positive == 2
    assert r.metric("auroc-cifar10").per_method["clip-dissect"].n == 10
    # Without the data and without --download: a clear error naming the way to get it.
    with pytest.raises(DataError, match="--download"):
        score_labels(
            descriptions,
            "clip-dissect",
            target="resnet18",
            suite="cifar-auroc",
            weights=str(weights),
            out=tmp_path / "out2",
            options=options,
            suite_config={"cifar-auroc": {"root": str(tmp_path / "none"), "datasets": "cifar10"}},
        )


def test_cli_scores_several_label_files_as_one_result(
    tmp_path: Path, no_weights, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main

    ann = _annotations(
        tmp_path / "annotations.csv",
        [
            (la, u, t)
            for la in ("layer1", "layer2")
            for u in (0, 1)
            for t in ("sky", "blue sky", "a")
        ],
    )
    header = ["Neuron ID", "Label 1", "Label 2", "Label 3"]
    (tmp_path / "dnd").mkdir()
    (tmp_path / "dup").mkdir()
    one = _write_csv(tmp_path / "dnd" / "rn_layer1.csv", header, [[0, "sky", "", ""]])
    _write_csv(
        tmp_path / "dnd" / "rn_layer2.csv", header, [[0, "clouds", "", ""], [1, "a", "", ""]]
    )
    argv = ["score", "--labels", str(tmp_path / "dnd" / "rn_layer*.csv"), "--format", "dnd"]
    argv += ["--target", "resnet152", "--suite", "milannotations", "--annotations", str(ann)]
    argv += ["--out", str(tmp_path / "out"), "--bootstrap", "200", "--device", "cpu"]
    assert main(argv) == 0
    r = read_suite_result(tmp_path / "out" / "suites" / "milannotations.json")
    assert [u.unit for u in r.units] == [
        UnitRef(layer="layer1", index=0),
        UnitRef(layer="layer2", index=0),
        UnitRef(layer="layer2", index=1),
    ]
    assert r.methods["dnd"].source == "2 files (dnd): rn_layer1.csv, rn_layer2.csv"
    # Several --labels given one by one: the same files, the same result.
    argv2 = ["score", "--labels", str(one), "--labels", str(tmp_path / "dnd" / "rn_layer2.csv")]
    before = (tmp_path / "out" / "suites" / "milannotations.json").read_bytes()
    assert main(argv2 + argv[3:]) == 0
    assert (tmp_path / "out" / "suites" / "milannotations.json").read_bytes() == before
    # A unit in two files is an error naming both.
    _write_csv(tmp_path / "dup" / "a_layer1.csv", header, [[0, "sky", "", ""]])
    dup = _write_csv(tmp_path / "dup" / "b_layer1.csv", header, [[0, "sea", "", ""]])
    with pytest.raises(DataError, match="a_layer1.csv and b_layer1.csv"):
        score_labels(
            [tmp_path / "dup" / "a_layer1.csv", dup],
            "dnd",
            target="resnet152",
            suite="milannotations",
            out=tmp_path / "o",
            options=OPTIONS,
            suite_config={"milannotations": {"annotations": str(ann)}},
        )
    with pytest.raises(UsageError, match="matches no file"):
        score_labels(
            str(tmp_path / "none_*.csv"),
            "dnd",
            target="resnet152",
            suite="milannotations",
            options=OPTIONS,
            suite_config={"milannotations": {"annotations": str(ann)}},
        )
