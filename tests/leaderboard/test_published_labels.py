"""Labels several papers published for the same network, side by side in one leaderboard table.

The files are written here in the formats the papers publish them (MILAN's and CLIP-Dissect's
``layer,unit,description`` CSVs, DnD's per-layer ``final_results.csv`` files named
``..._layer1.csv``, ``..._layer2.csv``), imported and scored on the same annotations, then built
into one site: one table with every method and ``depictions`` and paired significance groups.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from bench.results import read_suite_result
from bench.suites.scoring import ScoreOptions, score_labels
from leaderboard.build import build

OPTIONS = ScoreOptions(n_resamples=500, device="cpu")
TARGET = "resnet152"

#: (layer, unit) -> three annotations
ANNOTATIONS = {
    ("layer1", 0): ("red and orange stripes", "stripes", "orange lines"),
    ("layer1", 1): ("dog faces", "animals", "dog heads"),
    ("layer1", 2): ("blue sky", "the sky", "sky above trees"),
    ("layer1", 3): ("green grass", "grass fields", "lawn"),
    ("layer2", 0): ("car wheels", "wheels", "tires of cars"),
    ("layer2", 1): ("text and letters", "writing", "printed words"),
    ("layer2", 2): ("water surface", "the sea", "ocean waves"),
    ("layer2", 3): ("human faces", "faces of people", "eyes and noses"),
}
MILAN = ["orange stripes", "dog heads", "sky", "grass", "wheels", "letters", "water", "faces"]
CLIP_DISSECT = ["stripes", "dogs", "sky", "lawn", "tires", "text", "sea", "face"]
DND = ["striped patterns", "dog faces", "blue sky", "green grass", "car wheels", "writing",
       "ocean", "people"]  # fmt: skip


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _inputs(root: Path) -> dict[str, object]:
    units = list(ANNOTATIONS)
    ann = _csv(
        root / "data" / "annotations.csv",
        ["layer", "unit", "summary"],
        [[la, u, t] for (la, u), texts in ANNOTATIONS.items() for t in texts],
    )
    milan = _csv(
        root / "data" / "milan" / "m_resnet152_imagenet.csv",
        ["layer", "unit", "description"],
        [[la, u, MILAN[i]] for i, (la, u) in enumerate(units)],
    )
    clip = _csv(
        root / "data" / "clip-dissect" / "resnet152_imagenet.csv",
        ["layer", "unit", "description", "similarity"],
        [[la, u, CLIP_DISSECT[i], 0.5] for i, (la, u) in enumerate(units)],
    )
    dnd = []
    for layer in ("layer1", "layer2"):
        rows = [[u, DND[i], "other", "another"] for i, (la, u) in enumerate(units) if la == layer]
        dnd.append(
            _csv(
                root / "data" / "dnd" / f"resnet152_imagenet_{layer}.csv",
                ["Neuron ID", "Label 1", "Label 2", "Label 3"],
                rows,
            )
        )
    return {"annotations": ann, "milan": milan, "clip": clip, "dnd": dnd}


def _score(labels, fmt: str, out: Path, ann: Path, **config: object) -> Path:
    report = score_labels(
        labels,
        fmt,
        target=TARGET,
        suite="milannotations",
        out=out,
        options=OPTIONS,
        suite_config={"milannotations": {"annotations": str(ann), **config}},
    )
    return report.results["milannotations"]


def _sections(html: str) -> list[str]:
    pattern = r'<section class="suite" id="[^"]*" data-suite="milannotations">.*?</section>'
    return re.findall(pattern, html, flags=re.S)


def _rows(section: str) -> dict[str, str]:
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return dict(re.findall(r'<tr data-method="([^"]+)">(.*?)</tr>', body, flags=re.S))


@pytest.fixture()
def imported(tmp_path: Path) -> dict[str, object]:
    inputs = _inputs(tmp_path)
    ann = inputs["annotations"]
    results = {
        "milan": _score(inputs["milan"], "milan", tmp_path / "runs" / "milan", ann),
        "clip": _score(inputs["clip"], "clip-dissect", tmp_path / "runs" / "clip", ann),
        # DnD publishes one file per layer: a glob takes both, the layer from each name.
        "dnd": _score(
            str(tmp_path / "data" / "dnd" / "resnet152_imagenet_layer*.csv"),
            "dnd",
            tmp_path / "runs" / "dnd",
            ann,
        ),
    }
    return {**inputs, "results": results}


def test_three_published_files_share_one_table_with_paired_groups(
    imported: dict[str, object], tmp_path: Path
) -> None:
    dnd = read_suite_result(imported["results"]["dnd"])
    assert {u.unit.layer for u in dnd.units} == {"layer1", "layer2"}  # from the file names
    assert len(dnd.units) == 8 and dnd.methods["dnd"].source.startswith("2 files (dnd)")
    site = build([tmp_path / "runs"], tmp_path / "site")
    html = site.read_text(encoding="utf-8")
    sections = _sections(html)
    assert len(sections) == 1, "comparable results must share one table"
    rows = _rows(sections[0])
    assert set(rows) == {"milan", "clip-dissect", "dnd", "depictions"}
    for name, row in rows.items():
        # every method has a mean, an interval and a significance group in every metric
        # bertscore and sentence-cosine, and identification's top-1 and reciprocal rank
        assert row.count('class="grp"') == 4, name
        assert ">8 / 8<" in row, name  # its coverage
    assert "merged from 3 comparable results" in sections[0]
    assert "over the 8 units every method was scored on" in sections[0]
    # The groups are the paired groups of all four methods together, not of each file apart.
    data = json.loads(
        re.search(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1)
    )
    (sec,) = data["sections"]
    assert sorted(sec["run_ids"]) == sorted(
        read_suite_result(p).run.run_id for p in imported["results"].values()
    )
    from metrics.stats import significance_groups

    merged = next(m for m in sec["metrics"] if m["name"] == "sentence-cosine")
    per_unit = {
        name: [
            u.scores["sentence-cosine"][name]
            for u in sorted(read_suite_result(p).units, key=lambda u: (u.unit.layer, u.unit.index))
        ]
        for name, p in (
            ("milan", imported["results"]["milan"]),
            ("clip-dissect", imported["results"]["clip"]),
            ("dnd", imported["results"]["dnd"]),
        )
    }
    per_unit["depictions"] = [
        u.scores["sentence-cosine"]["depictions"]
        for u in sorted(
            read_suite_result(imported["results"]["milan"]).units,
            key=lambda u: (u.unit.layer, u.unit.index),
        )
    ]
    expected = significance_groups(per_unit, n_resamples=500, seed=0)
    assert {m: v["group"] for m, v in merged["per_method"].items()} == expected.group
    assert all(v["n"] == 8 for v in merged["per_method"].values())
    # The contents list names suite, target and methods; imports have no cost to plot.
    nav = html.split("<nav>", 1)[1].split("</nav>", 1)[0]
    for name in ("milannotations", TARGET, "milan", "clip-dissect", "dnd", "depictions"):
        assert name in nav, name
    assert "imported labels: no cost measured" in html  # the cost cell says why it is empty
    assert "No quality-against-cost plot: no method but the constant baseline" in sections[0]
    assert "clip-dissect (imported labels)" in sections[0]


def test_units_only_some_methods_labelled_are_compared_on_the_shared_ones(
    imported: dict[str, object], tmp_path: Path
) -> None:
    # Only DnD's layer1 file: 4 of the 8 units.
    shutil.rmtree(tmp_path / "runs" / "dnd")
    _score(imported["dnd"][0], "dnd", tmp_path / "runs" / "dnd", imported["annotations"])
    site = build([tmp_path / "runs"], tmp_path / "site")
    (section,) = _sections(site.read_text(encoding="utf-8"))
    rows = _rows(section)
    assert ">4 / 8<" in rows["dnd"] and ">8 / 8<" in rows["milan"]
    assert "over the 4 units every method was scored on of 8" in section
    assert all('title="n = 4"' in row for row in rows.values())


def test_the_same_labels_under_two_settings_are_two_tables(
    imported: dict[str, object], tmp_path: Path
) -> None:
    ann = imported["annotations"]
    a = _score(imported["milan"], "milan", tmp_path / "v" / "all", ann)
    b = _score(imported["milan"], "milan", tmp_path / "v" / "dnd", ann, protocol="dnd")
    assert read_suite_result(a).run.run_id != read_suite_result(b).run.run_id
    site = build([a, b], tmp_path / "site")  # no refusal
    html = site.read_text(encoding="utf-8")
    sections = _sections(html)
    assert len(sections) == 2
    heads = [re.search(r"<h2>(.*?)</h2>", s, re.S).group(1) for s in sections]
    assert any("protocol = all" in h for h in heads), heads
    assert any("protocol = dnd" in h for h in heads), heads


def test_final_layer_class_name_settings_are_two_tables(tmp_path: Path) -> None:
    labels = _csv(
        tmp_path / "in" / "descriptions.csv",
        ["layer", "unit", "description"],
        [["fc", i, name] for i, name in enumerate(["fish", "shark", "bird"])],
    )
    names = _csv(
        tmp_path / "in" / "names.txt", ["class 0"], [[f"class {i}"] for i in range(1, 1000)]
    )
    outs = []
    for i, class_names in enumerate(("target", str(names))):
        report = score_labels(
            labels,
            "milan",
            target="resnet50",
            suite="final-layer",
            out=tmp_path / "runs" / str(i),
            options=OPTIONS,
            suite_config={"final-layer": {"class_names": class_names}},
        )
        outs.append(report.results["final-layer"])
    # The same labels, so the same method; two settings, so two results and two tables.
    site = build([tmp_path / "runs"], tmp_path / "site")
    html = site.read_text(encoding="utf-8")
    sections = re.findall(r'<section class="suite" id="[^"]*" data-suite="final-layer">', html)
    assert len(sections) == 2
    nav = html.split("<nav>", 1)[1].split("</nav>", 1)[0]
    assert "final-layer \u00b7 resnet50 \u00b7 class_names = target<" in nav
    assert "final-layer \u00b7 resnet50 \u00b7 class_names = names.txt<" in nav


def test_no_page_or_result_file_holds_an_input_path(
    imported: dict[str, object], tmp_path: Path
) -> None:
    site = build([tmp_path / "runs"], tmp_path / "site")
    published = [*(tmp_path / "site").rglob("*"), *(tmp_path / "runs").rglob("suites/*.json")]
    published = [p for p in published if p.is_file()]
    assert site in published and len(published) > 3
    inputs = [imported["annotations"], imported["milan"], imported["clip"], *imported["dnd"]]
    for p in published:
        text = p.read_bytes().decode("utf-8", errors="replace")
        for f in inputs:
            assert str(f) not in text, (p, f)
            assert str(f.parent) not in text, (p, f.parent)
        assert str(tmp_path) not in text, p
    # The names and content hashes are there instead.
    html = site.read_text(encoding="utf-8")
    assert "annotations.csv" in html and "resnet152_imagenet_layer2.csv" in html


def test_pages_cut_paths_from_older_result_files(
    imported: dict[str, object], tmp_path: Path
) -> None:
    # A result file written before paths were kept out of them: its run's provenance and its
    # suite settings still name this machine's directories.
    path = imported["results"]["milan"]
    d = json.loads(path.read_text(encoding="utf-8"))
    d["run"]["provenance"]["cache_dir"] = str(tmp_path / "cache")
    d["settings"]["suite"]["config"]["annotations"] = str(imported["annotations"])
    path.write_text(json.dumps(d), encoding="utf-8")
    build([tmp_path / "runs"], tmp_path / "site")
    for page in (tmp_path / "site").rglob("*.html"):
        assert str(tmp_path) not in page.read_text(encoding="utf-8"), page
