"""Concept presence of labels (bench.presence) against explicit mask logic on the segmentations."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cache import Cache
from bench.dissect import concept_table_cached
from bench.formula import parse
from bench.presence import (
    SegmentationPresence,
    label_reader,
    read_label,
    segmentation_presence,
)
from bench.probes import load_probe


@pytest.fixture(scope="module")
def probe_and_source(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache = Cache(tmp_path_factory.mktemp("presence-cache"))
    probe = load_probe("synthetic", None, options={"n_images": 30}, cache=cache)
    return probe, SegmentationPresence(concept_table_cached(cache, probe))


def _explicit_masks(probe, i: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Concept name -> bool [sh, sw] straight from the segmentation of image ``i``."""
    seg = probe.segmentation(i)
    sh, sw = probe.seg_size
    out = {}
    for c in probe.concepts():
        m = np.zeros((sh, sw), dtype=bool)
        for layers in seg.pixel.values():
            m |= np.any(np.asarray(layers) == c.number, axis=0)
        for numbers in seg.image.values():
            if c.number in numbers:
                m[:] = True
        out[c.name] = m
    return out


def test_formula_presence_equals_explicit_mask_logic(probe_and_source) -> None:  # type: ignore[no-untyped-def]
    probe, source = probe_and_source
    texts = ["(red OR blue) AND NOT circle", "circle AND meadow", "striped", "NOT grass"]
    formulas = [parse(t) for t in texts]
    cov = source.coverage(formulas)
    pres = source.presence(formulas)
    for i in range(len(probe)):
        m = _explicit_masks(probe, i)
        explicit = [
            (m["red"] | m["blue"]) & ~m["circle"],
            m["circle"] & m["meadow"],
            m["striped"],
            ~m["grass"],
        ]
        for j, e in enumerate(explicit):
            assert cov[j, i] == pytest.approx(e.mean(), abs=1e-12)
            assert pres[j, i] == float(e.any())
            np.testing.assert_array_equal(source.pixel_masks(formulas[j], [i])[0], e)
    # the hand case is not degenerate: the first three formulas are present in some images and
    # absent in others (NOT grass holds somewhere in every image with an object)
    n = pres[:3].sum(axis=1)
    assert np.all((n > 0) & (n < len(probe)))


def test_min_fraction_needs_that_share_of_pixels(probe_and_source) -> None:  # type: ignore[no-untyped-def]
    probe, source = probe_and_source
    strict = SegmentationPresence(source.table, min_fraction=0.1)
    f = [parse("red")]
    cov = source.coverage(f)[0]
    np.testing.assert_array_equal(strict.presence(f)[0], (cov > 0.1).astype(float))
    assert strict.presence(f).sum() < source.presence(f).sum()


def test_labels_are_read_or_reported_unparsed(probe_and_source) -> None:  # type: ignore[no-untyped-def]
    probe, source = probe_and_source
    reader = label_reader(probe.name)
    assert reader is not None  # the synthetic world registers its phrase parser
    labels = ["red-c", "red striped circles", "depictions", "red AND unicorn", "blue"]
    extras = [None, None, None, None, {"formula": ["or", ["leaf", "blue"], ["leaf", "green"]]}]
    out = segmentation_presence(labels, source, extras=extras, reader=reader)
    r = out.readings
    assert (r[0].source, str(r[0].formula)) == ("concept", "red")
    assert (r[1].source, str(r[1].formula)) == ("reader", "red AND striped AND circle")
    assert not r[2].parsed and np.all(np.isnan(out.presence[2]))
    assert not r[3].parsed and "unicorn" in r[3].reason
    assert (r[4].source, str(r[4].formula)) == ("formula-tree", "blue OR green")
    assert out.unparsed == 2
    np.testing.assert_array_equal(out.presence[0], source.presence([parse("red")])[0])
    # without the reader, free text is unparsed, never read as absent
    plain = read_label("red striped circles", source.names)
    assert not plain.parsed


def test_image_level_formula_equals_image_logic_and_matches_inverts_membership(
    probe_and_source,
) -> None:  # type: ignore[no-untyped-def]
    """INVERT's formulas (``formula_level`` ``image``) combine image-level labels: "water AND
    red" holds on an image with a water background and a red object, which no single pixel is.
    Per pixel that formula is on no image (so every score of it was undefined); per image it
    equals explicit logic on the images' concepts, and INVERT's own membership."""
    from bench.dissect import image_concepts
    from bench.formula import evaluate, from_json

    probe, source = probe_and_source
    tree = ["and", ["leaf", "water"], ["leaf", "red"], ["not", ["leaf", "yellow"]]]
    label = "water AND red AND NOT yellow"
    image_level = {"formula": tree, "formula_level": "image"}
    out = segmentation_presence([label, label], source, extras=[image_level, {"formula": tree}])
    per_image, per_pixel = out.presence
    assert out.readings[0].level == "image" and out.readings[1].level == "pixel"
    assert per_pixel.sum() == 0  # water is background, red an object: never the same pixel
    explicit = np.array(
        [
            m["water"].any() and m["red"].any() and not m["yellow"].any()
            for m in (_explicit_masks(probe, i) for i in range(len(probe)))
        ]
    )
    np.testing.assert_array_equal(per_image, explicit.astype(float))
    assert 0 < per_image.sum() < len(probe)
    np.testing.assert_array_equal(source.image_holds(from_json(tree)), explicit)
    # INVERT's membership: the same formula on the image-level labels INVERT searches over
    labels = image_concepts(source.table)
    code = {c.name: i + 1 for i, c in enumerate(source.table.concepts)}
    np.testing.assert_array_equal(
        evaluate(from_json(tree), lambda name: labels[:, code[name]]), explicit
    )
    bad = segmentation_presence([label], source, extras=[{"formula": tree, "formula_level": "x"}])
    assert not bad.readings[0].parsed and "formula_level" in bad.readings[0].reason


