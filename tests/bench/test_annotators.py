"""Simulated annotators and the synthetic MILANNOTATIONS: ground truth in, descriptions out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench import milannotations as M
from bench.cache import Cache
from bench.errors import ConfigError
from bench.synth import concepts as C
from bench.synth.annotators import (
    ANNOTATORS_PER_UNIT,
    GENERIC_ANSWERS,
    UnitContent,
    annotate,
    salient,
    synthetic_milannotations,
    unit_content,
)
from bench.synth.targets import load_card, synthetic_target_specs
from bench.synth.text import parse_phrase

TARGETS = ("synth.resnet", "synth.convnet", "synth.resnet_scenes")


def named(text: str) -> set[str]:
    """The catalogue concepts a description names, read by the world's own phrase parser."""
    _, tree = parse_phrase(text)
    return set() if tree is None else set(C.formula_leaves(tree))


# --- what the masks cover: a hand computation ------------------------------------------------


def test_unit_content_counts_the_masked_pixels() -> None:
    red, blue, circle, square = (C.number(n) for n in ("red", "blue", "circle", "square"))
    plain, grass, meadow = C.number("plain"), C.number("grass"), C.number("meadow")
    labels = np.zeros((2, 4, 4, 4), dtype=np.int16)  # [k, category, H, W]
    col, obj, pat, mat = (
        C.PIXEL_CATEGORIES.index(c) for c in ("color", "object", "pattern", "material")
    )
    labels[:, mat] = grass
    labels[0, col, :2, :2], labels[0, obj, :2, :2] = red, circle  # image 0: a red circle
    labels[1, col, :2, :2], labels[1, obj, :2, :2] = blue, circle  # image 1: a blue circle
    labels[1, col, 3, :], labels[1, obj, 3, :] = red, square  # and a red square beside
    labels[:, pat][labels[:, obj] > 0] = plain
    labels[:, mat][labels[:, obj] > 0] = 0
    masks = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    masks[0, 0, :2, :3] = 1  # 4 red circle pixels + 2 grass
    masks[1, 0, :2, :2] = 1  # 4 blue circle pixels
    content = unit_content(masks, labels, np.array([meadow, meadow]))
    assert content.shares["color"] == {"red": 0.5, "blue": 0.5}
    assert content.shares["object"] == {"circle": 1.0}
    assert content.shares["material"] == {"grass": 1.0}
    assert content.object_fraction == pytest.approx(8 / 10)
    assert content.masked == pytest.approx(10 / 32)
    assert content.scenes == {"meadow": 1.0}
    assert content.beside == {}  # 4 pixels of square is below the context threshold
    assert salient(content.shares["color"]) == (("blue", "red"), pytest.approx(0.8))
    assert salient({"red": 0.7, "blue": 0.3}) == (("red",), 0.7)
    assert salient({"red": 0.4, "blue": 0.2, "green": 0.2, "white": 0.2}) == ((), 0.0)


def _content(**shares: dict[str, float]) -> UnitContent:
    return UnitContent(
        shares={c: dict(shares.get(c, {})) for c in C.PIXEL_CATEGORIES},
        object_fraction=0.0 if "material" in shares else 0.9,
        scenes={"meadow": 0.3, "beach": 0.3, "lake": 0.4},
        beside={},
        image_shares={c: dict(shares.get(c, {})) for c in C.PIXEL_CATEGORIES},
        masked=0.1,
    )


