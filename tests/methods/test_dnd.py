"""Describe-and-Dissect: crops on hand-made maps, scoring on a hand-made ranking, prompts and
post-processing, the conformance kit, planted units of the synthetic world, and the whole
pipeline on tiny real backends (BLIP, GPT-2, Stable Diffusion, open_clip; random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cache import Cache
from bench.components import ComponentError, build_components, default_backends
from bench.errors import ConfigError, RequirementError
from bench.schema import UnitRef
from methods.base import MethodContext
from methods.dnd import COMPONENTS, DnD
from methods.dnd import crops as C
from methods.dnd import prompts as P
from methods.dnd import scoring as S


def synthetic_components() -> dict[str, Any]:
    return build_components(default_backends(COMPONENTS, synthetic=True))


def tiny_mean_evidence(cache: Cache) -> Any:
    from bench.testing import tiny_evidence

    return tiny_evidence(cache, topk_by=("max", "mean"))


# --- step 1: crops --------------------------------------------------------------------------------


def test_crops_of_a_hand_made_map_are_the_blobs_boxes() -> None:
    act = np.zeros((20, 20), np.float32)
    act[2:6, 3:10] = 1.0  # 4 x 7 = 28 px
    act[12:18, 12:16] = 0.8  # 6 x 4 = 24 px
    act[0, 19] = 0.9  # 1 px
    boxes = C.attention_boxes(act, (20, 20))
    assert boxes == [(3, 2, 10, 6), (12, 12, 16, 18), (19, 0, 20, 1)]
    assert C.attention_boxes(act, (20, 20), max_crops=2) == boxes[:2]
    # diagonal neighbours are one region (8-connectivity, as OpenCV's contours)
    diag = np.zeros((8, 8), np.float32)
    diag[1, 1] = diag[2, 2] = diag[3, 3] = 1.0
    assert C.attention_boxes(diag, (8, 8)) == [(1, 1, 4, 4)]
    # a fully connected unit (1x1 map) is not cropped
    assert C.attention_boxes(np.ones((1, 1)), (32, 32)) == []


def test_crop_box_selection_rules() -> None:
    size = (20, 20)
    whole_ish = (0, 0, 20, 19)  # IoU with the image 0.95: dropped
    a = (0, 0, 10, 10)
    b = (1, 1, 10, 10)  # IoU with a = 81/100 > 0.5: dropped
    half = (0, 0, 10, 20)  # IoU with a = 100/200 = 0.5: kept (<= 0.5)
    c = (12, 0, 20, 8)
    d = (12, 12, 20, 20)
    assert C.select_boxes([whole_ish, a, b, half, c, d], size) == [a, half, c, d]
    assert C.select_boxes([(0, 0, 20, 16)], size) == []  # IoU exactly 0.8 with the image
    assert C.select_boxes([a, half, c, d, (15, 9, 20, 11)], size) == [a, half, c, d]  # max 4


def test_crops_follow_an_upsampled_map() -> None:
    act = np.zeros((4, 4), np.float32)
    act[1, 2] = 3.0  # the cell covering x 8..12, y 4..8 of a 16 x 16 image
    (box,) = C.attention_boxes(act, (16, 16))
    x0, y0, x1, y1 = box
    assert 6 <= x0 <= 8 and 12 <= x1 <= 14 and 2 <= y0 <= 4 and 8 <= y1 <= 10, box


def test_the_byte_image_is_resized_bicubically() -> None:
    """Pillow's bicubic filter (a = -0.5) from 2 to 4 columns, by hand: output column 0 is
    centred at input 0.25, so its taps are 0.25 and 1.25 away from the input pixels' centres,
    weights W(0.25) = 0.8672 and W(1.25) = -0.0703, normalised 1.0882 and -0.0882; column 1
    (centre 0.75): 0.7929 and 0.2071. A row [0, 255] becomes [-22.5 -> 0, 52.8 -> 53,
    202.2 -> 202, 277.5 -> 255] (bilinear would give [0, 64, 191, 255])."""
    row = np.array([[0, 255], [0, 255]], np.uint8)
    np.testing.assert_array_equal(C.resize_bytes(row, (4, 4)), [[0, 53, 202, 255]] * 4)
    # the cast comes first and truncates, as ToPILImage's act.mul(255).byte()
    act = np.array([[0.0, 0.999], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(C.heat_bytes(act), [[0, 254], [127, 255]])
    np.testing.assert_array_equal(C.heatmap(act, (2, 2)), C.heat_bytes(act))
    # Otsu on the resized columns 0, 53, 202, 255: any t in 53..201 splits them, the first wins
    assert C.otsu_threshold(C.resize_bytes(row, (4, 4))) == 53
    assert C.attention_boxes(row / 255.0, (4, 4)) == [(2, 0, 4, 4)]


def test_otsu_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(0)
    img = np.concatenate([rng.normal(60, 10, 500), rng.normal(180, 20, 300)])
    img = np.clip(img, 0, 255).astype(np.uint8)

    def brute(x: np.ndarray) -> int:
        best, arg = -1.0, 0
        for t in range(256):
            lo, hi = x[x <= t].astype(float), x[x > t].astype(float)
            if len(lo) == 0 or len(hi) == 0:
                continue
            v = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
            if v > best * (1 + 1e-12):
                best, arg = v, t
        return arg

    assert C.otsu_threshold(img) == brute(img)
    two = np.array([10] * 50 + [200] * 50, np.uint8)
    assert C.otsu_threshold(two) == 10  # every t in 10..199 splits them; the first wins
    assert C.otsu_threshold(np.full((4, 4), 7, np.uint8)) == 0  # one level: OpenCV's 0


def _ring(size: int = 16, gap: bool = False) -> np.ndarray:
    """A 1-px ring over rows/columns 1..10 (box (1, 1, 11, 11), area 100) with a 2x2 blob in
    its hole (box (5, 5, 7, 7)) and a 2x2 blob outside (box (13, 13, 15, 15)); ``gap`` opens
    the ring's right side at rows 5..6, joining its hole to the outside background."""
    act = np.zeros((size, size), np.float32)
    act[1, 1:11] = act[10, 1:11] = act[1:11, 1] = act[1:11, 10] = 1.0
    act[5:7, 5:7] = 1.0
    act[13:15, 13:15] = 1.0
    if gap:
        act[5:7, 10] = 0.0
    return act


