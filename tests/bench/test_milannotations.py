"""bench.milannotations on tiny datasets written here in the exact MILANNOTATIONS format:
reading, groupings, the ImageNet rebuild, download with checksum and safe extraction, splits."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import functional as TF

from bench import milannotations as M
from bench.errors import DataError, DownloadError, UnknownNameError, UsageError
from methods.milan import splits as S

K = 3
SIZE = 16


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's $MILAN_DATA_DIR must not leak into the tests."""
    monkeypatch.delenv("MILAN_DATA_DIR", raising=False)


def write_layer(directory: Path, n_units: int, *, seed: int, images: bool = True) -> dict:
    """ids.csv (no header), masks.npy uint8 [U, k, 1, H, W], images.npy uint8 [U, k, 3, H, W]."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    ids = rng.integers(0, 4, size=(n_units, K))
    masks = (rng.random((n_units, K, 1, SIZE, SIZE)) > 0.7).astype(np.uint8)
    with open(directory / "ids.csv", "w", encoding="utf-8") as f:
        for row in ids:
            f.write(",".join(str(v) for v in row) + "\n")
    np.save(directory / "masks.npy", masks)
    out = {"ids": ids, "masks": masks}
    if images:
        imgs = rng.integers(0, 256, size=(n_units, K, 3, SIZE, SIZE), dtype=np.uint8)
        np.save(directory / "images.npy", imgs)
        out["images"] = imgs
    return out


def write_annotations(path: Path, rows: list[tuple[str, int, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer", "unit", "summary"])
        w.writerows(rows)


ROWS = [
    ("conv1", 0, "red circles"),
    ("conv1", 0, "round red things"),
    ("conv1", 0, "circles that are red"),
    ("conv1", 1, "dogs, cats"),  # a comma inside a quoted field
    ("conv1", 1, "animals"),  # unit 1 has only two: dropped
    ("conv2", 2, "stripes"),
    ("conv2", 2, "striped shapes"),
    ("conv2", 2, "lines"),
    ("conv2", 2, "zebra stripes"),  # a fourth one: truncated
    ("conv2", 0, "sky"),
    ("conv2", 0, "clouds"),
    ("conv2", 0, "blue sky"),
]


def write_key(directory: Path, *, images: bool = True) -> dict[str, dict]:
    arrays = {
        "conv1": write_layer(directory / "conv1", 2, seed=1, images=images),
        "conv2": write_layer(directory / "conv2", 3, seed=2, images=images),
    }
    write_annotations(directory / "annotations.csv", ROWS)
    return arrays


# --- reading --------------------------------------------------------------------------------------


def test_loader_reads_the_real_format(tmp_path: Path) -> None:
    arrays = write_key(tmp_path / "alexnet-places365")
    ds = M.load("alexnet/places365", tmp_path)
    assert ds.keys == ("alexnet/places365",)
    assert [(u.layer, u.unit) for u in ds.units] == [("conv1", 0), ("conv2", 0), ("conv2", 2)]
    by = {(u.layer, u.unit): u for u in ds}
    assert by["conv1", 0].annotations == ("red circles", "round red things", "circles that are red")
    assert by["conv2", 2].annotations == ("stripes", "striped shapes", "lines")  # truncated to 3
    for (layer, unit), item in by.items():
        assert item.key == "alexnet/places365"
        assert item.images.dtype == np.uint8 and item.images.shape == (K, 3, SIZE, SIZE)
        np.testing.assert_array_equal(item.images, arrays[layer]["images"][unit])
        np.testing.assert_array_equal(item.masks, arrays[layer]["masks"][unit])
        np.testing.assert_array_equal(item.ids, arrays[layer]["ids"][unit])
    assert isinstance(by["conv2", 2].images, np.memmap)  # memory-mapped, not read eagerly
    # annotation_count=None keeps every unit and every description
    everything = M.load("alexnet-places365", tmp_path, annotation_count=None)
    assert len(everything) == 4
    assert everything.texts()[M.UnitId(key="alexnet/places365", layer="conv1", unit=1)] == (
        "dogs, cats",
        "animals",
    )
    sub = ds.subset([M.UnitId(key="alexnet/places365", layer="conv2", unit=2)])
    assert len(sub) == 1 and sub[0].unit == 2


def test_read_annotations_csv_alone(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    write_annotations(path, ROWS)
    raw = M.read_annotations_csv(path)
    assert raw["conv2", 2] == ("stripes", "striped shapes", "lines", "zebra stripes")
    assert raw["conv1", 1] == ("dogs, cats", "animals")
    kept = M.read_annotations_csv(path, annotation_count=3)
    assert list(kept) == [("conv1", 0), ("conv2", 2), ("conv2", 0)]
    assert kept["conv2", 2] == ("stripes", "striped shapes", "lines")


def test_original_nested_layout_and_env_root(tmp_path: Path, monkeypatch) -> None:
    write_key(tmp_path / "biggan" / "places365")
    monkeypatch.setenv("MILAN_DATA_DIR", str(tmp_path))
    assert M.default_root() == tmp_path
    assert len(M.load("biggan/places365")) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("layer,unit,description\nconv1,0,x\n", "missing summary"),
        ("layer,unit,summary\nconv1,zero,x\n", "line 2: expected a 0-based unit"),
        ("layer,unit,summary\nconv1,-1,x\n", "line 2: expected a 0-based unit"),
        ("layer,unit,summary\nconv1,0,a,b\n", "line 2: expected 3 fields"),
        ("", "empty file"),
    ],
)
def test_malformed_annotations_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        M.read_annotations_csv(path)


def test_inconsistent_files_are_clear_errors(tmp_path: Path) -> None:
    key_dir = tmp_path / "alexnet-places365"
    write_key(key_dir)
    write_annotations(key_dir / "annotations.csv", [("conv3", 0, t) for t in "abc"])
    with pytest.raises(DataError, match="layer 'conv3'.*Did you mean 'conv2', 'conv1'"):
        M.load("alexnet/places365", tmp_path)
    write_annotations(key_dir / "annotations.csv", [("conv1", 7, t) for t in "abc"])
    with pytest.raises(DataError, match="unit 7 of layer 'conv1'.*holds 2 units"):
        M.load("alexnet/places365", tmp_path)
    write_annotations(key_dir / "annotations.csv", [("conv1", 0, t) for t in "abc"])
    np.save(key_dir / "conv1" / "images.npy", np.zeros((2, K, 3, 8, 8), np.uint8))
    with pytest.raises(DataError, match="to match the masks"):
        M.load("alexnet/places365", tmp_path)
    (key_dir / "conv1" / "images.npy").unlink()
    with pytest.raises(DataError, match="ships its images"):
        M.load("alexnet/places365", tmp_path)
    assert len(M.load("alexnet/places365", tmp_path, images=False)) == 1  # text needs no arrays
    (key_dir / "conv1" / "masks.npy").unlink()
    with pytest.raises(DataError, match="conv1"):
        M.load("alexnet/places365", tmp_path)
    with pytest.raises(DataError, match="download=True"):
        M.load("resnet152/places365", tmp_path)


# --- keys and groupings ---------------------------------------------------------------------------


def test_groupings_resolve_to_the_papers_keys() -> None:
    base = (
        "alexnet/imagenet",
        "alexnet/places365",
        "resnet152/imagenet",
        "resnet152/places365",
        "biggan/imagenet",
        "biggan/places365",
    )
    assert M.resolve_keys("base") == base
    assert set(M.REAL_KEYS) == set(base) | {"dino_vits8/imagenet"}
    assert M.resolve_keys("cls") == base[:4]
    assert M.resolve_keys("gen") == base[4:]
    assert M.resolve_keys("imagenet") == (
        "alexnet/imagenet",
        "resnet152/imagenet",
        "biggan/imagenet",
    )
    assert M.resolve_keys("places365") == (
        "alexnet/places365",
        "resnet152/places365",
        "biggan/places365",
    )
    assert M.resolve_keys("resnet152") == ("resnet152/imagenet", "resnet152/places365")
    assert M.resolve_keys("not-biggan-places365") == base[:5]
    assert M.resolve_keys(["alexnet", "alexnet-imagenet", "dino_vits8/imagenet"]) == (
        "alexnet/imagenet",
        "alexnet/places365",
        "dino_vits8/imagenet",
    )
    synth = ("synth.resnet/synthetic", "synth.convnet/synthetic", "synth.resnet_scenes/synthetic")
    assert M.resolve_keys("synthetic") == synth
    assert M.resolve_keys("not-synth.resnet-synthetic") == synth[1:]
    with pytest.raises(UnknownNameError, match="Did you mean 'alexnet/imagenet'"):
        M.resolve_keys("alexnet/imagenett")
    # which keys ship images (the original's export rule)
    ships = {k: M.key_info(k).ships_images for k in M.REAL_KEYS}
    assert [k for k, v in ships.items() if not v] == [
        "alexnet/imagenet",
        "resnet152/imagenet",
        "dino_vits8/imagenet",
    ]
    assert (
        M.key_info("biggan/places365").url == "http://milan.csail.mit.edu/data/biggan-places365.zip"
    )


# --- ImageNet -------------------------------------------------------------------------------------


def _imagenet_val(root: Path) -> list[np.ndarray]:
    """A tiny ImageNet val ImageFolder of non-square photos; returns them in ImageFolder order."""
    rng = np.random.default_rng(5)
    layout = {  # created out of order: the loader must sort classes and files
        "n02": [("c.png", (20, 36)), ("sub/d.png", (50, 22))],
        "n01": [("b.png", (30, 40)), ("a.png", (48, 24))],
    }
    for cls, files in layout.items():
        for name, (h, w) in files:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    order = ["n01/a.png", "n01/b.png", "n02/c.png", "n02/sub/d.png"]
    return [np.asarray(Image.open(root / p).convert("RGB")) for p in order]


def test_imagenet_images_are_rebuilt_with_resize_and_centre_crop(tmp_path: Path) -> None:
    photos = _imagenet_val(tmp_path / "val")
    key_dir = tmp_path / "data" / "alexnet-imagenet"
    arrays = write_key(key_dir, images=False)
    with pytest.raises(DataError, match="imagenet_root"):
        M.load("alexnet/imagenet", tmp_path / "data")
    assert len(M.load("alexnet/imagenet", tmp_path / "data", images=False)) == 3
    ds = M.load("alexnet/imagenet", tmp_path / "data", imagenet_root=tmp_path / "val")
    resize = round(SIZE * 256 / 224)
    for item in ds:
        for j, idx in enumerate(arrays[item.layer]["ids"][item.unit]):
            photo = Image.fromarray(photos[idx])
            want = np.asarray(TF.center_crop(TF.resize(photo, resize), [SIZE, SIZE]))
            np.testing.assert_array_equal(item.images[j], want.transpose(2, 0, 1))
            squashed = np.asarray(TF.resize(photo, [SIZE, SIZE])).transpose(2, 0, 1)
            assert not np.array_equal(item.images[j], squashed)  # the original merge's squash
    images = key_dir / "conv1" / "images.npy"
    assert (key_dir / "conv1" / "images.json").is_file()
    stamp = images.stat().st_mtime_ns
    M.load("alexnet/imagenet", tmp_path / "data", imagenet_root=tmp_path / "val")
    assert images.stat().st_mtime_ns == stamp  # cached beside the masks, not rebuilt


def test_imagenet_ids_beyond_the_folder_are_an_error(tmp_path: Path) -> None:
    _imagenet_val(tmp_path / "val")
    key_dir = tmp_path / "resnet152-imagenet"
    write_key(key_dir, images=False)
    (key_dir / "conv1" / "ids.csv").write_text("0,1,9\n0,1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds 4 images"):
        M.load("resnet152/imagenet", tmp_path, imagenet_root=tmp_path / "val")


# --- download -----------------------------------------------------------------------------------


def _zip_of(directory: Path, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(directory.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(directory).as_posix())
    return buf.getvalue()


def test_download_pins_the_checksum_and_extracts(tmp_path: Path, serve_bytes) -> None:
    write_key(tmp_path / "src")
    body = _zip_of(tmp_path / "src", prefix="biggan-places365/")
    url, hits = serve_bytes(body)
    root = tmp_path / "data"
    ds = M.load("biggan/places365", root, download=True, base_url=url)
    assert hits == ["/biggan-places365.zip"]
    assert len(ds) == 3
    assert (root / "biggan-places365.zip.sha256.json").is_file()
    assert len(M.load("biggan/places365", root)) == 3  # found again without downloading
    assert hits == ["/biggan-places365.zip"]

    # The server now sends something else: the pinned checksum refuses it.
    import shutil

    shutil.rmtree(root / "biggan-places365")
    (root / "biggan-places365.zip").unlink()
    url2, _ = serve_bytes(body + b"changed")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        M.load("biggan/places365", root, download=True, base_url=url2)
    assert not (root / "biggan-places365").exists()


def test_download_refuses_archives_that_escape(tmp_path: Path, serve_bytes) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("annotations.csv", "layer,unit,summary\n")
        zf.writestr("../escaped.txt", "gotcha")
    url, _ = serve_bytes(buf.getvalue())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="'..'"):
        M.load("alexnet/places365", root, download=True, base_url=url)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (root / "escaped.txt").exists()
    assert not (root / "alexnet-places365" / "annotations.csv").exists()


def test_download_needs_a_reachable_host(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="MILANNOTATIONS alexnet/places365"):
        M.fetch("alexnet/places365", tmp_path, base_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(UsageError, match="generated key"):
        M.fetch("synth.resnet/synthetic", tmp_path)


# --- generalisation splits --------------------------------------------------------------------


def _units(key: str, n: int) -> list[M.UnitId]:
    return [M.UnitId(key=key, layer=f"layer{i % 3}", unit=i) for i in range(n)]


def test_within_split_is_disjoint_seeded_and_by_unit() -> None:
    units = {
        "alexnet/imagenet": _units("alexnet/imagenet", 200),
        "biggan/imagenet": _units("biggan/imagenet", 31),
    }
    splits = S.split("within", ["alexnet/imagenet", "biggan/imagenet"], seed=3, units=units)
    assert [s.name for s in splits] == ["within alexnet/imagenet", "within biggan/imagenet"]
    for s in splits:
        (key,) = s.train_keys
        assert s.test_keys == (key,)
        train, test = set(s.train_units), set(s.test_units)
        assert not train & test
        assert train | test == set(units[key])
        assert len(test) == round(0.1 * len(units[key]))
    again = S.split(
        "within",
        ["alexnet/imagenet", "biggan/imagenet"],
        seed=3,
        units={k: list(reversed(v)) for k, v in units.items()},
    )
    assert again == splits  # seeded, and independent of the order units come in
    other = S.split("within", ["alexnet/imagenet"], seed=4, units=units)
    assert set(other[0].test_units) != set(splits[0].test_units)
    kept, held = S.holdout_units(units["biggan/imagenet"], fraction=0.5, seed=0, salt="x")
    assert len(held) == 16 and not set(kept) & set(held)


def test_real_splits_follow_the_paper() -> None:
    def pairs(name: str, keys=None) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        return [(s.train_keys, s.test_keys) for s in S.split(name, keys)]

    g = M.groupings()
    assert pairs("across-network") == [
        (g["alexnet"], g["resnet152"]),
        (g["resnet152"], g["alexnet"]),
    ]
    assert pairs("across-dataset") == [
        (g["imagenet"], g["places365"]),
        (g["places365"], g["imagenet"]),
    ]
    assert pairs("across-task") == [(g["cls"], g["gen"]), (g["gen"], g["cls"])]
    assert pairs("across-arch") == [(g["base"], ("dino_vits8/imagenet",))]
    loo = pairs("leave-one-out")
    assert loo == [(g[f"not-{k.replace('/', '-')}"], (k,)) for k in M.BASE_KEYS]
    # restricted to a pool of keys
    assert pairs("across-network", ["alexnet/imagenet", "resnet152/places365"]) == [
        (("alexnet/imagenet",), ("resnet152/places365",)),
        (("resnet152/places365",), ("alexnet/imagenet",)),
    ]
    with pytest.raises(UnknownNameError, match="across-network"):
        S.split("across-networks")
    with pytest.raises(UsageError, match="only real or only synthetic"):
        S.split("leave-one-out", ["base", "synthetic"])


def test_synthetic_splits_are_the_documented_analogues() -> None:
    r, c, s = "synth.resnet/synthetic", "synth.convnet/synthetic", "synth.resnet_scenes/synthetic"

    def pairs(name: str) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
        out = set()
        for sp in S.split(name, "synthetic"):
            assert not set(sp.train_keys) & set(sp.test_keys)
            out.add((tuple(sorted(sp.train_keys)), tuple(sorted(sp.test_keys))))
        return out

    assert pairs("across-network") == {((r,), (c,)), ((c,), (r,))}
    assert pairs("across-dataset") == {((r,), (s,)), ((s,), (r,))}
    assert pairs("across-task") == {(tuple(sorted((r, c))), (s,)), ((s,), tuple(sorted((r, c))))}
    assert pairs("across-arch") == {(tuple(sorted((r, s))), (c,)), ((c,), tuple(sorted((r, s))))}
    assert pairs("leave-one-out") == {
        (tuple(sorted(set((r, c, s)) - {k})), (k,)) for k in (r, c, s)
    }
    within = S.split("within", "synthetic", units={k: _units(k, 50) for k in (r, c, s)})
    assert [sp.test_keys for sp in within] == [(r,), (c,), (s,)]
    assert all(len(sp.test_units) == 5 for sp in within)
