"""Probe-set loaders on tiny data written by the tests in the real formats."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import struct
import sys
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.errors import DataError, DownloadError, UnknownNameError, UsageError
from bench.probes import BRODEN_DEFAULT_CATEGORIES, parse_probe_options, register_builtin_probes
from bench.probes.broden import BrodenProbe, clean_name
from bench.probes.cifar import CIFAR, CifarProbe, read_cifar_pickle
from bench.probes.imagefolder import ImageFolderProbe
from bench.registry import PROBES

# --- Broden ------------------------------------------------------------------------------------

SH = SW = 4
INDEX_HEADER = "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture"
LABELS = [
    # number, name, category, frequency, coverage, syns   (label.csv)
    (1, "red-c", "color(3)"),
    (2, "sky", "object(5)"),
    (3, "pool-table", "object(1)"),
    (21, "fabric", "material(36);object(3)"),
    (300, "wheel", "part(4)"),
    (513, "door", "part(2);object(1)"),
    (1000, "street-s", "scene(1)"),
    (1001, "striped", "texture(1)"),
    (1002, "banded", "texture(1)"),
]


def _write_png_labels(path: Path, labels: np.ndarray) -> None:
    """A Broden segmentation PNG: label number = R + 256*G."""
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _seg(*values: int) -> np.ndarray:
    """A 4x4 label map from 16 values (row-major)."""
    return np.asarray(values, dtype=np.int32).reshape(SH, SW)


SEGS = {
    "ade/a_color.png": _seg(*([1] * 8 + [0] * 8)),
    "ade/a_object.png": _seg(*([2] * 4 + [21] * 4 + [3] * 4 + [513] * 4)),
    "ade/a_part_1.png": _seg(*([0] * 12 + [300] * 4)),
    "ade/a_part_2.png": _seg(*([0] * 14 + [513] * 2)),
    "os/b_material.png": _seg(*([21] * 16)),
    "ade/c_object.png": _seg(*([2, 0] * 8)),
}


def make_broden(root: Path, *, index_rows: list[str] | None = None) -> Path:
    images = root / "images"
    for rel in ("ade/a.jpg", "os/b.jpg", "dtd/c.png"):
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    for rel, labels in SEGS.items():
        _write_png_labels(images / rel, labels)
    rows = index_rows or [
        "ade/a.jpg,train,8,8,4,4,ade/a_color.png,ade/a_object.png,"
        "ade/a_part_1.png;ade/a_part_2.png,,1000,",
        "os/b.jpg,train,8,8,4,4,,,,os/b_material.png,,",
        "dtd/c.png,val,8,8,4,4,,ade/c_object.png,,,,1001;1002",
    ]
    (root / "index.csv").write_text("\n".join([INDEX_HEADER, *rows]) + "\n")
    label_lines = ["number,name,category,frequency,coverage,syns"]
    label_lines += [f'{n},{name},{cat},5,1.5,""' for n, name, cat in LABELS]
    (root / "label.csv").write_text("\n".join(label_lines) + "\n")
    (root / "category.csv").write_text(
        "name,first,last,count,frequency\n"
        + "".join(
            f"{c},1,1002,1,1\n" for c in ("color", "object", "part", "material", "scene", "texture")
        )
    )
    (root / "c_object.csv").write_text("code,number,name,frequency,coverage\n1,2,sky,5,1\n")
    return root


@pytest.fixture()
def broden(tmp_path: Path) -> Path:
    return make_broden(tmp_path / "broden")


def test_broden_round_trips_pixel_and_image_labels(broden: Path) -> None:
    probe = BrodenProbe(broden)
    assert len(probe) == 3 and probe.fixed_geometry and probe.has_segmentations
    assert probe.seg_size == (SH, SW)
    assert probe.categories() == ["color", "object", "part", "material", "scene", "texture"]
    seg = probe.segmentation(0)
    assert set(seg.pixel) == {"color", "object", "part"}
    for cat, rels in [
        ("color", ["ade/a_color.png"]),
        ("object", ["ade/a_object.png"]),
        ("part", ["ade/a_part_1.png", "ade/a_part_2.png"]),
    ]:
        assert seg.pixel[cat].dtype == np.int32
        assert seg.pixel[cat].shape == (len(rels), SH, SW)
        np.testing.assert_array_equal(seg.pixel[cat], np.stack([SEGS[r] for r in rels]))
    # 513 = R 1 + 256*G 2: only R + 256*G in int32 gives it back.
    assert 513 in seg.pixel["object"] and 300 in seg.pixel["part"]
    assert seg.image == {"scene": (1000,)}
    seg1 = probe.segmentation(1)
    assert set(seg1.pixel) == {"material"} and seg1.image == {}
    np.testing.assert_array_equal(seg1.pixel["material"][0], SEGS["os/b_material.png"])
    seg2 = probe.segmentation(2)
    assert seg2.image == {"texture": (1001, 1002)}
    img = probe.load_image(2)
    assert img.mode == "RGB" and img.size == (8, 8) and img.getpixel((3, 3)) == (10, 20, 30)


def test_broden_decodes_large_label_numbers_without_overflow(tmp_path: Path) -> None:
    from bench.probes.broden import decode_segmentation_png

    labels = _seg(*range(65535 - 15, 65536))
    _write_png_labels(tmp_path / "x.png", labels)
    np.testing.assert_array_equal(decode_segmentation_png(tmp_path / "x.png"), labels)


def test_broden_concepts_clean_names_and_primary_categories(broden: Path) -> None:
    concepts = {c.number: c for c in BrodenProbe(broden).concepts()}
    assert sorted(concepts) == [n for n, _, _ in LABELS]
    assert (concepts[1].name, concepts[1].raw_name, concepts[1].category) == (
        "red",
        "red-c",
        "color",
    )
    assert concepts[1000].name == "street" and concepts[1000].category == "scene"
    assert concepts[3].name == "pool-table"  # a hyphen that is not a category suffix stays
    assert concepts[21].category == "material"  # material(36) beats object(3)
    assert concepts[21].categories == ("material", "object")
    assert concepts[513].category == "part"
    assert concepts[1001].name == "striped" and concepts[1001].category == "texture"


def test_clean_name_strips_only_the_category_suffix() -> None:
    assert clean_name("red-c", ["color"]) == "red"
    assert clean_name("bedroom-s", ["scene"]) == "bedroom"
    assert clean_name("wood-m", ["material"]) == "wood"
    assert clean_name("dress-s", ["object"]) == "dress-s"  # "-s" is the scene suffix, not object's
    assert clean_name("t-shirt", ["object"]) == "t-shirt"


def test_broden_category_filter(broden: Path) -> None:
    probe = BrodenProbe(broden, categories=["object", "scene"])
    assert probe.categories() == ["object", "scene"]
    seg = probe.segmentation(0)
    assert set(seg.pixel) == {"object"} and seg.image == {"scene": (1000,)}
    assert probe.segmentation(2).image == {}
    concepts = {c.number: c for c in probe.concepts()}
    assert sorted(concepts) == [2, 3, 21, 513, 1000]
    # Among the selected categories, fabric is an object and door an object.
    assert concepts[21].category == "object" and concepts[21].categories == ("object",)
    assert concepts[513].category == "object"
    with pytest.raises(UsageError, match="colour"):
        BrodenProbe(broden, categories=["colour"])


def _write_c_files(root: Path, rows: dict[str, list[tuple[int, str, str]]]) -> None:
    """c_<category>.csv with (number, name, coverage) rows; every other c_*.csv is removed."""
    for old in root.glob("c_*.csv"):
        old.unlink()
    for cat, entries in rows.items():
        lines = ["code,number,name,frequency,coverage"]
        lines += [f"{i},{n},{name},5,{cov}" for i, (n, name, cov) in enumerate(entries, 1)]
        (root / f"c_{cat}.csv").write_text("\n".join(lines) + "\n")


def test_broden_primary_category_by_coverage(broden: Path) -> None:
    # label.csv says fabric is material(36);object(3) and door part(2);object(1); the coverage
    # in c_<category>.csv says otherwise, and coverage decides (as NetDissect-Lite does).
    _write_c_files(
        broden,
        {
            "object": [(2, "sky", "9.0"), (21, "fabric", "4.5"), (513, "door", "3.25")],
            "material": [(21, "fabric", "0.75")],
            "part": [(300, "wheel", "1.0"), (513, "door", "0.5")],
            "color": [(1, "red-c", "2")],
        },
    )
    concepts = {c.number: c for c in BrodenProbe(broden).concepts()}
    assert concepts[21].category == "object"
    assert concepts[21].categories == ("material", "object")  # as label.csv lists them
    assert concepts[513].category == "object"
    assert concepts[1].category == "color" and concepts[2].category == "object"
    # Only the selected categories compete.
    only = {c.number: c for c in BrodenProbe(broden, categories=["material", "part"]).concepts()}
    assert only[21].category == "material" and only[513].category == "part"


def _write_category_csv(root: Path, order: list[str]) -> None:
    (root / "category.csv").write_text(
        "name,first,last,count,frequency\n" + "".join(f"{c},1,1002,1,1\n" for c in order)
    )


def test_broden_primary_category_ties_follow_category_csv_order(broden: Path) -> None:
    """On a coverage tie, NetDissect-Lite picks the category that comes last in category.csv
    (its max over (coverage, position) pairs), whatever index.csv's column order."""
    _write_c_files(
        broden,
        {
            "object": [(21, "fabric", "2.0"), (513, "door", "1.5")],
            "material": [(21, "fabric", "2.0")],
            "part": [(513, "door", "1.5")],
        },
    )
    # index.csv: color,object,part,material,... (object first).
    _write_category_csv(broden, ["object", "color", "material", "part", "scene", "texture"])
    for cats in (None, ["material", "part", "object"]):
        concepts = {c.number: c for c in BrodenProbe(broden, categories=cats).concepts()}
        assert concepts[21].category == "material", cats
        assert concepts[513].category == "part", cats
    _write_category_csv(broden, ["material", "part", "object", "color", "scene", "texture"])
    for cats in (None, ["material", "part", "object"]):
        concepts = {c.number: c for c in BrodenProbe(broden, categories=cats).concepts()}
        assert concepts[21].category == "object", cats
        assert concepts[513].category == "object", cats
    # Without category.csv, index.csv's order stands in: material and part come after object.
    (broden / "category.csv").unlink()
    concepts = {c.number: c for c in BrodenProbe(broden).concepts()}
    assert concepts[21].category == "material" and concepts[513].category == "part"