def test_regions_nested_in_a_hole_are_not_regions() -> None:
    """OpenCV's RETR_EXTERNAL: the blob inside the closed ring is not a region of its own (the
    ring's box covers it). Once the ring is open, the blob touches the outside background and
    is a region; it ties in area (4) with the outer blob, which starts later in the scan (row
    13 against row 5) and so comes first."""
    closed = _ring()
    assert C.region_boxes(closed > 0) == [(1, 1, 11, 11), (13, 13, 15, 15)]
    assert C.attention_boxes(closed, (16, 16)) == [(1, 1, 11, 11), (13, 13, 15, 15)]
    opened = _ring(gap=True)
    assert C.region_boxes(opened > 0) == [(1, 1, 11, 11), (13, 13, 15, 15), (5, 5, 7, 7)]
    # a blob in the hole of a ring that itself sits in the hole of a larger ring: not a region
    act = np.zeros((20, 20), np.float32)
    act[0, :] = act[19, :] = act[:, 0] = act[:, 19] = 1.0
    act[2:18, 2:18] = _ring()
    assert C.region_boxes(act > 0) == [(0, 0, 20, 20)]
    # regions touching the frame are outer regions (the frame counts as background)
    edge = np.zeros((6, 6), bool)
    edge[0:2, :] = True
    edge[4:, 0:3] = True
    assert C.region_boxes(edge) == [(0, 0, 6, 2), (0, 4, 3, 6)]


def test_equal_areas_keep_opencvs_contour_order() -> None:
    """findContours lists outer contours in reverse scan order of their first (top-most, then
    left-most) pixel; the original's stable sort by area keeps that order among equal areas.
    Five 2x2 squares: bottom-right (first pixel row 9, col 9), bottom-left (9, 0), middle
    (6, 4), top-right (1, 8), top-left (1, 1); four crops at most drop the top-left one."""
    act = np.zeros((12, 12), np.float32)
    for y, x in ((1, 1), (1, 8), (6, 4), (9, 0), (9, 9)):
        act[y : y + 2, x : x + 2] = 1.0
    tl, tr, mid, bl, br = (1, 1, 3, 3), (8, 1, 10, 3), (4, 6, 6, 8), (0, 9, 2, 11), (9, 9, 11, 11)
    assert C.region_boxes(act > 0) == [br, bl, mid, tr, tl]
    assert C.attention_boxes(act, (12, 12)) == [br, bl, mid, tr]
    # same top row: the region whose first pixel lies further right comes first, whatever its
    # box's left edge: P's first pixel is (2, 9) with box x0 = 7, Q's is (2, 0) with x0 = 0...
    m = np.zeros((8, 12), bool)
    m[2, 9] = True
    m[3, 7:10] = True  # P: box (7, 2, 10, 4), area 6
    m[2, 0:3] = True
    m[3, 0] = True  # Q: box (0, 2, 3, 4), area 6
    assert C.region_boxes(m) == [(7, 2, 10, 4), (0, 2, 3, 4)]
    # ... and R below them (box (3, 6, 9, 7), area 6) starts last, so it comes first
    m[6, 3:9] = True
    assert C.region_boxes(m) == [(3, 6, 9, 7), (7, 2, 10, 4), (0, 2, 3, 4)]


