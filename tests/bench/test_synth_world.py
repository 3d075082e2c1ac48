"""The synthetic world: scenes, labels, captions, phrases, Broden export, held-out classes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from bench.errors import UsageError
from bench.synth import concepts as C
from bench.synth import text as T
from bench.synth import world as W
from bench.synth.broden_export import decode_labels, export_broden
from bench.synth.heldout import HELDOUT_CLASSES, heldout_scenes

# --- catalogue and formulas -------------------------------------------------------------------


def test_catalogue_numbers_names_and_categories():
    numbers = [c.number for c in C.CATALOGUE]
    assert numbers == list(range(1, len(C.CATALOGUE) + 1))
    assert len({c.name for c in C.CATALOGUE}) == len(C.CATALOGUE)
    for c in C.CATALOGUE:
        expected = {"color": "-c", "scene": "-s"}.get(c.category, "")
        assert c.raw_name == c.name + expected
        assert C.concept(c.raw_name) == c
    assert {c.category for c in C.CATALOGUE} == set(C.CATEGORIES)
    assert set(C.values("color")) >= {
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "orange",
        "white",
        "black",
    }
    assert set(C.values("material")) >= {"grass", "sky", "water", "sand", "brick", "wood", "snow"}


@pytest.mark.parametrize(
    "text, tree",
    [
        ("red", ["leaf", "red"]),
        ("red AND circle", ["and", ["leaf", "red"], ["leaf", "circle"]]),
        ("grass OR sand", ["or", ["leaf", "grass"], ["leaf", "sand"]]),
        ("square AND NOT blue", ["and", ["leaf", "square"], ["not", ["leaf", "blue"]]]),
        (
            "(grass OR sand) AND red-c",
            ["and", ["or", ["leaf", "grass"], ["leaf", "sand"]], ["leaf", "red"]],
        ),
    ],
)
def test_formula_parse_and_format_round_trip(text, tree):
    assert C.parse_formula(text) == tree
    assert C.parse_formula(C.format_formula(tree)) == tree


def test_formula_mask_by_hand():
    labels = {
        "color": np.array([[1, 1, 3, 0]]),
        "object": np.array([[9, 10, 9, 0]]),
        "material": np.array([[0, 0, 0, 22]]),
    }
    red, circle = C.number("red"), C.number("circle")
    assert (red, circle) == (1, 9)
    m = C.formula_mask(C.parse_formula("red AND circle"), labels)
    assert m.tolist() == [[True, False, False, False]]
    m = C.formula_mask(C.parse_formula("circle AND NOT red"), labels)
    assert m.tolist() == [[False, False, True, False]]
    m = C.formula_mask(C.parse_formula("red OR sand"), labels)
    assert m.tolist() == [[True, True, False, True]]


# --- scenes -----------------------------------------------------------------------------------


def test_same_seed_same_scene_different_seed_different():
    a = W.generate(6, seed=3)
    b = W.generate(6, seed=3)
    assert a == b
    ra, rb = W.render(a[2]), W.render(b[2])
    assert np.array_equal(ra.image, rb.image)
    for cat in C.PIXEL_CATEGORIES:
        assert np.array_equal(ra.labels[cat], rb.labels[cat])
    # Scene i does not depend on how many scenes are generated or where the list starts.
    assert W.generate(2, seed=3, start=4) == a[4:6]
    c = W.generate(6, seed=4)
    assert c != a
    imgs_a, _, _ = W.render_batch(a)
    imgs_c, _, _ = W.render_batch(c)
    assert not np.array_equal(imgs_a, imgs_c)


def test_scene_structure():
    scenes = W.generate(300, seed=11)
    assert {len(s.objects) for s in scenes} <= {1, 2, 3}
    assert {s.material for s in scenes} == set(C.MATERIALS)
    for s in scenes:
        main = s.main
        assert main.size in ("medium", "large")
        assert all(o.radius <= main.radius * W.DISTRACTOR_RATIO + 1e-9 for o in s.objects[1:])
        assert main.color not in W.CLASHES[s.material]
        assert s.scene == C.SCENE_OF_MATERIAL[s.material]


def _palette() -> tuple[np.ndarray, list[tuple[str, bool]]]:
    rgbs, names = [], []
    for name in C.COLORS:
        rgbs += [W.COLOR_RGB[name], W.PATTERN_RGB[name]]
        names += [(name, False), (name, True)]
    return np.array(rgbs, dtype=np.float64), names


def test_labels_agree_with_the_drawing():
    palette, names = _palette()
    scenes = W.generate(60, seed=5)
    checked_objects = 0
    for s in scenes:
        r = W.render(s)
        obj = r.labels["object"] > 0
        # Object, colour and pattern label the same pixels; material labels the rest.
        assert np.array_equal(obj, r.labels["color"] > 0)
        assert np.array_equal(obj, r.labels["pattern"] > 0)
        assert np.array_equal(~obj, r.labels["material"] == C.number(s.material))
        assert (r.labels["material"][obj] == 0).all()
        # Every pixel labelled with a colour is drawn in that colour (base or pattern shade).
        px = r.image[obj].astype(np.float64)
        nearest = np.argmin(((px[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
        drawn = np.array([C.number(names[k][0]) for k in nearest])
        assert (drawn == r.labels["color"][obj]).mean() >= 0.99
        for o in s.objects:
            # Patterns are visible: a patterned object shows both shades, a plain one only one.
            region = (
                (r.labels["object"] == C.number(o.shape))
                & (r.labels["color"] == C.number(o.color))
                & (r.labels["pattern"] == C.number(o.pattern))
            )
            if region.sum() < 150:
                continue
            checked_objects += 1
            k = np.argmin(
                ((r.image[region].astype(np.float64)[:, None, :] - palette[None]) ** 2).sum(-1),
                axis=1,
            )
            second = np.mean([names[j][1] for j in k])
            if o.pattern == "plain":
                assert second < 0.02
            else:
                assert 0.1 < second < 0.9, (o, second)
    assert checked_objects > 40


def test_red_pixels_are_red_and_circles_are_round():
    scenes = W.generate(80, seed=21)
    for s in scenes:
        r = W.render(s)
        red = r.labels["color"] == C.number("red")
        if red.any():
            px = r.image[red].astype(int)
            assert (px[:, 0] > px[:, 1] + 40).all() and (px[:, 0] > px[:, 2] + 40).all()
    main_circles = [s for s in W.generate(200, seed=22) if s.main.shape == "circle"]
    assert main_circles
    for s in main_circles:
        r = W.render(s)
        m = s.main
        ys, xs = np.mgrid[0:64, 0:64] + 0.5
        dist = np.hypot(xs - m.x * 64, ys - m.y * 64) / (m.radius * 64)
        mine = (
            (r.labels["object"] == C.number("circle"))
            & (r.labels["color"] == C.number(m.color))
            & (r.labels["pattern"] == C.number(m.pattern))
        )
        # The main object is drawn on top: its whole disc is labelled with it ...
        assert mine[dist <= 0.97].all()
        # ... and nothing of it lies outside the disc (unless a distractor looks the same).
        twins = [
            o
            for o in s.objects[1:]
            if (o.shape, o.color, o.pattern) == ("circle", m.color, m.pattern)
        ]
        if not twins:
            assert not mine[(dist > 1.03) & (dist < 1.4)].any()
        expected = math.pi * (m.radius * 64) ** 2
        assert abs(mine[dist < 1.4].sum() - expected) <= 0.08 * expected + 8


def test_render_other_sizes():
    s = W.generate(1, seed=2)[0]
    r = W.render(s, 96)
    assert r.image.shape == (96, 96, 3) and r.image.dtype == np.uint8
    assert r.labels["object"].shape == (96, 96)
    small = W.render(s, 64)
    # The same scene at another resolution covers about the same fraction of the image.
    frac96 = (r.labels["object"] > 0).mean()
    frac64 = (small.labels["object"] > 0).mean()
    assert abs(frac96 - frac64) < 0.03


# --- text -------------------------------------------------------------------------------------


def test_caption_mentions_every_object_and_the_background():
    for s in W.generate(40, seed=8):
        text = T.caption(s)
        for o in s.objects:
            assert o.color in text
            assert o.shape in text  # "circle" is also in "circles"
            if o.pattern != "plain":
                assert o.pattern in text
        assert s.material in text
        assert text.startswith(("a ", "an ", "two ", "three "))
    s = W.generate(1, seed=8)[0]
    # The caption, read back as a phrase, names the main object's concepts.
    specs, _ = T.parse_phrase(T.caption(s))
    assert s.main.color in specs[0].required["color"]
    assert s.main.shape in specs[0].required["object"]


def _present(r: W.Rendered, name: str) -> bool:
    lab = {**r.labels, "scene": np.array(r.scene_label)}
    return bool(C.formula_mask(["leaf", name], lab).any())


@pytest.mark.parametrize(
    "phrase, present, absent",
    [
        ("red striped circles on sand", ["red", "striped", "circle", "sand"], []),
        ("striped", ["striped"], []),
        ("grass", ["grass"], []),
        ("red AND circle", ["red", "circle"], []),
        ("blue dotted stars in the sky", ["blue", "dotted", "star", "sky"], []),
        ("circle AND NOT red", ["circle"], ["red"]),
        ("a zorblax red thing", ["red"], []),
        ("checkered crosses on snow", ["checkered", "cross", "snow"], []),
        ("beach", ["sand"], []),
        ("NOT (red OR blue) AND square", ["square"], ["red", "blue"]),
        ("red not", ["red"], []),
    ],
)
def test_render_phrase_draws_the_named_concepts(phrase, present, absent):
    for seed in range(4):
        r = T.render_phrase_labeled(phrase, seed)
        assert np.array_equal(T.render_phrase(phrase, seed), r.image)
        for name in present:
            assert _present(r, name), (phrase, seed, name, T.caption(r.scene))
        for name in absent:
            assert not _present(r, name), (phrase, seed, name)


def test_render_phrase_conjunctions_hold_on_the_same_pixels():
    for seed in range(5):
        r = T.render_phrase_labeled("red striped circles", seed)
        obj = r.labels["object"] > 0
        assert (r.labels["object"][obj] == C.number("circle")).all()
        assert (r.labels["color"][obj] == C.number("red")).all()
        assert (r.labels["pattern"][obj] == C.number("striped")).all()
    plural = [len(T.phrase_scene("red striped circles", s).objects) for s in range(8)]
    assert min(plural) >= 2 - 1 and max(plural) >= 2  # plural phrases draw several objects
    two = T.render_phrase_labeled("red circles and blue squares", 1)
    for name in ("red", "circle", "blue", "square"):
        assert _present(two, name)


def test_render_phrase_alternatives_and_seeds():
    materials = {T.phrase_scene("grass OR sand", s).material for s in range(20)}
    assert materials == {"grass", "sand"}
    a = T.render_phrase("red circle", 1)
    assert np.array_equal(a, T.render_phrase("red circle", 1))
    assert not np.array_equal(a, T.render_phrase("red circle", 2))
    img = T.render_phrase("red circle", 1, size=80)
    assert img.shape == (80, 80, 3) and img.dtype == np.uint8


# --- Broden export ------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_broden_export_files_round_trip(tmp_path):
    from PIL import Image

    n, seed = 24, 13
    root = export_broden(tmp_path / "broden", n_images=n, seed=seed)
    assert root == tmp_path / "broden"
    assert [p.name for p in tmp_path.iterdir()] == ["broden"]  # no temporary left behind
    index = _read_csv(root / "index.csv")
    assert list(index[0]) == [
        "image",
        "split",
        "ih",
        "iw",
        "sh",
        "sw",
        "color",
        "object",
        "pattern",
        "material",
        "scene",
    ]
    assert len(index) == n
    scenes = W.generate(n, seed)
    freq = {c.number: 0 for c in C.CATALOGUE}
    for row, s in zip(index, scenes, strict=True):
        r = W.render(s)
        img = np.asarray(Image.open(root / "images" / row["image"]).convert("RGB"))
        assert np.array_equal(img, r.image)
        for cat in C.PIXEL_CATEGORIES:
            expected = r.labels[cat]
            if not row[cat]:
                assert not expected.any()
                continue
            got = decode_labels(np.asarray(Image.open(root / "images" / row[cat]).convert("RGB")))
            assert np.array_equal(got, expected)
            for num in np.unique(expected[expected > 0]):
                freq[int(num)] += 1
        assert int(row["scene"]) == r.scene_label
        freq[r.scene_label] += 1
        assert (int(row["sh"]), int(row["sw"])) == (64, 64)
    labels = _read_csv(root / "label.csv")
    assert [int(r["number"]) for r in labels] == [c.number for c in C.CATALOGUE]
    for r in labels:
        c = C.by_number(int(r["number"]))
        assert r["name"] == c.raw_name
        assert r["category"] == f"{c.category}({freq[c.number]})"
        assert int(r["frequency"]) == freq[c.number]
    cats = {r["name"]: r for r in _read_csv(root / "category.csv")}
    assert set(cats) == set(C.CATEGORIES)
    assert int(cats["color"]["first"]) == 1 and int(cats["color"]["count"]) == len(C.COLORS)
    c_scene = _read_csv(root / "c_scene.csv")
    assert [r["name"] for r in c_scene] == [s + "-s" for s in C.SCENES]
    assert sum(int(r["frequency"]) for r in c_scene) == n
    with pytest.raises(UsageError, match="empty directory"):
        export_broden(root, n_images=2, seed=seed)


def test_broden_export_loads_with_the_broden_loader(tmp_path):
    broden = pytest.importorskip("bench.probes.broden", reason="the Broden loader is not merged")
    n, seed = 30, 17
    root = export_broden(tmp_path / "b", n_images=n, seed=seed)
    probe = broden.BrodenProbe(root)
    assert len(probe) == n and probe.seg_size == (64, 64)
    assert set(probe.categories()) == set(C.CATEGORIES)
    by_number = {c.number: c for c in probe.concepts()}
    for c in C.CATALOGUE:
        assert by_number[c.number].name == c.name
        assert by_number[c.number].category == c.category
    for i, s in enumerate(W.generate(n, seed)):
        r = W.render(s)
        seg = probe.segmentation(i)
        for cat in C.PIXEL_CATEGORIES:
            got = seg.pixel.get(cat)
            got = np.zeros((64, 64), np.int32) if got is None else got[0]
            assert np.array_equal(got, r.labels[cat]), (i, cat)
        assert seg.image["scene"] == (r.scene_label,)
        assert np.array_equal(np.asarray(probe.load_image(i)), r.image)


def test_synthetic_probe_is_cached_and_uses_the_broden_loader(tmp_path):
    pytest.importorskip("bench.probes.broden", reason="the Broden loader is not merged")
    from bench.cache import Cache
    from bench.synth.probes import synthetic_probe

    p1 = synthetic_probe(tmp_path, n_images=12, seed=3)
    entries = Cache(tmp_path).entries("synth-broden")
    assert len(entries) == 1
    mtime = (entries[0].path / "index.csv").stat().st_mtime_ns
    p2 = synthetic_probe(tmp_path, n_images=12, seed=3)
    assert (entries[0].path / "index.csv").stat().st_mtime_ns == mtime  # a hit, not a rewrite
    assert p1.identity() == p2.identity() and len(p2) == 12
    assert p2.fixed_geometry and p2.has_segmentations
    from bench.synth.probes import PROBE_COLOR_WEIGHTS

    first = W.render(W.generate(1, seed=3, color_weights=PROBE_COLOR_WEIGHTS)[0])
    assert np.array_equal(p2.segmentation(0).pixel["object"][0], first.labels["object"])
    synthetic_probe(tmp_path, n_images=12, seed=4)
    assert len(Cache(tmp_path).entries("synth-broden")) == 2


# --- held-out classes -----------------------------------------------------------------------


def test_heldout_images_show_their_class_and_no_other():
    scenes, labels = heldout_scenes(60, seed=9)
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
    for s, k in zip(scenes, labels, strict=True):
        r = W.render(s)
        lab = {**r.labels, "scene": np.array(r.scene_label)}
        shown = [c for c in HELDOUT_CLASSES if C.formula_mask(["leaf", c], lab).any()]
        assert shown == [HELDOUT_CLASSES[k]], (T.caption(s), HELDOUT_CLASSES[k])


def test_heldout_probe():
    from bench.synth.probes import synthetic_heldout_probe

    probe = synthetic_heldout_probe(n_images=20, seed=5)
    assert len(probe) == 20 and probe.fixed_geometry and not probe.has_segmentations
    assert probe.class_names == list(HELDOUT_CLASSES)
    assert probe.labels.dtype == np.int64 and probe.labels.shape == (20,)
    img = probe.load_image(3)
    assert img.size == (64, 64) and img.mode == "RGB"
    same = synthetic_heldout_probe(n_images=20, seed=5)
    assert same.identity() == probe.identity()
    assert np.array_equal(np.asarray(same.load_image(3)), np.asarray(img))
    assert synthetic_heldout_probe(n_images=20, seed=6).identity() != probe.identity()


def test_colour_weights_make_colours_rare_and_leave_the_default_alone():
    from bench.synth.probes import PROBE_COLOR_WEIGHTS

    plain = W.generate(300, seed=5)
    weighted = W.generate(300, seed=5, color_weights=PROBE_COLOR_WEIGHTS)
    assert plain == W.generate(300, seed=5, color_weights=None)

    def share(scenes, colours):
        objs = [o for s in scenes for o in s.objects]
        return sum(o.color in colours for o in objs) / len(objs)

    rare = set(PROBE_COLOR_WEIGHTS)
    assert share(plain, rare) > 0.25  # three colours of eight, drawn alike
    assert share(weighted, rare) < 0.12  # weight 0.12 each: about 6.5% of objects
    with pytest.raises(UsageError, match="non-negative colour weights"):
        W.sample_scene(W.scene_rng(0, 0), color_weights={"red": -1.0})


def _leaf(name: str) -> list:
    return ["leaf", name]


@pytest.mark.parametrize(
    ("phrase", "tree"),
    [
        # English: the adjectives before a prose "or" take the last alternative's shape
        (
            "red or green squares",
            [
                "or",
                ["and", _leaf("red"), _leaf("square")],
                ["and", _leaf("green"), _leaf("square")],
            ],
        ),
        (
            "striped or dotted circles",
            [
                "or",
                ["and", _leaf("striped"), _leaf("circle")],
                ["and", _leaf("dotted"), _leaf("circle")],
            ],
        ),
        # an alternative with its own shape keeps it; formula text is literal
        (
            "red squares or circles",
            ["or", ["and", _leaf("red"), _leaf("square")], _leaf("circle")],
        ),
        ("red OR green squares", ["or", _leaf("red"), ["and", _leaf("green"), _leaf("square")]]),
        ("red or green", ["or", _leaf("red"), _leaf("green")]),
        ("grass or red squares", ["or", _leaf("grass"), ["and", _leaf("red"), _leaf("square")]]),
    ],
)
def test_a_prose_or_shares_the_shape(phrase, tree):
    assert T.parse_phrase(phrase)[1] == tree
    assert T.read_phrase_tree(phrase) == tree
    specs, _ = T.parse_phrase(phrase)
    if phrase == "red or green squares":  # drawn as a red square or a green one
        assert all(s.required.get("object") == ("square",) for s in specs)
        sq, wanted = C.number("square"), {C.number("red"), C.number("green")}
        for seed in range(8):
            r = T.render_phrase_labeled(phrase, seed)
            on = r.labels["object"] == sq
            assert wanted & set(np.unique(r.labels["color"][on]).tolist()), seed


@pytest.mark.parametrize(
    ("phrase", "tree"),
    [
        (
            "red squares on grass",
            ["and", ["and", _leaf("red"), _leaf("square")], ["image", _leaf("grass")]],
        ),
        (
            "red dotted squares on snow or on sand",
            [
                "and",
                ["and", _leaf("red"), _leaf("dotted"), _leaf("square")],
                ["image", ["or", _leaf("snow"), _leaf("sand")]],
            ],
        ),
        (
            "green or blue objects on snow",
            ["and", ["or", _leaf("green"), _leaf("blue")], ["image", _leaf("snow")]],
        ),
        (
            "red circles in a meadow",
            ["and", ["and", _leaf("red"), _leaf("circle")], ["image", _leaf("meadow")]],
        ),
        (
            "red squares not on grass",
            ["and", ["and", _leaf("red"), _leaf("square")], ["image", ["not", _leaf("grass")]]],
        ),
        # no context: read as parse_phrase reads it
        ("red striped circles", ["and", _leaf("red"), _leaf("striped"), _leaf("circle")]),
        ("red circles with stripes", ["and", _leaf("red"), _leaf("circle"), _leaf("striped")]),
        ("on grass", _leaf("grass")),  # a context of nothing: the background itself
        ("objects on snow", _leaf("snow")),
        (
            "red circle on grass with stripes",
            ["and", _leaf("red"), _leaf("circle"), _leaf("grass"), _leaf("striped")],
        ),
    ],
)
def test_read_phrase_tree_marks_the_context_as_on_the_image(phrase, tree):
    from bench.synth.registration import read_phrase

    assert T.read_phrase_tree(phrase) == tree
    assert read_phrase(phrase) == tree
    if "image" not in repr(tree):
        assert tree == T.parse_phrase(phrase)[1]
    # drawing is unchanged: the scene's tree has no image marks
    assert "image" not in repr(T.parse_phrase(phrase)[1])