def test_broden_identity_follows_the_category_order(broden: Path) -> None:
    """category.csv breaks ties, so it is part of the identity, but only when its order differs
    from index.csv's (the usual case keeps its identity)."""
    same = BrodenProbe(broden).identity()
    _write_category_csv(broden, ["color", "object", "part", "material", "scene", "texture"])
    assert BrodenProbe(broden).identity() == same
    _write_category_csv(broden, ["object", "color", "part", "material", "scene", "texture"])
    assert BrodenProbe(broden).identity() != same


def test_broden_primary_category_falls_back_to_label_counts(broden: Path) -> None:
    # c_material.csv is missing: fabric's primary category comes from label.csv's counts.
    _write_c_files(broden, {"object": [(21, "fabric", "4.5"), (513, "door", "3.0")]})
    concepts = {c.number: c for c in BrodenProbe(broden).concepts()}
    assert concepts[21].category == "material"  # material(36) beats object(3)
    assert concepts[513].category == "part"  # no c_part.csv either: part(2) beats object(1)
    # A label that none of its categories' files list also falls back to the counts.
    _write_c_files(broden, {"object": [(2, "sky", "1")], "material": [(9, "x", "1")]})
    assert {c.number: c for c in BrodenProbe(broden).concepts()}[21].category == "material"