def test_activation_maps_are_normalised_before_the_byte_cast() -> None:
    """The original casts unnormalised activations to bytes: 1.2 * 255 = 306 wraps to 50,
    below the 0.6 background's 153, so Otsu selects the background, whose box is the whole
    image and is dropped. Scaling the map into [0, 1] first (dividing by 1.2: 0.5 -> 127,
    1.0 -> 255) finds the peak."""
    act = np.full((16, 16), 0.6, np.float32)
    act[4:9, 4:9] = 1.2
    legacy = C.legacy_byte_map(act)
    assert legacy[0, 0] == 153 and legacy[5, 5] == 50
    assert C.attention_boxes(act, (16, 16), legacy_byte_cast=True) == []
    assert C.attention_boxes(act, (16, 16)) == [(4, 4, 9, 9)]
    heat = C.heat_bytes(act)
    assert heat[0, 0] == 127 and heat[5, 5] == 255
    np.testing.assert_array_equal(C.heat_bytes(act, legacy_byte_cast=True), legacy)
    # wrapping is modulo 256 after truncation: 1.5 -> 382 -> 126, 2.0 -> 510 -> 254
    np.testing.assert_array_equal(C.legacy_byte_map(np.array([1.5, 2.0, 0.999])), [126, 254, 254])
    # a map within [0, 1] is cast unchanged: there the default is the original
    inside = np.array([[0.2, 0.9], [0.4, 0.6]], np.float32)
    np.testing.assert_array_equal(C.heat_bytes(inside), C.legacy_byte_map(inside))
    assert C.heat_bytes(inside)[0, 0] == 51  # not stretched to 0
    # negative values: min-max into [0, 1]
    np.testing.assert_allclose(C.normalise_map(np.array([-1.0, 0.0, 3.0])), [0.0, 0.25, 1.0])
    # a constant map above 1 is all 255: one region, the whole image, which is dropped
    assert C.attention_boxes(np.full((3, 3), 7.0), (9, 9)) == []