def test_context_holds_on_the_image_and_is_broadcast_over_its_pixels(probe_and_source) -> None:  # type: ignore[no-untyped-def]
    """ "red squares on grass" (the synthetic reader's context, issue 13): the red square pixels
    of the images where any grass pixel is. Read per pixel (red AND square AND grass) it holds
    on no image, since a square's pixels are not grass pixels."""
    probe, source = probe_and_source
    labels = ["red squares on grass", "red squares not on grass", "green or blue objects on snow"]
    out = segmentation_presence(labels, source, reader=label_reader(probe.name))
    formulas = [r.formula for r in out.readings]
    for i in range(len(probe)):
        m = _explicit_masks(probe, i)
        explicit = [
            m["red"] & m["square"] & m["grass"].any(),
            m["red"] & m["square"] & (not m["grass"].any()),
            (m["green"] | m["blue"]) & m["snow"].any(),
        ]
        for j, e in enumerate(explicit):
            assert out.coverage[j, i] == pytest.approx(e.mean(), abs=1e-12)
            assert out.presence[j, i] == float(e.any())
            np.testing.assert_array_equal(source.pixel_masks(formulas[j], [i])[0], e)  # type: ignore[arg-type]
    # not degenerate here, while the per-pixel conjunction holds on no image
    assert 0 < out.presence[0].sum() < out.presence[0].size
    assert source.presence([parse("red AND square AND grass")]).sum() == 0
    assert [str(f) for f in formulas] == [
        'red AND square AND "image:grass"',
        'red AND square AND NOT "image:grass"',
        '(green OR blue) AND "image:snow"',
    ]
    assert [r.image_leaves for r in out.readings] == [("grass",), ("grass",), ("snow",)]
    assert all(r.source == "reader" and r.level == "pixel" for r in out.readings)


def test_mixed_level_formula_from_a_reader_tree(probe_and_source) -> None:  # type: ignore[no-untyped-def]
    """A reader's ``["image", F]`` may sit anywhere: OR across levels, NOT of a context."""
    from bench.errors import DataError, FormulaError
    from bench.presence import reader_formula

    probe, source = probe_and_source
    tree = ["or", ["and", ["leaf", "red"], ["image", ["not", ["leaf", "grass"]]]], ["leaf", "blue"]]
    mixed = reader_formula(tree)
    assert str(mixed) == 'red AND NOT "image:grass" OR blue'
    cov = source.coverage([mixed, parse("red")])
    for i in range(len(probe)):
        m = _explicit_masks(probe, i)
        e = (m["red"] & (not m["grass"].any())) | m["blue"]
        assert cov[0, i] == pytest.approx(e.mean(), abs=1e-12)
        assert cov[1, i] == pytest.approx(m["red"].mean(), abs=1e-12)  # batched with the rest
        np.testing.assert_array_equal(source.pixel_masks(mixed, [i])[0], e)
    with pytest.raises(DataError, match="image-level leaf"):
        source.holds(mixed)  # its value per signature depends on the image
    with pytest.raises(FormulaError, match="one operand"):
        reader_formula(["image", ["leaf", "red"], ["leaf", "blue"]])
    # the mark is the reader's: written in a label, "image:grass" is no concept of the probe
    typed = read_label('red AND "image:grass"', source.names)
    assert not typed.parsed and "image:grass" in typed.reason


def test_context_reading_undoes_dnds_degenerate_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """DnD labels of the embedded default that the per-pixel reading left out as degenerate
    (on no image) are scored with the context on the image; labels without a context read as
    the phrase parser always read them."""
    from bench.formula import from_json
    from bench.synth.text import parse_phrase

    cache = Cache(tmp_path)
    probe = load_probe("synthetic", None, options={"n_images": 200}, cache=cache)
    source = SegmentationPresence(concept_table_cached(cache, probe))
    reader = label_reader(probe.name)
    with_context = [
        "green objects on water",
        "yellow objects on snow",
        "red objects on grass",
        "blue circles on snow",
        "red squares in the sky",
        "red squares on water",
        "red striped objects on water",
        "purple objects on snow",
    ]
    old = source.presence([from_json(parse_phrase(t)[1]) for t in with_context])  # type: ignore[arg-type]
    assert np.all(old.sum(axis=1) == 0)  # every one degenerate per pixel
    new = segmentation_presence(with_context, source, reader=reader).presence
    n_on = new.sum(axis=1)
    assert np.all((n_on > 0) & (n_on < len(probe))), n_on
    plain = ["red squares", "snow", "red dotted circles", "white circles or squares"]
    readings = segmentation_presence(plain, source, reader=reader).readings
    assert [r.formula for r in readings] == [from_json(parse_phrase(t)[1]) for t in plain]  # type: ignore[arg-type]
    assert not any(r.image_leaves for r in readings)