def test_broden_malformed_coverage(tmp_path: Path) -> None:
    for bad in ("", "lots", "nan", "-1"):
        root = make_broden(tmp_path / f"b{len(bad)}{bad}")
        _write_c_files(root, {"object": [(2, "sky", "1.0"), (21, "fabric", bad)]})
        msg = _error(root)
        assert "c_object.csv: line 3" in msg and "'coverage'" in msg, msg
    root = make_broden(tmp_path / "nocol")
    (root / "c_object.csv").write_text("code,number,name\n1,2,sky\n")
    msg = _error(root)
    assert "c_object.csv: line 1" in msg and "coverage" in msg


def test_broden_identity_follows_category_files(broden: Path) -> None:
    before = BrodenProbe(broden).identity()
    _write_c_files(broden, {"object": [(2, "sky", "1.0"), (21, "fabric", "9.0")]})
    assert BrodenProbe(broden).identity() != before


def test_broden_identity_and_max_images(broden: Path) -> None:
    a, b = BrodenProbe(broden), BrodenProbe(broden)
    assert a.identity() == b.identity()
    small = BrodenProbe(broden, max_images=2)
    assert len(small) == 2 and small.identity() != a.identity()
    assert BrodenProbe(broden, categories=["object"]).identity() != a.identity()
    label = broden / "label.csv"
    label.write_text(label.read_text().replace("pool-table", "pool_table"))
    assert BrodenProbe(broden).identity() != a.identity()