def test_crops_match_opencv_and_pillow_on_random_maps() -> None:
    """Oracle (skipped without OpenCV): the original's pipeline run with ToPILImage, Pillow and
    OpenCV against ours, on random maps with plateaus (ties) and values above 1."""
    cv2 = pytest.importorskip("cv2")
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")

    def original(act: np.ndarray, side: int) -> list[tuple[int, int, int, int]]:
        heat = transforms.ToPILImage()(torch.as_tensor(act))
        heat = np.array(heat.resize([side, side]))
        _, th = cv2.threshold(heat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        found = cv2.findContours(th, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in map(cv2.boundingRect, found)]
        return C.select_boxes(sorted(boxes, key=lambda b: -C.box_area(b)), (side, side))

    rng = np.random.default_rng(0)
    for k in range(120):
        hw, side = int(rng.integers(3, 12)), int(rng.choice([24, 64, 100]))
        act = (rng.random((hw, hw)) ** 3 * (1.0 if k % 2 else 3.0)).astype(np.float32)
        if k % 3 == 0:
            act = np.round(act * 4) / 4  # plateaus: equal areas and nested regions
        assert C.attention_boxes(act, (side, side), legacy_byte_cast=True) == original(act, side)
        if k % 2:  # within [0, 1]: the default is the original
            assert C.attention_boxes(act, (side, side)) == original(act, side)


# --- step 3: scoring ------------------------------------------------------------------------------

# Three candidates, three generated images each; the unit's activations:
#   A: 9, 1, 0.5     B: 8, 7, 6     C: 5, 4, 0.1
# Joint ranking: A0 B0 B1 B2 C0 C1 A1 A2 C2 -> ranks A [0, 6, 7], B [1, 2, 3], C [4, 5, 8].
ACTS = [np.array([9.0, 1.0, 0.5]), np.array([8.0, 7.0, 6.0]), np.array([5.0, 4.0, 0.1])]


def test_rank_images_by_hand() -> None:
    ranks = S.rank_images(ACTS)
    assert [r.tolist() for r in ranks] == [[0, 6, 7], [1, 2, 3], [4, 5, 8]]
    # ties: earlier candidate first, then earlier image
    assert [r.tolist() for r in S.rank_images([np.array([1.0, 2.0]), np.array([2.0])])] == [
        [0, 2],
        [1],
    ]


def test_each_scoring_function_on_a_hand_made_ranking() -> None:
    # Unit's top images embed as (1, 0) and (0, 1). With top=3 the overall best generated
    # images are A0, B0, B1; C has none (-1).
    unit = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = np.sqrt(0.5)
    gen = [
        np.array([[r, r], [0, 0], [0, 0]]),  # A0: mean cosine (r + r) / 2 = 0.7071
        np.array([[0.6, 0.8], [0.8, 0.6], [0, 0]]),  # B0, B1: mean (.6 + .8 + .8 + .6) / 4 = .7
        np.zeros((3, 2)),
    ]

    def run(scoring: str, k: int = 2) -> S.Scored:
        return S.score_candidates(ACTS, unit, gen, scoring=scoring, k=k, top=3)

    # Mean rank: A 13/3, B 2, C 17/3 -> B, A, C
    m = run("mean")
    np.testing.assert_allclose(m.mean, [13 / 3, 2.0, 17 / 3])
    assert m.order == [1, 0, 2]
    # TopK-squared, K=2: A (0 + 36) / 2 = 18, B (1 + 4) / 2 = 2.5, C (16 + 25) / 2 = 20.5
    t2 = run("topk-squared")
    np.testing.assert_allclose(t2.topk_squared, [18.0, 2.5, 20.5])
    assert t2.order == [1, 0, 2]
    # K=1: A 0, B 1, C 16 -> A, B, C
    assert run("topk-squared", k=1).order == [0, 1, 2]
    # Image products: A 0.7071, B 0.7, C -1 -> A, B, C
    ip = run("image-products")
    np.testing.assert_allclose(ip.image_products, [r, 0.7, -1.0])
    assert ip.order == [0, 1, 2]
    # Combined (K=2): TopK order B, A, C -> weights 3, 2, 1:
    #   B 3 * 0.7 = 2.1, A 2 * 0.7071 = 1.414, C 1 * -1 = -1 -> B, A, C
    comb = run("combined")
    np.testing.assert_allclose(comb.combined, [2 * r, 2.1, -1.0])
    assert comb.order == [1, 0, 2]
    assert comb.score(1) == pytest.approx(2.1)


# --- step 2: prompts and post-processing ----------------------------------------------------------


def test_prompts_are_the_papers() -> None:
    chat = P.summary_prompt(["a red car", "a red dress"])
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[1]["content"] == "multicolored textiles"
    assert chat[3]["content"] == "red-themed scenes"
    assert chat[-1]["content"].endswith("following descriptions: a red car, a red dress")
    simple = P.simplify_prompt("a red background with a tree")
    assert simple[1]["content"] == "A red background"
    assert simple[-1]["content"].endswith("unnecessary details: a red background with a tree")
    assert P.refeed_prompt(["a", "b"])[0]["content"].endswith("descriptions: a, b")
    assert P.IMAGE_PROMPT.format("red cars") == "One realistic image of red cars"


def test_answer_post_processing() -> None:
    assert P.after_colon("Concept: Red Cars") == " Red Cars"  # leading space kept, as the original
    assert P.needs_refeed("red cars, blue cars") and not P.needs_refeed("red cars")
    # re-summarise items are the original's split: each item after a comma keeps its space
    items = P.refeed_items("red cars, blue cars,")
    assert items == ["red cars", " blue cars", ""]
    assert P.refeed_prompt(items)[0]["content"].endswith("descriptions: red cars,  blue cars, ")
    # lower-cased, one trailing period dropped; quotes and inner spacing kept; surrounding
    # whitespace stripped (our one deviation)
    assert P.candidate(' "Red  Cars". ') == '"red  cars"'
    assert P.candidate("etc..") == "etc."
    assert P.candidates(
        ["Red cars.", " red cars", '"Red cars"', "Floral Designs", "floral design.", "blue sky"]
    ) == [
        "red cars",
        '"red cars"',
        "floral designs",
        "floral design",  # a trailing period hides the last word from the design rule
        "blue sky",
        "floral designs background",  # twins follow the answers, as the original appends them
    ]
    assert P.background_twin("Abstract GRAPHIC") == "abstract graphic background"
    assert P.background_twin("graphic designer") is None
    for empty in ("", "  ", "."):
        with pytest.raises(P.EmptyAnswerError, match="summary 2 of 2 .*was empty"):
            P.candidates(["red", empty])


class _ScriptedLM:
    """Answers the three DnD prompts with fixed texts and records every request."""

    def __init__(self, summary: str, refeed: str = "red cars") -> None:
        self.summary, self.refeed = summary, refeed
        self.requests: list[str] = []

    def identity(self) -> dict[str, Any]:
        return {"name": "scripted", "revision": self.summary + "|" + self.refeed}

    def complete(self, prompts: Any) -> list[str]:
        from bench.components.base import as_messages

        out = []
        for p in prompts:
            text = as_messages(p)[-1]["content"]
            self.requests.append(text)
            if text.startswith(P.SIMPLIFY_INSTRUCTION):
                out.append("  A Red Circle.")
            elif text.startswith(P.SUMMARY_INSTRUCTION):
                out.append(self.summary)
            else:
                out.append(self.refeed)
        return out


def test_text_reaches_the_llm_as_the_original_sends_it(tmp_path: Path) -> None:
    """Simplified captions go into the summary prompt unchanged (not lower-cased or cleaned);
    a comma-list answer after "Label:" is sent back with the original's spacing; the answer is
    post-processed as the original's (lower-case, one period off, quotes kept)."""
    cache = Cache(tmp_path)
    ev = tiny_mean_evidence(cache)
    lm = _ScriptedLM("Label: red cars, blue cars", refeed='"Red Cars".')
    comps = {**synthetic_components(), "language_model": lm}
    ctx = MethodContext(cache=cache, target=ev.target, components=comps)
    (d,) = DnD(num_summaries=2, component_cache="never").describe(
        [UnitRef(layer="conv", index=0)], ev, ctx
    )
    assert d.ok, d.error
    # (identical requests are sent once)
    summaries = {r for r in lm.requests if r.startswith(P.SUMMARY_INSTRUCTION)}
    assert summaries == {P.SUMMARY_INSTRUCTION + ", ".join(["  A Red Circle."] * 10)}
    refeeds = {r for r in lm.requests if r.startswith(P.REFEED_INSTRUCTION)}
    assert refeeds == {P.REFEED_INSTRUCTION + " red cars,  blue cars"}
    assert d.extras["candidates"] == ['"red cars"'] and d.label == '"red cars"'


def test_an_empty_answer_is_an_error_record(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    ev = tiny_mean_evidence(cache)
    comps = {**synthetic_components(), "language_model": _ScriptedLM("  ")}
    ctx = MethodContext(cache=cache, target=ev.target, components=comps)
    units = [UnitRef(layer="conv", index=i) for i in range(2)]
    out = DnD(component_cache="never").describe(units, ev, ctx)
    assert [d.status for d in out] == ["error", "error"]
    assert all("summary 1 of 5 from the language model was empty" in (d.error or "") for d in out)


# --- the method -----------------------------------------------------------------------------------


def test_conformance_with_synthetic_components(tmp_path: Path) -> None:
    from bench.testing import check_method

    ev = tiny_mean_evidence(Cache(tmp_path / "cache"))
    out = check_method(DnD, tmp_path, components=synthetic_components(), evidence=ev)
    for d in out:
        assert 1 <= len(d.extras["labels"]) <= 3 and d.label == d.extras["labels"][0]
        assert d.extras["model_calls"]["generated_images"] == 10 * len(d.extras["candidates"])
        assert d.seconds is not None and d.extras["seconds"] > 0


def test_requirements_and_config_errors(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    ev = tiny_mean_evidence(cache)
    unit = [UnitRef(layer="conv", index=0)]
    bare = MethodContext(cache=cache, target=ev.target)
    with pytest.raises(RequirementError, match="needs components"):
        DnD().describe(unit, ev, bare)
    ctx = MethodContext(cache=cache, target=ev.target, components=synthetic_components())
    (d,) = DnD(num_images=40).describe(unit, ev, ctx)  # the record kept 15 per unit
    assert d.status == "error" and "record with k >= 40" in (d.error or "")
    with pytest.raises(ConfigError, match="scoring must be one of"):
        DnD(scoring="best")
    with pytest.raises(ConfigError, match="image_prompt"):
        DnD(image_prompt="no slot")


def test_a_failing_model_fails_the_chunk_once(tmp_path: Path) -> None:
    class Down:
        calls = 0

        def identity(self) -> dict[str, Any]:
            return {"name": "down", "revision": "0"}

        def complete(self, prompts: Any) -> list[str]:
            Down.calls += 1
            raise ComponentError("server down")

    cache = Cache(tmp_path)
    ev = tiny_mean_evidence(cache)
    comps = {**synthetic_components(), "language_model": Down()}
    units = [UnitRef(layer="conv", index=i) for i in range(4)]
    out = DnD().describe(units, ev, MethodContext(cache=cache, target=ev.target, components=comps))
    assert [d.status for d in out] == ["error"] * 4
    assert all("server down" in (d.error or "") for d in out)
    assert Down.calls == 1  # not retried unit by unit


def test_planted_units_of_the_synthetic_world_get_their_concepts(tmp_path: Path) -> None:
    """synth.resnet on 600 synthetic probe images: most planted units are labelled with every
    concept of their formula (ORs need both sides), read back with the world's vocabulary."""
    import torch

    from bench.components.synthetic import names_formula
    from bench.record import record_cached
    from bench.synth.probes import synthetic_probe
    from bench.synth.targets import load_card
    from bench.targets import load_target

    torch.set_num_threads(1)
    cache = Cache(tmp_path)
    card = load_card("synth.resnet")
    planted = card["planted_units"]
    target = load_target("synth.resnet")
    layers = sorted({p["layer"] for p in planted})
    probe = synthetic_probe(tmp_path / "probe", n_images=600)
    ev = record_cached(cache, target, probe, layers, k=10, topk_by=("mean",), quantiles=())
    units = [UnitRef(layer=p["layer"], index=p["unit"]) for p in planted]
    ctx = MethodContext(cache=cache, target=target, components=synthetic_components())
    out = DnD().describe(units, ev, ctx)
    assert all(d.ok for d in out), [d.error for d in out]
    named = [names_formula(d.label, p["formula"]) for d, p in zip(out, planted, strict=True)]
    got = {p["concept"]: d.label for d, p in zip(out, planted, strict=True)}
    assert sum(named) >= 4, got
    # a conjunction the net learnt cleanly is named exactly
    assert names_formula(got["red AND circle"], ["and", ["leaf", "red"], ["leaf", "circle"]])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_pipeline_on_tiny_real_backends_and_its_cache(tmp_path: Path) -> None:
    """BLIP, a GPT-2 causal LM, Stable Diffusion and open_clip, all tiny and random, drive the
    whole pipeline to valid descriptions; a rerun is served by the component cache."""
    import math

    from bench.components.testing import tiny_components

    comps = tiny_components(tmp_path / "models")
    cache = Cache(tmp_path / "cache")
    ev = tiny_mean_evidence(cache)
    units = [UnitRef(layer=l, index=i) for l, le in ev.layers.items() for i in range(le.num_units)]
    method = DnD(images_per_concept=3)

    def run() -> list[Any]:
        ctx = MethodContext(cache=cache, target=ev.target, components=comps)
        return method.describe(units, ev, ctx)

    first = run()
    for d in first:
        assert d.ok, d.error
        assert d.label.strip() and d.label == d.extras["labels"][0]
        assert math.isfinite(d.score) and d.score_name == "dnd-combined"
        assert len(d.extras["captions"]) == len(d.extras["exemplars"]) <= 10
        assert set(d.extras["scores"]) == set(d.extras["candidates"])
    conv = [d for d in first if d.unit.layer == "conv"]
    assert any("box" in e for d in conv for e in d.extras["exemplars"])  # crops joined
    assert not any("box" in e for d in first if d.unit.layer == "fc" for e in d.extras["exemplars"])
    calls = first[0].extras["batch"]["calls"]
    assert calls["captioner"]["calls"] == 1  # one batched call for every unit
    assert calls["text_to_image"]["calls"] == 1
    assert calls["language_model"]["calls"] in (2, 3)  # simplify, summarise (, re-summarise)

    second = run()
    assert [d.label for d in second] == [d.label for d in first]
    again = second[0].extras["batch"]["calls"]
    for kind in ("captioner", "language_model", "text_to_image"):
        assert again[kind]["calls"] == 0 and again[kind]["hits"] > 0, (kind, again[kind])