def test_careful_annotators_name_the_dominant_concepts() -> None:
    red_circles = _content(
        color={"red": 0.95, "blue": 0.05},
        object={"circle": 0.9, "star": 0.1},
        pattern={"plain": 0.3, "striped": 0.3, "dotted": 0.4},
    )
    either = _content(
        color={"blue": 0.5, "yellow": 0.45, "red": 0.05},
        object={"circle": 0.3, "star": 0.3, "square": 0.4},
    )
    water = _content(material={"water": 0.97, "sand": 0.03})
    texts = set()
    for unit in range(20):
        for content, want in ((red_circles, {"red", "circle"}), (water, {"water"})):
            out = annotate(content, noise=0.0, seed=0, key="k", layer="l", unit=unit)
            assert len(out) == ANNOTATORS_PER_UNIT
            for text in out:
                assert want <= named(text), text
                assert not {"blue", "sand", "star"} & named(text), text
                texts.add(text)
        for text in annotate(either, noise=0.0, seed=0, key="k", layer="l", unit=unit):
            assert " or " in text and {"blue", "yellow"} <= named(text), text
            specs, _ = parse_phrase(text)
            assert len(specs) == 2  # read back as a disjunction
    # paraphrase: several wordings of the same concepts
    assert len({t for t in texts if "water" not in named(t)}) >= 4
    assert annotate(red_circles, noise=0.0, seed=0, key="k", layer="l", unit=3) == annotate(
        red_circles, noise=0.0, seed=0, key="k", layer="l", unit=3
    )


def test_noise_makes_answers_generic() -> None:
    content = _content(color={"red": 1.0}, object={"star": 1.0})
    rates = {}
    for noise in (0.0, 0.5, 1.0):
        out = [
            t
            for unit in range(100)
            for t in annotate(content, noise=noise, seed=1, key="k", layer="l", unit=unit)
        ]
        rates[noise] = sum(t in GENERIC_ANSWERS for t in out) / len(out)
    assert rates[0.0] == 0.0
    assert 0.3 < rates[0.5] < 0.7
    assert rates[1.0] > 0.8
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        annotate(content, noise=1.5, seed=0, key="k", layer="l", unit=0)


# --- the export ---------------------------------------------------------------------------------