def _error(root: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        probe = BrodenProbe(root, **kwargs)  # type: ignore[arg-type]
        for i in range(len(probe)):
            probe.segmentation(i)
            probe.load_image(i)
    return str(info.value)


def test_broden_malformed_index(tmp_path: Path) -> None:
    root = make_broden(tmp_path / "b1")
    (root / "index.csv").write_text("image,split,ih,iw,sh,object\nade/a.jpg,train,8,8,4,\n")
    msg = _error(root)
    assert "index.csv" in msg and "line 1" in msg and "sw" in msg

    root = make_broden(
        tmp_path / "b2",
        index_rows=[
            "ade/a.jpg,train,8,8,4,4,,,,,1000,",
            "os/b.jpg,train,8,8,4,4,,,,,30x,",
        ],
    )
    msg = _error(root)
    assert "index.csv: line 3" in msg and "'scene'" in msg and "30x" in msg

    root = make_broden(tmp_path / "b3", index_rows=["ade/a.jpg,train,8,8,four,4,,,,,,"])
    msg = _error(root)
    assert "line 2" in msg and "'sh'" in msg and "four" in msg

    root = make_broden(
        tmp_path / "b4",
        index_rows=[
            "ade/a.jpg,train,8,8,4,4,,,,,,",
            "os/b.jpg,train,8,8,2,2,,,,,,",
        ],
    )
    assert "same segmentation size" in _error(root)

    root = make_broden(tmp_path / "b5", index_rows=["ade/a.jpg,train,8,8,4,4,,,,"])
    msg = _error(root)
    assert "line 2" in msg and "expected 12 fields" in msg


def test_broden_missing_files(tmp_path: Path) -> None:
    root = make_broden(
        tmp_path / "b1",
        index_rows=[
            "ade/a.jpg,train,8,8,4,4,,ade/missing_object.png,,,,",
        ],
    )
    msg = _error(root)
    assert "index.csv: line 2" in msg and "images/ade/missing_object.png" in msg

    root = make_broden(tmp_path / "b2")
    (root / "label.csv").unlink()
    assert "label.csv" in _error(root)


def test_broden_malformed_label_csv(tmp_path: Path) -> None:
    root = make_broden(tmp_path / "b")
    (root / "label.csv").write_text("number,name,category\n1,red-c,color(3)\n2x,sky,object(5)\n")
    msg = _error(root)
    assert "label.csv: line 3" in msg and "'number'" in msg
    (root / "label.csv").write_text("number,name,category\n1,red-c,color 3\n")
    assert "label.csv: line 2" in _error(root)


def test_broden_segmentation_size_mismatch(tmp_path: Path) -> None:
    root = make_broden(tmp_path / "b")
    _write_png_labels(root / "images" / "os" / "b_material.png", np.ones((2, 2), np.int32))
    msg = _error(root)
    assert "line 3" in msg and "b_material.png" in msg


def _broden_zip(tmp_path: Path, name: str = "broden1_224") -> bytes:
    """A tiny Broden zip laid out as the published one: a top-level ``<name>/`` folder."""
    import zipfile

    src = make_broden(tmp_path / "src")
    zpath = tmp_path / "served.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f"{name}/{f.relative_to(src).as_posix()}")
    return zpath.read_bytes()


def test_fetch_broden_downloads_pins_and_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_bytes
) -> None:
    import bench.probes.broden as broden_module

    body = _broden_zip(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    base, hits = serve_bytes(body)
    url = f"{base}/data/{{name}}.zip"
    monkeypatch.setattr(broden_module, "BRODEN_URL", url)
    register_builtin_probes()
    probe = PROBES.get("broden")(None, download=True)  # the factory fetches into the cache
    assert hits == ["/data/broden1_224.zip"]
    assert isinstance(probe, BrodenProbe) and len(probe) == 3
    datasets = cache / "datasets"
    assert probe.root == datasets / "broden1_224" / "broden1_224"
    record = datasets / "broden1_224.zip.sha256.json"
    assert hashlib.sha256(body).hexdigest() in record.read_text()
    # Found in the cache the second time: no request, no --download needed.
    assert len(PROBES.get("broden")(None)) == 3
    assert broden_module.fetch_broden("broden1_224", datasets) == probe.root
    assert hits == ["/data/broden1_224.zip"]


def test_bench_data_fetch_broden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_bytes, capsys: pytest.CaptureFixture
) -> None:
    import bench.probes.broden as broden_module

    body = _broden_zip(tmp_path)
    base, hits = serve_bytes(body)
    monkeypatch.setattr(broden_module, "BRODEN_URL", f"{base}/data/{{name}}.zip")
    dest = tmp_path / "data"
    assert main(["data", "fetch", "broden1_224", "--dest", str(dest)]) == 0
    printed = capsys.readouterr().out.strip()
    root = dest / "broden1_224" / "broden1_224"
    assert printed == str(root) and (root / "index.csv").is_file()
    assert hits == ["/data/broden1_224.zip"]
    assert hashlib.sha256(body).hexdigest() in (dest / "broden1_224.zip.sha256.json").read_text()
    # Already there: the same path, no second download.
    assert main(["data", "fetch", "broden1_224", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert hits == ["/data/broden1_224.zip"]
    # The printed path is what --probe-root takes.
    assert len(PROBES.get("broden")(Path(printed))) == 3

    assert main(["data", "list", "--dest", str(dest)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    from bench.milannotations import REAL_KEYS

    milan = {"milannotations-" + k.replace("/", "-") for k in REAL_KEYS}
    assert set(rows) == {"broden1_224", "broden1_227", "cifar10", "cifar100"} | milan
    assert all("missing" in rows[name] for name in milan)
    assert "present" in rows["broden1_224"] and str(root) in rows["broden1_224"]
    assert "1 GB" in rows["broden1_224"]
    for name in ("broden1_227", "cifar10", "cifar100"):
        assert "missing" in rows[name], rows[name]


def test_bench_data_fetch_defaults_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_bytes, capsys: pytest.CaptureFixture
) -> None:
    import bench.probes.broden as broden_module

    base, hits = serve_bytes(_broden_zip(tmp_path, "broden1_227"))
    monkeypatch.setattr(broden_module, "BRODEN_URL", f"{base}/data/{{name}}.zip")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "fetch", "broden1_227"]) == 0
    root = tmp_path / "cache" / "datasets" / "broden1_227" / "broden1_227"
    assert capsys.readouterr().out.strip() == str(root)
    assert hits == ["/data/broden1_227.zip"]
    # The probe set finds it there by name, without --probe-root.
    probe = PROBES.get("broden")(None, name="broden1_227")
    assert isinstance(probe, BrodenProbe) and probe.root == root


def test_bench_data_fetch_unknown_name(
    tmp_path: Path, serve_bytes, capsys: pytest.CaptureFixture
) -> None:
    from bench.datasets import fetch_dataset

    dest = tmp_path / "data"
    assert main(["data", "fetch", "broden1_225", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown dataset 'broden1_225'")
    assert "Available: broden1_224, broden1_227, cifar10, cifar100, milannotations-" in err
    assert "Did you mean" in err
    assert not dest.exists()
    with pytest.raises(UnknownNameError):
        fetch_dataset("imagenet", dest)


# --- ImageFolder -------------------------------------------------------------------------------


def _make_image_folder(root: Path) -> Path:
    files = {
        "b_cls/z.png": (1, 1, 1),
        "b_cls/a.jpg": (2, 2, 2),
        "b_cls/sub/c.png": (3, 3, 3),
        "a_cls/y.PNG": (4, 4, 4),
        "c_cls/x.bmp": (5, 5, 5),
    }
    for rel, colour in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 3), colour).save(path, format="BMP" if rel.endswith("bmp") else None)
    (root / "b_cls" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_order_matches_torchvision(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = _make_image_folder(tmp_path / "val")
    probe = ImageFolderProbe(root)
    reference = ImageFolder(str(root))
    assert probe.class_names == reference.classes == ["a_cls", "b_cls", "c_cls"]
    assert [str(probe.path(i)) for i in range(len(probe))] == [p for p, _ in reference.samples]
    assert probe.labels.tolist() == [t for _, t in reference.samples] == [0, 1, 1, 1, 2]
    assert probe.labels.dtype == np.int64
    assert not probe.fixed_geometry and not probe.has_segmentations
    assert probe.load_image(0).getpixel((0, 0)) == (4, 4, 4)


def test_image_folder_identity_and_max_images(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "val")
    ident = ImageFolderProbe(root).identity()
    assert ImageFolderProbe(root).identity() == ident
    assert len(ImageFolderProbe(root, max_images=2)) == 2
    assert ImageFolderProbe(root, max_images=2).identity() != ident
    Image.new("RGB", (9, 9), (0, 0, 0)).save(root / "c_cls" / "x.bmp", format="BMP")
    assert ImageFolderProbe(root).identity() != ident  # a file's size changed


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found nothing"):
        ImageFolderProbe(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="Expected images"):
        ImageFolderProbe(tmp_path / "empty")


# --- CIFAR -------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the published batches were."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_pickle(obj: object) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # The batches were written by NumPy 1, which lived at numpy.core.
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10_archive(path: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-python.tar.gz in the published layout, 2 images per train batch, 3 test."""
    content: dict[str, tuple[np.ndarray, list[int]]] = {}
    members: dict[str, bytes] = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = 3 if name == "test_batch" else 2
        data, labels = _cifar_images(n, i), [(i + j) % 10 for j in range(n)]
        content[name] = (data, labels)
        members[name] = _py2_pickle(
            {
                "batch_label": f"batch {i}",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{i}_{j}.png" for j in range(n)],
            }
        )
    members["batches.meta"] = _py2_pickle(
        {
            "num_cases_per_batch": 2,
            "num_vis": 3072,
            "label_names": [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
        }
    )
    members["readme.html"] = b"<html></html>"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return content


def test_cifar_batches_are_python2_pickles_with_bytes_keys(tmp_path: Path) -> None:
    make_cifar10_archive(tmp_path / "c.tar.gz")
    with tarfile.open(tmp_path / "c.tar.gz") as tf:
        raw = tf.extractfile("cifar-10-batches-py/test_batch").read()  # type: ignore[union-attr]
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"U\x04data" in raw
    (tmp_path / "t").write_bytes(raw)
    batch = read_cifar_pickle(tmp_path / "t")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}


def test_cifar10_reads_images_and_labels(tmp_path: Path) -> None:
    from bench.download import safe_extract

    content = make_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    safe_extract(tmp_path / "cifar-10-python.tar.gz", tmp_path / "data")
    test = CifarProbe(tmp_path / "data", name="cifar10", split="test")
    data, labels = content["test_batch"]
    assert len(test) == 3 and test.labels.tolist() == labels
    assert test.class_names[:3] == ["airplane", "automobile", "bird"]
    for n in range(3):
        img = np.asarray(test.load_image(n))
        assert img.shape == (32, 32, 3)
        for y, x, c in [(0, 0, 0), (0, 31, 1), (5, 7, 2), (31, 0, 0), (31, 31, 2)]:
            assert img[y, x, c] == data[n, c * 1024 + y * 32 + x]
    train = CifarProbe(tmp_path / "data", name="cifar10", split="train")
    assert len(train) == 10
    assert train.labels.tolist() == sum((content[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    np.testing.assert_array_equal(
        np.asarray(train.load_image(9)).transpose(2, 0, 1).reshape(-1),
        content["data_batch_5"][0][1],
    )
    assert train.identity() != test.identity()
    assert test.identity() == CifarProbe(tmp_path / "data", split="test").identity()
    assert not test.fixed_geometry


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = _cifar_images(4, 7)
    (folder / "test").write_bytes(
        _py2_pickle(
            {
                "filenames": ["a", "b", "c", "d"],
                "batch_label": "testing batch 1 of 1",
                "fine_labels": [99, 0, 5, 5],
                "coarse_labels": [1, 2, 3, 4],
                "data": data,
            }
        )
    )
    (folder / "train").write_bytes(b"")
    (folder / "meta").write_bytes(
        _py2_pickle(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            }
        )
    )
    probe = CifarProbe(tmp_path, name="cifar100")
    assert probe.labels.tolist() == [99, 0, 5, 5]
    assert len(probe.class_names) == 100 and probe.class_names[99] == "fine99"


def test_cifar_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        CifarProbe(tmp_path, name="cifar10")
    msg = str(info.value)
    assert "--download" in msg and CIFAR["cifar10"].url in msg and "cifar-10-batches-py" in msg


def test_cifar_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        read_cifar_pickle(path)


@pytest.fixture()
def archive_server(tmp_path: Path, serve_bytes) -> Iterator[tuple[str, bytes]]:
    make_cifar10_archive(tmp_path / "served.tar.gz")
    body = (tmp_path / "served.tar.gz").read_bytes()
    base, _ = serve_bytes(body)
    yield f"{base}/cifar-10-python.tar.gz", body


def test_cifar_download_checks_md5_and_extracts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive_server: tuple[str, bytes]
) -> None:
    url, body = archive_server
    good = dataclasses.replace(CIFAR["cifar10"], url=url, md5=hashlib.md5(body).hexdigest())
    monkeypatch.setitem(CIFAR, "cifar10", good)
    root = tmp_path / "dl"
    probe = CifarProbe(root, name="cifar10", download=True)
    assert len(probe) == 3
    assert (root / "cifar-10-python.tar.gz").read_bytes() == body

    monkeypatch.setitem(CIFAR, "cifar10", dataclasses.replace(good, md5="0" * 32))
    with pytest.raises(DownloadError, match="md5"):
        CifarProbe(tmp_path / "dl2", name="cifar10", download=True)
    assert not (tmp_path / "dl2" / "cifar-10-batches-py").exists()


def test_bench_data_fetch_cifar(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    archive_server: tuple[str, bytes],
    capsys: pytest.CaptureFixture,
) -> None:
    url, body = archive_server
    good = dataclasses.replace(CIFAR["cifar10"], url=url, md5=hashlib.md5(body).hexdigest())
    monkeypatch.setitem(CIFAR, "cifar10", good)
    dest = tmp_path / "data"
    assert main(["data", "fetch", "cifar10", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(PROBES.get("cifar10")(dest)) == 3
    assert main(["data", "list", "--dest", str(dest)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "present" in rows["cifar10"] and "missing" in rows["cifar100"]


# --- the registry ------------------------------------------------------------------------------


def test_builtin_probe_factories(broden: Path, tmp_path: Path) -> None:
    register_builtin_probes()  # idempotent with the registry's own lazy call
    for name in ("broden", "imagenet-val", "cifar10", "cifar100", "synthetic", "synthetic-heldout"):
        assert name in PROBES
    probe = PROBES.get("broden")(broden, categories=["object"])
    assert isinstance(probe, BrodenProbe) and probe.categories() == ["object"]
    with pytest.raises(UsageError, match="--probe-root") as info:
        PROBES.get("broden")(None)
    assert "--download" in str(info.value)
    with pytest.raises(UsageError, match="--probe-root"):
        PROBES.get("imagenet-val")(None)
    folder = _make_image_folder(tmp_path / "val")
    assert len(PROBES.get("imagenet-val")(folder, max_images=3)) == 3
    with pytest.raises(DataError, match="--download"):
        PROBES.get("cifar10")(None)  # the (empty, per-session) cache has no CIFAR


def test_broden_factory_defaults_to_netdissect_categories(broden: Path, tmp_path: Path) -> None:
    register_builtin_probes()
    factory = PROBES.get("broden")
    assert BRODEN_DEFAULT_CATEGORIES == ("object", "part", "scene", "texture", "color")
    probe = factory(broden)
    assert probe.categories() == list(BRODEN_DEFAULT_CATEGORIES)  # material left out
    assert 21 in {c.number for c in probe.concepts()}  # fabric stays, as an object
    assert probe.segmentation(1).pixel == {}  # image 1 has only material
    # BrodenProbe itself keeps every column by default.
    assert "material" in BrodenProbe(broden).categories()
    # An explicit list overrides the default, material included.
    assert factory(broden, categories=("material", "object")).categories() == [
        "material",
        "object",
    ]
    # A copy without some default columns keeps those it has.
    header = "image,split,ih,iw,sh,sw,color,object,material,scene"
    rows = ["ade/a.jpg,train,8,8,4,4,ade/a_color.png,ade/a_object.png,,1000"]
    lean = make_broden(tmp_path / "lean")
    (lean / "index.csv").write_text("\n".join([header, *rows]) + "\n")
    assert factory(lean).categories() == ["object", "scene", "color"]
    (lean / "index.csv").write_text("image,split,ih,iw,sh,sw,material\nos/b.jpg,train,8,8,4,4,\n")
    with pytest.raises(UsageError, match="categories="):
        factory(lean)
    assert factory(lean, categories=["material"]).categories() == ["material"]


def test_probe_options_are_parsed_per_probe_set(broden: Path) -> None:
    register_builtin_probes()
    assert parse_probe_options("broden", {}) == {}
    assert parse_probe_options(
        "broden", {"categories": "object, part,material", "max_images": "2", "name": "broden1_227"}
    ) == {"categories": ("object", "part", "material"), "max_images": 2, "name": "broden1_227"}
    with pytest.raises(UsageError) as info:
        parse_probe_options("broden", {"categories": "object", "max_image": "2"})
    msg = str(info.value)
    assert "max_image" in msg and "accepts: categories, index_file, max_images, name" in msg
    with pytest.raises(UsageError, match="integer.*max_images"):
        parse_probe_options("broden", {"max_images": "lots"})
    with pytest.raises(UsageError, match="comma-separated"):
        parse_probe_options("broden", {"categories": " , "})
    with pytest.raises(UsageError, match="accepts: max_images"):
        parse_probe_options("imagenet-val", {"categories": "object"})
    assert parse_probe_options("cifar10", {"split": "train"}) == {"split": "train"}
    assert parse_probe_options("synthetic", {"n_images": "40"}) == {"n_images": 40}
    with pytest.raises(UsageError, match="accepts: n_images, seed, size"):
        parse_probe_options("synthetic-heldout", {"categories": "object"})


def test_load_probe_passes_options(broden: Path) -> None:
    from bench.api import RunConfig
    from bench.probes import load_probe

    assert RunConfig().probe_options == {}
    probe = load_probe("broden", str(broden), options={"categories": "material,object"})
    assert probe.categories() == ["material", "object"]
    probe = load_probe("broden", str(broden), options={"max_images": "2"})
    assert len(probe) == 2 and probe.categories() == list(BRODEN_DEFAULT_CATEGORIES)
    with pytest.raises(UsageError, match="index_file"):
        load_probe("broden", str(broden), options={"colour": "red"})


def test_cli_probe_option_parsing() -> None:
    from bench.cli import _probe_options, build_parser

    args = build_parser().parse_args(
        [
            "run",
            "--probe",
            "broden",
            "--probe-option",
            "categories=object,part,material",
            "--probe-option",
            "max_images=10",
        ]
    )
    assert args.probe_option == ["categories=object,part,material", "max_images=10"]
    assert _probe_options(args.probe_option) == {
        "categories": "object,part,material",
        "max_images": "10",
    }
    assert build_parser().parse_args(["run"]).probe_option == []
    assert _probe_options(["index_file=a=b.csv"]) == {"index_file": "a=b.csv"}
    for bad in (["categories"], ["=object"]):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            _probe_options(bad)
    with pytest.raises(UsageError, match="twice"):
        _probe_options(["categories=object", "categories=part"])


def test_synthetic_factories_are_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, dict[str, object]]] = []
    fake = types.ModuleType("bench.synth.probes")
    fake.synthetic_probe = lambda root, **kw: calls.append((root, kw)) or "probe"  # type: ignore[attr-defined]
    fake.synthetic_heldout_probe = lambda root, **kw: "heldout"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.synth.probes", fake)
    assert PROBES.get("synthetic")(None, download=False, seed=3) == "probe"
    assert calls == [(None, {"download": False, "cache": None, "seed": 3})]
    assert PROBES.get("synthetic-heldout")(None) == "heldout"


def _png_with_filters(rgb: np.ndarray, filters: list[int]) -> bytes:
    """An 8-bit RGB/RGBA PNG whose row r uses PNG filter ``filters[r]`` (spec section 9),
    written here with plain loops so that every filter type is exercised (PIL chooses its own)."""
    import struct
    import zlib

    h, w, ch = rgb.shape
    img = rgb.astype(np.int64).reshape(h, w * ch)
    raw = bytearray()
    for r in range(h):
        f = filters[r]
        raw.append(f)
        for i in range(w * ch):
            x = int(img[r, i])
            a = int(img[r, i - ch]) if i >= ch else 0
            b = int(img[r - 1, i]) if r > 0 else 0
            c = int(img[r - 1, i - ch]) if r > 0 and i >= ch else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            raw.append((x - pred) % 256)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    color = {3: 2, 4: 6}[ch]
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(raw))[:10])
        + chunk(b"IDAT", zlib.compress(bytes(raw))[10:])  # split IDAT, as encoders may write
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
def test_fast_png_decoder_handles_every_filter(channels: int, tmp_path: Path) -> None:
    import io

    from bench.probes.broden import decode_png_rgb, decode_segmentation_png

    rng = np.random.default_rng(channels)
    rgb = rng.integers(0, 256, (10, 7, channels), dtype=np.uint8)
    data = _png_with_filters(rgb, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
    with Image.open(io.BytesIO(data)) as im:  # PIL reads our file as we mean it
        np.testing.assert_array_equal(
            np.asarray(im.convert("RGBA" if channels == 4 else "RGB")), rgb
        )
    got = decode_png_rgb(data)
    assert got is not None
    np.testing.assert_array_equal(got, rgb[:, :, :3])
    (tmp_path / "x.png").write_bytes(data)
    labels = rgb[:, :, 0].astype(np.int32) + 256 * rgb[:, :, 1].astype(np.int32)
    np.testing.assert_array_equal(decode_segmentation_png(tmp_path / "x.png"), labels)
    # A broken checksum: not decoded here (PIL then decides and reports).
    bad = bytearray(data)
    bad[-30] ^= 0xFF
    assert decode_png_rgb(bytes(bad)) is None


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "LA"])
def test_other_png_kinds_go_through_pil(mode: str, tmp_path: Path) -> None:
    from bench.probes.broden import decode_png_rgb, decode_segmentation_png

    rng = np.random.default_rng(1)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (5, 6), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8), "L").convert(mode)
    im.save(tmp_path / "x.png")
    assert decode_png_rgb((tmp_path / "x.png").read_bytes()) is None
    with Image.open(tmp_path / "x.png") as ref:
        rgb = np.asarray(ref.convert("RGB"))
    want = rgb[:, :, 0].astype(np.int32) + 256 * rgb[:, :, 1].astype(np.int32)
    np.testing.assert_array_equal(decode_segmentation_png(tmp_path / "x.png"), want)


def test_broden_segmentation_names_a_missing_png(broden: Path) -> None:
    (broden / "images" / "ade" / "a_color.png").unlink()
    with pytest.raises(DataError, match="line 2.*a_color.png"):
        BrodenProbe(broden).segmentation(0)
