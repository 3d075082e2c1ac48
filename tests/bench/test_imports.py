"""Label files of other tools: each format parses a fixture written here in its real layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import DataError, UnknownNameError, UsageError
from bench.imports import (
    FORMATS,
    detect_format,
    import_labels,
    milan_normalise_formula,
    parse_compexp_formula,
    read_labels,
    strip_broden_suffix,
)
from bench.schema import Description, UnitRef

CATS = ("object", "color", "material", "scene", "texture", "part")
ND_HEADER = "unit,category,label,score," + ",".join(
    f"{c}-label,{c}-truth,{c}-activation,{c}-intersect,{c}-iou" for c in CATS
)


def _nd_row(unit: int, category: str, label: str, score: float) -> str:
    per = {
        "object": "water",
        "color": "blue-c",
        "material": "plastic-opaque",
        "scene": "street-s",
        "texture": "dotted",
        "part": "wheel",
    }
    per[category] = label
    cells = []
    for c in CATS:
        iou = score if c == category else 0.01
        cells.append(f"{per[c]},1169902,2106473.0,301836,{iou}")
    return f"{unit},{category},{label},{score}," + ",".join(cells)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# NetDissect-Lite writes rows sorted by score, units 1-based.
ND_LITE = (
    "\n".join(
        [
            ND_HEADER,
            _nd_row(3, "scene", "casino-indoor-s", 0.21899864690447707),
            _nd_row(1, "color", "red-c", 0.1),
            _nd_row(2, "material", "plastic-opaque", 0.05),
            _nd_row(5, "object", "pool table", 0.04),
        ]
    )
    + "\n"
)


def test_netdissect_lite_tally(tmp_path: Path) -> None:
    path = _write(tmp_path, "tally.csv", ND_LITE)
    ds = read_labels(path, "netdissect-lite", layer="layer4")
    assert [d.unit for d in ds] == [UnitRef(layer="layer4", index=i) for i in (0, 1, 2, 4)]
    labels = {d.unit.index: d.label for d in ds}
    # 1-based -> 0-based; only the suffix of the unit's own category is removed.
    assert labels == {0: "red", 1: "plastic-opaque", 2: "casino-indoor", 4: "pool table"}
    casino = ds[2]
    assert casino.score == pytest.approx(0.21899864690447707) and casino.score_name == "iou"
    assert casino.extras["raw_label"] == "casino-indoor-s"
    assert casino.extras["category"] == "scene"
    assert casino.extras["source"]["unit_in_file"] == 3
    per = casino.extras["per_category"]
    assert set(per) == set(CATS)
    assert per["color"]["label"] == "blue" and per["scene"]["label"] == "casino-indoor"
    assert per["object"]["truth"] == 1169902 and per["object"]["iou"] == pytest.approx(0.01)
    assert detect_format(path) == "netdissect-lite"
    assert read_labels(path, layer="layer4") == ds  # auto-detected
    with pytest.raises(UsageError, match="do not name the layer.*--layer"):
        read_labels(path, "netdissect-lite")


def test_netdissect_original_result_csv(tmp_path: Path) -> None:
    # The original writes the same columns; <layer>-result.csv names the layer.
    text = "\n".join(
        [
            ND_HEADER,
            _nd_row(198, "part", "wheel", 0.21899864690447707),
            _nd_row(87, "scene", "mountain_snowy-s", 0.08287961932125637),
        ]
    )
    path = _write(tmp_path, "conv5-result.csv", text)
    ds = read_labels(path, "netdissect")
    assert [(d.unit, d.label) for d in ds] == [
        (UnitRef(layer="conv5", index=86), "mountain_snowy"),
        (UnitRef(layer="conv5", index=197), "wheel"),
    ]
    plot = _write(tmp_path, "caffe_reference_imagenet.csv", text)
    from_plot = read_labels(plot, "netdissect", layer="conv5")
    assert [(d.unit, d.label, d.score) for d in from_plot] == [
        (d.unit, d.label, d.score) for d in ds
    ]
    with pytest.raises(UsageError, match="layer"):
        read_labels(plot, "netdissect")


def test_netdissect_unit_zero_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "tally.csv", ND_HEADER + "\n" + _nd_row(0, "object", "water", 0.1))
    with pytest.raises(DataError, match=r"tally\.csv: line 2: .*>= 1.*numbers units from 1"):
        read_labels(path, "netdissect-lite", layer="layer4")


COMPEXP_HEADER = (
    "unit,category,label,score,length,emb_summary,emb_summary_sim,wn_summary,wn_summary_sim,"
    "wn_mean_sim,wn_min_sim,wn_max_sim,consistency,category_noncomp,label_noncomp,score_noncomp"
)


def test_compexp_tally(tmp_path: Path) -> None:
    from bench.formula import And, Leaf, Not, Or, from_json, parse

    rows = [
        "0,object,((water OR river) AND (NOT blue-c)),0.12,4,,0.0,,0.0,0.0,0.0,0.0,0.0,"
        "object,water,0.09",
        "2,object,(pool table OR street-s),0.08,2,,0.0,,0.0,0.0,0.0,0.0,0.0,scene,street-s,0.07",
        "1,color,red-c,0.05,1,,0.0,,0.0,0.0,0.0,0.0,0.0,color,red-c,0.05",
        '3,object,"((sky-s OR water) OR (car AND (NOT road)))",0.04,5,,,,,,,,,object,sky-s,0.03',
    ]
    path = _write(tmp_path, "tally_layer4.csv", COMPEXP_HEADER + "\n" + "\n".join(rows) + "\n")
    ds = read_labels(path, "compexp")  # layer from the file name
    assert [d.unit for d in ds] == [UnitRef(layer="layer4", index=i) for i in range(4)]
    by = {d.unit.index: d for d in ds}
    # Rendered as the harness's CompExp renders formulas, suffixes stripped.
    assert by[0].label == "(water OR river) AND NOT blue"
    assert by[1].label == "red"
    assert by[2].label == '"pool table" OR street'
    assert by[3].label == "sky OR water OR car AND NOT road"
    assert from_json(by[0].extras["formula"]) == And(
        Or(Leaf("water"), Leaf("river")), Not(Leaf("blue"))
    )
    for d in ds:
        assert parse(d.label) == from_json(d.extras["formula"])
    assert by[0].score == pytest.approx(0.12) and by[0].score_name == "iou"
    assert by[0].extras["best_single"] == "water" and by[0].extras["best_single_iou"] == 0.09
    assert by[2].extras["best_single"] == "street"
    assert by[0].extras["raw_label"] == "((water OR river) AND (NOT blue-c))"
    assert by[0].extras["plain"] == "water or river and not blue"
    assert by[0].extras["length"] == 4 and by[0].extras["length_in_file"] == 4
    assert detect_format(path) == "compexp"
    # An explicit layer wins over the file name.
    assert read_labels(path, "compexp", layer="other")[0].unit.layer == "other"


def test_compexp_bad_formula(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tally_layer4.csv",
        "unit,category,label,score,length\n0,object,water,0.1,1\n1,object,((water OR river) AND,"
        "0.1,2\n",
    )
    with pytest.raises(DataError, match=r"tally_layer4\.csv: line 3: expected a compexp formula"):
        read_labels(path, "compexp")


def test_parse_compexp_formula_precedence() -> None:
    assert parse_compexp_formula("a OR b AND NOT c") == [
        "or",
        ["leaf", "a"],
        ["and", ["leaf", "b"], ["not", ["leaf", "c"]]],
    ]
    assert parse_compexp_formula("traffic  light-s") == ["leaf", "traffic light"]
    for bad in ("", "(a OR b", "a OR", "a b )"):
        with pytest.raises(ValueError):
            parse_compexp_formula(bad)
    assert milan_normalise_formula("((wine_cellar-s OR river) AND (NOT blue-c))") == (
        "wine cellar or river and not blue"
    )


def test_milan_descriptions(tmp_path: Path) -> None:
    text = (
        "layer,unit,description\n"
        "conv1,0,Fluorescent white generally in the background\n"
        "conv1,1,Yellow objects\n"
        'layer1,0,"Poles, legs and stripes"\n'
    )
    path = _write(tmp_path, "m_resnet152_imagenet.csv", text)
    ds = read_labels(path, "milan")
    assert [(d.unit, d.label) for d in ds] == [
        (UnitRef(layer="conv1", index=0), "Fluorescent white generally in the background"),
        (UnitRef(layer="conv1", index=1), "Yellow objects"),
        (UnitRef(layer="layer1", index=0), "Poles, legs and stripes"),
    ]
    assert all(d.score is None and d.ok for d in ds)
    only = read_labels(path, "milan", layer="layer1")
    assert [d.unit.layer for d in only] == ["layer1"]
    with pytest.raises(DataError, match="layers conv1, layer1"):
        read_labels(path, "milan", layer="layer9")
    assert detect_format(path) == "milan"


def test_clip_dissect_descriptions(tmp_path: Path) -> None:
    # CLIP-Dissect writes concept words with the leading space of its concept file.
    text = "layer,unit,description,similarity\nlayer4,1039, helmet,4.25\nlayer1,3, label,-0.5\n"
    path = _write(tmp_path, "descriptions.csv", text)
    info = import_labels(path, "clip-dissect")
    ds = info.descriptions
    assert [(d.unit, d.label, d.score, d.score_name) for d in ds] == [
        (UnitRef(layer="layer4", index=1039), "helmet", 4.25, "similarity"),
        (UnitRef(layer="layer1", index=3), "label", -0.5, "similarity"),
    ]
    assert info.layers == ("layer4", "layer1")
    prov = info.provenance()
    assert prov["format"] == "clip-dissect" and prov["units"] == 2 and len(prov["sha256"]) == 64
    assert detect_format(path) == "clip-dissect"
    # The files DnD ships have no similarity column.
    no_sim = _write(tmp_path, "rn152.csv", "layer,unit,description\nlayer1,0,wildlife\n")
    (d,) = read_labels(no_sim, "clip-dissect")
    assert d.label == "wildlife" and d.score is None and d.score_name is None


def test_dnd_final_results(tmp_path: Path) -> None:
    text = (
        "Neuron ID,Label 1,Label 2,Label 3\n"
        "6,diagonal black and white pattern,repetitive diagonal pattern,repetitive pattern\n"
        "84,repetitive black and white stripes, , \n"
    )
    path = _write(tmp_path, "final_results.csv", text)
    ds = read_labels(path, "dnd", layer="layer1")
    assert [(d.unit, d.label) for d in ds] == [
        (UnitRef(layer="layer1", index=6), "diagonal black and white pattern"),
        (UnitRef(layer="layer1", index=84), "repetitive black and white stripes"),
    ]
    assert ds[0].extras["candidates"] == [
        "diagonal black and white pattern",
        "repetitive diagonal pattern",
        "repetitive pattern",
    ]
    assert ds[1].extras["candidates"] == ["repetitive black and white stripes"]
    with pytest.raises(UsageError, match="layer"):
        read_labels(path, "dnd")
    assert detect_format(path) == "dnd"


def test_layer_from_per_layer_file_names(tmp_path: Path) -> None:
    from bench.imports import layer_in_file_name

    # DnD's published layouts: one file per layer, the layer in the name.
    assert layer_in_file_name("resnet152_imagenet_layer3.csv") == "layer3"
    assert layer_in_file_name("BLIP2-Layer1.csv") == "layer1"
    assert layer_in_file_name("resnet50_imagenet_broden_fc.csv") == "fc"
    assert layer_in_file_name("final_results.csv") is None
    assert layer_in_file_name("x_layer1_layer2.csv") is None  # ambiguous: not guessed
    assert layer_in_file_name("player10.csv") is None  # not a separate word
    text = "Neuron ID,Label 1,Label 2,Label 3\n6,stripes,lines,bars\n"
    path = _write(tmp_path, "resnet152_imagenet_layer2.csv", text)
    assert [d.unit for d in read_labels(path, "dnd")] == [UnitRef(layer="layer2", index=6)]
    # layer= still wins over the name.
    assert read_labels(path, "dnd", layer="layer4")[0].unit.layer == "layer4"


def test_dnd_fc_variant(tmp_path: Path) -> None:
    text = 'Neuron ID,label\n0,fishing and catching fish\n416,"""womens gymnastics"""\n'
    path = _write(tmp_path, "final_results.csv", text)
    ds = read_labels(path, "dnd", layer="fc")
    assert [(d.unit.index, d.label) for d in ds] == [
        (0, "fishing and catching fish"),
        (416, '"womens gymnastics"'),  # kept as DnD wrote it
    ]
    assert "candidates" not in ds[0].extras


def test_empty_label_is_an_error_record(tmp_path: Path) -> None:
    path = _write(tmp_path, "final_results.csv", "Neuron ID,label\n0,fish\n1, \n")
    ds = read_labels(path, "dnd", layer="fc")
    assert ds[0].ok and not ds[1].ok
    assert ds[1].label == "" and "line 3" in (ds[1].error or "")


@pytest.mark.parametrize(
    ("name", "text", "fmt", "match"),
    [
        (
            "labels.csv",
            "layer,unit,label\nconv1,0,red\n",
            "milan",
            r"labels\.csv: line 1: expected the columns layer, unit, description .*missing "
            r"description",
        ),
        (
            "labels.csv",
            "layer,unit,description\nconv1,0\n",
            "milan",
            r"labels\.csv: line 2: expected 3 columns \(layer,unit,description\), got 2",
        ),
        (
            "labels.csv",
            "layer,unit,description\nconv1,zero,red\n",
            "milan",
            r"line 2: expected an integer in column 'unit', got 'zero'",
        ),
        (
            "labels.csv",
            "layer,unit,description\nconv1,1,red\nconv1,1.0,blue\n",
            "milan",
            r"line 3: unit 1 of layer 'conv1' \(0-based\) appears again; first at line 2",
        ),
        (
            "labels.csv",
            "layer,unit,description\nconv1,1,red,extra\n",
            "milan",
            r"line 2: expected 3 columns",
        ),
        (
            "labels.csv",
            "layer,unit,description,similarity\nconv1,1,red,high\n",
            "clip-dissect",
            r"line 2: expected a number in column 'similarity', got 'high'",
        ),
        ("labels.csv", "", "milan", "empty file"),
        ("labels.csv", "layer,unit,description\n", "milan", "at least one unit"),
        (
            "labels.csv",
            "layer,unit,description\nconv1,0,red\n",
            "dnd",
            r"expected the columns Neuron ID.*It looks like a 'milan' file",
        ),
        ("labels.csv", "a,b\n1,2\n", "auto", "could not tell the format"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, text: str, fmt: str, match: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError, match=match):
        read_labels(path, fmt, layer="fc" if fmt == "dnd" else None)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.csv", "layer,unit,description\nconv1,0,red\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'milan'"):
        read_labels(path, "milam")
    with pytest.raises(DataError, match="found nothing"):
        read_labels(tmp_path / "missing.csv", "milan")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("layer,unit,description\nconv1,0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_labels(bad, "milan")


def test_strip_broden_suffix() -> None:
    assert strip_broden_suffix("red-c", "color") == "red"
    assert strip_broden_suffix("street-s", "scene") == "street"
    assert strip_broden_suffix("street-s", "object") == "street-s"
    assert strip_broden_suffix("-s", "scene") == "-s"


def test_every_format_is_documented_and_round_trips_json(tmp_path: Path) -> None:
    assert set(FORMATS) == {
        "netdissect-lite",
        "netdissect",
        "compexp",
        "milan",
        "clip-dissect",
        "dnd",
    }
    ds = read_labels(_write(tmp_path, "tally.csv", ND_LITE), "netdissect-lite", layer="l")
    assert [Description.from_json(d.to_json()) for d in ds] == ds