def _read(root: Path, target: str) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    with open(root / f"{target}-synthetic" / "annotations.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault((row["layer"], int(row["unit"])), []).append(row["summary"])
    return out


@pytest.fixture(scope="module")
def probe():
    """The default synthetic probe (2000 images): the one the embedded default run uses."""
    from bench.synth.probes import synthetic_probe

    return synthetic_probe(Cache().root)


@pytest.fixture(scope="module")
def careful(probe) -> Path:
    return synthetic_milannotations(Cache(), noise=0.0, seed=0, probe=probe)


def test_export_is_in_the_real_format_and_loads_back(careful: Path, probe) -> None:
    ds = M.load("synthetic", careful)
    total = 0
    for target in synthetic_target_specs():
        key = f"{target.name}/synthetic"
        layers = [l for l in target.layers if l != target.final_layer]
        key_dir = careful / key.replace("/", "-")
        assert sorted(p.name for p in key_dir.iterdir() if p.is_dir()) == sorted(layers)
        rows = _read(careful, target.name)
        for layer in layers:
            masks = np.load(key_dir / layer / "masks.npy")
            images = np.load(key_dir / layer / "images.npy")
            units = masks.shape[0]
            assert masks.shape[1:] == (15, 1, 64, 64) and set(np.unique(masks)) <= {0, 1}
            assert images.shape == (units, 15, 3, 64, 64) and images.dtype == np.uint8
            assert M.read_ids_csv(key_dir / layer / "ids.csv").shape == (units, 15)
            assert all(len(rows[layer, u]) == 3 for u in range(units))
            total += units
    assert len(ds) == total
    item = ds[len(ds) // 2]
    assert item.images.shape == (15, 3, 64, 64) and len(item.annotations) == 3
    for j, i in enumerate(item.ids):  # the probe images, as the 64 px target saw them
        np.testing.assert_array_equal(
            item.images[j], np.asarray(probe.load_image(int(i))).transpose(2, 0, 1)
        )


def test_synthetic_keys_load_from_the_cached_export_by_default(careful: Path, monkeypatch) -> None:
    import bench.synth.annotators as A

    calls = []

    def fake(cache=None, **options):
        calls.append(options)
        return careful

    monkeypatch.setattr(A, "synthetic_milannotations", fake)
    ds = M.load(["synth.resnet/synthetic", "synth.convnet/synthetic"], images=False)
    assert len(calls) == 1 and ds.keys == ("synth.resnet/synthetic", "synth.convnet/synthetic")
    assert len(ds) == len(M.load("not-synth.resnet_scenes-synthetic", careful, images=False))


MATERIAL_OF_SCENE = {scene: material for material, scene in C.SCENE_OF_MATERIAL.items()}


def says(text: str, concept: str) -> bool:
    """Whether a description names a concept (a scene also by its material: "on grass")."""
    found = named(text)
    return concept in found or MATERIAL_OF_SCENE.get(concept) in found


def test_careful_annotations_name_the_planted_concepts(careful: Path) -> None:
    checked = 0
    for target in TARGETS:
        rows = _read(careful, target)
        for planted in load_card(target)["planted_units"]:
            tree, concept = planted["formula"], planted["concept"]
            texts = rows[planted["layer"], planted["unit"]]
            if tree[0] == "leaf":  # single-concept units: every annotator names the concept
                assert all(says(t, tree[1]) for t in texts), (target, concept, texts)
                checked += 1
            elif tree[0] == "and":  # conjunctions: what the masks show, by a majority
                for part in tree[1:]:
                    if part[0] == "leaf" and C.concept(part[1]).category == "scene":
                        # the scene is context: someone says where the objects are
                        assert any(says(t, part[1]) for t in texts), (target, concept, texts)
                    elif part[0] in ("leaf", "or"):
                        leaves = C.formula_leaves(part)
                        hits = sum(any(says(t, c) for c in leaves) for t in texts)
                        assert hits >= 2, (target, concept, texts)
                checked += 1
    assert checked >= 12


def test_careful_annotations_vary_in_wording_and_relate(careful: Path) -> None:
    texts = [t for target in TARGETS for v in _read(careful, target).values() for t in v]
    assert sum(t in GENERIC_ANSWERS for t in texts) / len(texts) < 0.02
    assert any(" or " in t for t in texts)  # disjunctions
    assert any(w in t for t in texts for w in ("next to", "beside", "near"))
    assert any(t.endswith(("on grass", "on sand", "on water", "on snow", "on wood")) for t in texts)
    units = [v for target in TARGETS for v in _read(careful, target).values()]
    assert sum(len(set(v)) > 1 for v in units) / len(units) > 0.8  # paraphrase


def test_high_noise_is_mostly_generic(careful: Path, probe) -> None:
    noisy = synthetic_milannotations(Cache(), noise=1.0, seed=0, probe=probe)
    texts = [t for target in TARGETS for v in _read(noisy, target).values() for t in v]
    assert sum(t in GENERIC_ANSWERS for t in texts) / len(texts) > 0.75
    # Only the CSV differs: the layer arrays are the same files.
    a = careful / "synth.resnet-synthetic" / "layer2" / "masks.npy"
    b = noisy / "synth.resnet-synthetic" / "layer2" / "masks.npy"
    assert a.read_bytes() == b.read_bytes()


def test_same_seed_same_files(tmp_path: Path) -> None:
    from bench.synth.probes import synthetic_probe

    def export(root: Path, seed: int) -> Path:
        cache = Cache(root)
        probe = synthetic_probe(root, n_images=60)
        return synthetic_milannotations(
            cache, noise=0.3, seed=seed, targets=["synth.convnet"], probe=probe
        )

    first, second = export(tmp_path / "a", 7), export(tmp_path / "b", 7)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert Path("synth.convnet-synthetic/annotations.csv") in files
    assert sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) == files
    for rel in files:
        if rel.name != "manifest.json":  # holds a creation time
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    other = export(tmp_path / "a", 8)
    csv_path = Path("synth.convnet-synthetic/annotations.csv")
    assert (other / csv_path).read_bytes() != (first / csv_path).read_bytes()
