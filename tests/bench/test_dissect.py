"""Dissection (bench.dissect): IoUs against an independent per-image, per-pixel recomputation,
the concept table's set semantics, and the formula search against exhaustive enumeration."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import dissect as D
from bench.cache import Cache
from bench.errors import NonFiniteError, UsageError
from bench.evidence import NETDISSECT_QUANTILE
from bench.probes.base import Concept, ProbeSet, Segmentation
from bench.probes.broden import BrodenProbe
from bench.record import record_cached
from bench.synth.broden_export import write_broden
from bench.targets import load_target
from methods.compexp.search import BeamSearch

N_IMAGES = 40
LAYERS = ("layer1", "layer3")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic Broden export, synth.resnet's maps on it, and the concept table."""
    root = tmp_path_factory.mktemp("dissect")
    (root / "broden").mkdir()
    write_broden(root / "broden", n_images=N_IMAGES, seed=4242)
    probe = BrodenProbe(root / "broden")
    cache = Cache(root / "cache")
    ev = record_cached(
        cache,
        load_target("synth.resnet"),
        probe,
        list(LAYERS),
        quantiles=(NETDISSECT_QUANTILE,),
        store_maps=True,
    )
    table = D.concept_table_cached(cache, probe)
    segs = [probe.segmentation(i) for i in range(len(probe))]
    return probe, cache, ev, table, segs


def pixel_label_sets(seg: Segmentation, s: int) -> tuple[list[set[int]], list[set[str]]]:
    """Per pixel: the label numbers there (pixel layers plus image-level labels) and the
    categories labelling it (pixel layers only). Plain loops, on purpose."""
    labels: list[set[int]] = [set() for _ in range(s)]
    cats: list[set[str]] = [set() for _ in range(s)]
    for cat, arr in seg.pixel.items():
        for layer in arr:
            flat = layer.ravel().tolist()
            for p in range(s):
                if flat[p]:
                    labels[p].add(flat[p])
                    cats[p].add(cat)
    whole = {n for numbers in seg.image.values() for n in numbers}
    for p in range(s):
        labels[p] |= whole
    return labels, cats


def brute_force_iou(
    probe: ProbeSet, segs: list[Segmentation], maps: np.ndarray, thr: np.ndarray, units: list[int]
) -> dict[str, dict[int, dict[int, float]]]:
    """IoU[convention][unit][label number], the way NetDissect-Lite's tally loop does it:
    per image, per unit, PIL bilinear upsampling of the map, then per pixel counting."""
    sh, sw = probe.seg_size
    s = sh * sw
    primary = {c.number: c.category for c in probe.concepts()}
    label_area: dict[int, int] = {}
    inter = {u: {} for u in units}
    cat_lite = {u: {} for u in units}
    cat_orig = {u: {} for u in units}
    for i, seg in enumerate(segs):
        labels, cats = pixel_label_sets(seg, s)
        for p in range(s):
            for n in labels[p]:
                label_area[n] = label_area.get(n, 0) + 1
        whole_cats = {cat for cat, numbers in seg.image.items() if numbers}
        present = whole_cats | {cat for p in range(s) for cat in cats[p]}
        for u in units:
            fmap = maps[i, u]
            if not fmap.max() > thr[u]:
                continue
            up = np.asarray(
                Image.fromarray(fmap.astype(np.float32), mode="F").resize((sw, sh), Image.BILINEAR)
            )
            mask = (up > thr[u]).ravel().tolist()
            area = 0
            inside: set[str] = set()
            for p in range(s):
                if mask[p]:
                    area += 1
                    inside |= cats[p]
                    for n in labels[p]:
                        inter[u][n] = inter[u].get(n, 0) + 1
            for cat in probe.categories():
                if cat in inside or cat in whole_cats:
                    cat_lite[u][cat] = cat_lite[u].get(cat, 0) + area
                if cat in present:
                    cat_orig[u][cat] = cat_orig[u].get(cat, 0) + area
    out: dict[str, dict[int, dict[int, float]]] = {"lite": {}, "original": {}}
    for conv, cat_count in (("lite", cat_lite), ("original", cat_orig)):
        for u in units:
            out[conv][u] = {}
            for n, la in label_area.items():
                both = inter[u].get(n, 0)
                den = cat_count[u].get(primary[n], 0) + la - both
                out[conv][u][n] = both / den if den else 0.0
    return out


def test_pil_bilinear_equals_torch_upsampling() -> None:
    import torch

    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(7, 7)).astype(np.float32)
    pil = np.asarray(Image.fromarray(fmap, mode="F").resize((112, 112), Image.BILINEAR))
    ours = torch.nn.functional.interpolate(
        torch.from_numpy(fmap)[None, None], size=(112, 112), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.abs(pil - ours).max() < 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_netdissect_iou_equals_brute_force(world, layer: str) -> None:
    probe, _, ev, table, segs = world
    le = ev.layer(layer)
    thr = le.threshold(NETDISSECT_QUANTILE)
    units = [u for u in range(le.num_units) if (le.pooled_max[:, u] > thr[u]).any()][:5]
    assert len(units) >= 3
    expected = brute_force_iou(probe, segs, np.asarray(le.maps), thr, units)
    tally = D.tally_units(le.maps, thr, table)
    numbers = [c.number for c in table.concepts]
    for conv in ("lite", "original"):
        iou = D.netdissect_iou(tally, table, conv)
        worst = 0.0
        for u in units:
            for code, n in enumerate(numbers, start=1):
                worst = max(worst, abs(iou[u, code] - expected[conv][u].get(n, 0.0)))
        assert worst <= 1e-6, (conv, worst)
        # Not vacuous: the best concepts have sizeable IoUs.
        assert max(iou[u].max() for u in units) > 0.05
    lite, orig = D.netdissect_iou(tally, table, "lite"), D.netdissect_iou(tally, table, "original")
    assert (lite >= orig - 1e-12).all()  # Lite's denominator is never larger


def test_dataset_iou_equals_brute_force(world) -> None:
    probe, _, ev, table, segs = world
    le = ev.layer("layer3")
    thr = le.threshold(NETDISSECT_QUANTILE)
    tally = D.tally_units(le.maps, thr, table)
    iou = D.dataset_iou(tally, table)
    sh, sw = probe.seg_size
    u = int(np.argmax(tally.unit_area))
    unit_mask = np.zeros((len(segs), sh * sw), bool)
    for i in range(len(segs)):
        up = np.asarray(Image.fromarray(le.maps[i, u], mode="F").resize((sw, sh), Image.BILINEAR))
        unit_mask[i] = (up > thr[u]).ravel()
    for code, c in enumerate(table.concepts, start=1):
        cmask = concept_mask(segs, c.number, sh * sw)
        both = (cmask & unit_mask).sum()
        union = cmask.sum() + unit_mask.sum() - both
        assert iou[u, code] == pytest.approx(both / union if union else 0.0, abs=1e-9)


def concept_mask(segs: list[Segmentation], number: int, s: int) -> np.ndarray:
    out = np.zeros((len(segs), s), bool)
    for i, seg in enumerate(segs):
        if any(number in numbers for numbers in seg.image.values()):
            out[i] = True
            continue
        for arr in seg.pixel.values():
            out[i] |= (arr == number).any(axis=0).ravel()
    return out


def test_table_counts_every_concept_pixel_once(world) -> None:
    probe, _, _, table, segs = world
    sh, sw = probe.seg_size
    area = table.label_area()
    for code, c in enumerate(table.concepts, start=1):
        assert area[code] == concept_mask(segs, c.number, sh * sw).sum()
    assert table.pixels.sum() == len(segs) * sh * sw
    assert table.num_signatures < len(segs) * sh * sw // 10  # the point of signatures


class LayeredProbe(ProbeSet):
    """Two 2x2 images whose labels overlap in every way the table must handle."""

    name = "layered"
    has_segmentations = True
    fixed_geometry = True

    def __len__(self) -> int:
        return 2

    def load_image(self, i):  # pragma: no cover - not used
        raise NotImplementedError

    def identity(self):
        return {"name": "layered"}

    @property
    def seg_size(self):
        return (2, 2)

    def categories(self):
        return ["object", "material", "part", "scene"]

    def concepts(self):
        return [
            Concept(number=7, name="fabric", raw_name="fabric", category="material",
                    categories=("material", "object")),
            Concept(number=9, name="door", raw_name="door", category="part", categories=("part",)),
            Concept(number=11, name="street", raw_name="street-s", category="scene",
                    categories=("scene",)),
        ]  # fmt: skip

    def segmentation(self, i):
        if i == 0:
            return Segmentation(
                pixel={
                    # fabric in object and material at pixel 0: one pixel, not two.
                    "object": np.array([[[7, 0], [0, 0]]], np.int32),
                    "material": np.array([[[7, 7], [0, 0]]], np.int32),
                    # two part layers, door twice at pixel 3.
                    "part": np.array([[[0, 0], [0, 9]], [[0, 0], [0, 9]]], np.int32),
                },
                image={},
            )
        # street is an image-level label here and also painted on one pixel: 4 pixels in all.
        return Segmentation(
            pixel={"object": np.array([[[11, 0], [0, 0]]], np.int32)}, image={"scene": (11,)}
        )


def test_table_set_semantics_and_categories() -> None:
    table = D.build_concept_table(LayeredProbe())
    area = table.label_area()
    assert [c.name for c in table.concepts] == ["fabric", "door", "street"]
    assert area.tolist() == [0, 2, 1, 4]
    # material and object (bits 1 and 0) both label pixel 0 of image 0.
    sig0 = table.sig[0, 0]
    assert table.sig_categories[sig0] == 0b011
    assert table.whole_image_categories.tolist() == [0, 0b1000]
    assert table.image_categories.tolist() == [0b111, 0b1001]
    sub = D.build_concept_table(LayeredProbe(), ["part"])
    assert [c.name for c in sub.concepts] == ["door"]
    with pytest.raises(UsageError, match="texture"):
        D.build_concept_table(LayeredProbe(), ["texture"])


def test_tally_rejects_bad_maps(world) -> None:
    _, _, ev, table, _ = world
    le = ev.layer("layer3")
    thr = le.threshold(NETDISSECT_QUANTILE)
    maps = np.array(le.maps)
    maps[3, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="3"):
        D.tally_units(maps, thr, table)
    with pytest.raises(UsageError, match="thresholds"):
        D.tally_units(le.maps, thr[:-1], table)
    with pytest.raises(UsageError, match="probe images"):
        D.tally_units(le.maps[:-1], thr, table)


def test_tally_is_the_same_in_small_memory(world) -> None:
    _, _, ev, table, _ = world
    le = ev.layer("layer1")
    thr = le.threshold(NETDISSECT_QUANTILE)
    big = D.tally_units(le.maps, thr, table, backend="torch")
    small = D.tally_units(le.maps, thr, table, backend="torch", memory_budget=200_000)
    assert (big.hist != small.hist).nnz == 0
    for a, b in ((big.cat_lite, small.cat_lite), (big.unit_area, small.unit_area)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("layer", LAYERS)
def test_numba_and_torch_backends_agree(world, layer: str) -> None:
    _, _, ev, table, _ = world
    le = ev.layer(layer)
    thr = le.threshold(NETDISSECT_QUANTILE)
    a = D.tally_units(le.maps, thr, table, backend="torch")
    b = D.tally_units(le.maps, thr, table, backend="numba", memory_budget=300_000)
    assert a.meta["backend"] == "torch" and b.meta["backend"] == "numba"
    assert a.unit_area.sum() > 0
    assert (a.hist != b.hist).nnz == 0
    for name in ("unit_area", "cat_lite", "cat_original", "active_images"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(UsageError, match="backend"):
        D.tally_units(le.maps, thr, table, backend="cuda")


def test_tally_is_cached_and_reloads_equal(world) -> None:
    _, cache, ev, table, _ = world
    first = D.tally_cached(cache, ev, "layer3", NETDISSECT_QUANTILE, table)
    again = D.tally_cached(cache, ev, "layer3", NETDISSECT_QUANTILE, table)
    assert (first.hist != again.hist).nnz == 0
    assert np.array_equal(first.cat_original, again.cat_original)
    assert len(cache.entries(D.TALLY_STAGE)) >= 1


class RandomProbe(ProbeSet):
    """Images of random labels: several layers per category, label numbers beyond the selected
    concepts, image-level labels also painted on pixels, images without any pixel layer, runs
    of equal pixels; hundreds of distinct label sets."""

    name = "random"
    has_segmentations = True
    fixed_geometry = True
    CATS = ("object", "part", "material", "scene")

    def __init__(self, n: int, seed: int, *, negative_at: int | None = None):
        self.n, self.seed, self.negative_at = n, seed, negative_at

    def __len__(self) -> int:
        return self.n

    def load_image(self, i):  # pragma: no cover - not used
        raise NotImplementedError

    def identity(self):
        return {"name": "random", "seed": self.seed}

    @property
    def seg_size(self):
        return (6, 7)

    def categories(self):
        return list(self.CATS)

    def concepts(self):
        # numbers 1..40; 41..45 appear in the data but are no concept
        return [
            Concept(number=k, name=f"c{k}", raw_name=f"c{k}", category=self.CATS[k % 4],
                    categories=(self.CATS[k % 4],))
            for k in range(1, 41)
        ]  # fmt: skip

    def segmentation(self, i):
        rng = np.random.default_rng(self.seed * 1000 + i)
        pixel = {}
        if i % 5 != 3:  # every fifth image has image-level labels only
            for cat, layers in (("object", 1), ("part", 3), ("material", 2)):
                arr = rng.integers(0, 46, size=(layers, 6, 7)).astype(np.int32)
                arr[rng.random(arr.shape) < 0.4] = 0
                arr[:, :, 3:] = arr[:, :, :1]  # runs of equal pixels (the neighbour shortcut)
                pixel[cat] = arr
        if self.negative_at == i:
            pixel["object"][0, 2, 5] = -4
        image = {"scene": tuple(int(x) for x in rng.choice([4, 8, 12, 44], size=2))}
        return Segmentation(pixel=pixel, image=image)


@pytest.mark.parametrize("first_capacity", [D._SHARD_KEYS, 16])
def test_table_build_equals_a_per_pixel_reference(first_capacity: int, monkeypatch) -> None:
    """Each pixel's signature holds exactly the concepts of its label set (pixel layers and
    image-level labels; numbers that are no concept ignored) and the categories labelling it;
    also when a shard's hash table starts too small and the shard is reduced again."""
    monkeypatch.setattr(D, "_SHARD_KEYS", first_capacity)
    probe = RandomProbe(40, seed=1)
    table = D.build_concept_table(probe, workers=1)
    number = {code: c.number for code, c in enumerate(table.concepts, start=1)}
    members = table.members.tolil().rows
    cat_bit = {c: 1 << k for k, c in enumerate(table.categories)}
    known = {c.number for c in probe.concepts()}
    seen_pixels = np.zeros(table.num_signatures, dtype=np.int64)
    for i in range(len(probe)):
        seg = probe.segmentation(i)
        labels, _ = pixel_label_sets(seg, 42)
        for p in range(42):
            sig = int(table.sig[i, p])
            seen_pixels[sig] += 1
            assert {number[c] for c in members[sig]} == labels[p] & known, (i, p)
            want = 0
            for cat, arr in seg.pixel.items():
                if any(int(x) in known for x in arr[:, p // 7, p % 7]):
                    want |= cat_bit[cat]
            assert table.sig_categories[sig] == want, (i, p)
    np.testing.assert_array_equal(seen_pixels, table.pixels)
    assert table.num_signatures > 16 * 4 * 4  # with 16 at first: two retries (one shard)
    # signatures are distinct: no two share concepts and categories
    keys = {(tuple(members[g]), int(table.sig_categories[g])) for g in range(table.num_signatures)}
    assert len(keys) == table.num_signatures


def test_a_negative_label_number_is_named() -> None:
    from bench.errors import DataError

    with pytest.raises(DataError, match="image 6: negative label number -4"):
        D.build_concept_table(RandomProbe(9, seed=2, negative_at=6), workers=1)


# --- the formula search against exhaustive enumeration -----------------------------------------


def enumerate_best(unit_mask: np.ndarray, masks: dict[int, np.ndarray]) -> tuple[float, list]:
    """Best IoU over every left-deep formula of up to three leaves (the search's grammar),
    each evaluated on the pixels directly."""
    unit_area = unit_mask.sum()

    def iou(m: np.ndarray) -> float:
        both = (m & unit_mask).sum()
        den = m.sum() + unit_area - both
        return both / den if den else 0.0

    ops = {
        "or": lambda a, b: a | b,
        "and": lambda a, b: a & b,
        "and not": lambda a, b: a & ~b,
    }
    best = (-1.0, None)
    level = [(["leaf", c], m) for c, m in masks.items()]
    for tree, m in level:
        best = max(best, (iou(m), tree), key=lambda t: t[0])
    for _ in range(2):
        nxt = []
        for (tree, m), (code, lm), (op, f) in itertools.product(level, masks.items(), ops.items()):
            new = f(m, lm)
            leaf = ["leaf", code]
            t = ["or" if op == "or" else "and", tree, leaf if op != "and not" else ["not", leaf]]
            nxt.append((t, new))
            best = max(best, (iou(new), t), key=lambda x: x[0])
        level = nxt
    return best


@pytest.mark.parametrize("unit_rank", [0, 1, 2])
def test_search_finds_the_enumerated_optimum(world, unit_rank: int) -> None:
    probe, _, ev, _, segs = world
    table = D.build_concept_table(probe, ["object", "pattern"])
    le = ev.layer("layer3")
    thr = le.threshold(NETDISSECT_QUANTILE)
    tally = D.tally_units(le.maps, thr, table)
    u = int(np.argsort(-tally.unit_area, kind="stable")[unit_rank])
    sh, sw = probe.seg_size
    masks = {
        code: concept_mask(segs, c.number, sh * sw).ravel()
        for code, c in enumerate(table.concepts, start=1)
    }
    unit_mask = np.zeros((len(segs), sh * sw), bool)
    for i in range(len(segs)):
        up = np.asarray(Image.fromarray(le.maps[i, u], mode="F").resize((sw, sh), Image.BILINEAR))
        unit_mask[i] = (up > thr[u]).ravel()
    best_iou, _ = enumerate_best(unit_mask.ravel(), masks)
    # A beam as wide as the candidate set is exhaustive over the same grammar.
    search = BeamSearch(
        table,
        D.SignatureAlgebra(table),
        tally.hist,
        tally.unit_area,
        beam_size=10_000,
        max_length=3,
        length_penalty=1.0,
        skip_trivial=False,
    )
    found, single, _ = search.search(u)
    assert found.iou == pytest.approx(best_iou, abs=1e-12)
    assert found.iou > single.iou or found.length == 1
    # The default beam (5) is a heuristic: never better than the optimum, and its formula's IoU
    # is what the pixels say.
    default = BeamSearch(
        table, D.SignatureAlgebra(table), tally.hist, tally.unit_area,
        beam_size=5, max_length=3, length_penalty=1.0,
    ).search(u)[0]  # fmt: skip
    assert default.iou <= best_iou + 1e-12
    m = evaluate_codes(default.tree, masks)
    both = (m & unit_mask.ravel()).sum()
    assert default.iou == pytest.approx(both / (m.sum() + unit_mask.sum() - both), abs=1e-12)


def evaluate_codes(tree, masks):
    op = tree[0]
    if op == "leaf":
        return masks[tree[1]]
    if op == "not":
        return ~evaluate_codes(tree[1], masks)
    a, b = evaluate_codes(tree[1], masks), evaluate_codes(tree[2], masks)
    return a & b if op == "and" else a | b


def test_length_penalty_prefers_shorter_formulas(world) -> None:
    probe, _, ev, table, _ = world
    le = ev.layer("layer3")
    tally = D.tally_units(le.maps, le.threshold(NETDISSECT_QUANTILE), table)
    u = int(np.argmax(tally.unit_area))
    alg = D.SignatureAlgebra(table)

    def run(penalty: float):
        return BeamSearch(
            table, alg, tally.hist, tally.unit_area,
            beam_size=5, max_length=3, length_penalty=penalty,
        ).search(u)[0]  # fmt: skip

    free, harsh = run(1.0), run(0.01)
    assert free.length > 1
    assert harsh.length == 1 and harsh.iou <= free.iou
    assert free.score == pytest.approx(free.iou)


def test_units_without_activations_get_a_zero_iou(world, tmp_path: Path) -> None:
    _, _, ev, table, _ = world
    le = ev.layer("layer3")
    thr = np.full(le.num_units, 1e9, np.float32)
    tally = D.tally_units(le.maps, thr, table)
    assert tally.unit_area.sum() == 0 and tally.hist.nnz == 0
    assert not D.netdissect_iou(tally, table).any()
    found, single, _ = BeamSearch(
        table, D.SignatureAlgebra(table), tally.hist, tally.unit_area,
        beam_size=5, max_length=3, length_penalty=1.0,
    ).search(0)  # fmt: skip
    assert found.iou == 0.0 and found.length == 1


@pytest.mark.parametrize(
    ("map_shape", "seg_size"),
    [((7, 7), (112, 112)), ((13, 13), (113, 113)), ((16, 16), (64, 64)), ((1, 1), (64, 64))],
)
def test_sparse_upsampler_equals_dense_bilinear(map_shape, seg_size) -> None:
    import torch

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.gamma(1.0, 1.0, size=(40, *map_shape)).astype(np.float32))
    thr = torch.quantile(x.flatten(), 0.99).repeat(40)
    pair, pixel = D.SparseUpsampler(map_shape, seg_size, "cpu")(x, thr)
    sparse = torch.zeros(40, seg_size[0] * seg_size[1], dtype=torch.bool)
    sparse[pair, pixel] = True
    up = torch.nn.functional.interpolate(
        x[:, None], size=seg_size, mode="bilinear", align_corners=False
    )
    dense = (up[:, 0] > thr[:, None, None]).flatten(1)
    assert dense.any() and torch.equal(sparse, dense)


class TextureProbe(ProbeSet):
    """Image 0 has object pixels; image 1, like Broden's texture images, has only an
    image-level texture label and no pixel labels at all."""

    name = "texture-after-object"
    has_segmentations = True
    fixed_geometry = True

    def __len__(self) -> int:
        return 2

    def load_image(self, i):  # pragma: no cover - not used
        raise NotImplementedError

    def identity(self):
        return {"name": self.name}

    @property
    def seg_size(self):
        return (2, 2)

    def categories(self):
        return ["object", "texture"]

    def concepts(self):
        return [
            Concept(number=1, name="sky", raw_name="sky", category="object",
                    categories=("object",)),
            Concept(number=2, name="striped", raw_name="striped", category="texture",
                    categories=("texture",)),
        ]  # fmt: skip

    def segmentation(self, i):
        if i == 0:
            return Segmentation(pixel={"object": np.array([[[1, 1], [0, 0]]], np.int32)}, image={})
        return Segmentation(pixel={}, image={"texture": (2,)})


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_an_image_without_pixel_labels_counts_only_its_own_categories(backend: str) -> None:
    """NetDissect-Lite keeps the previous image's category tally for an image without pixel
    labels (its ``tally_cat`` is only reassigned when the image has pixels), so the object
    activation of image 1 would count towards 'object' too: 1 + 4 = 5 and IoU(sky) = 1/6. We
    count each image's own categories (the README's deviation): 1 and IoU(sky) = 1/2."""
    table = D.build_concept_table(TextureProbe())
    maps = np.zeros((2, 1, 2, 2), np.float32)
    maps[0, 0, 0, 0] = 1.0  # image 0: one pixel, on sky
    maps[1, 0] = 1.0  # image 1: the whole image
    tally = D.tally_units(maps, np.array([0.5], np.float32), table, backend=backend)
    assert tally.unit_area.tolist() == [5]
    assert tally.cat_lite.tolist() == [[1, 4]]  # object, texture
    iou = D.netdissect_iou(tally, table, "lite")
    assert iou[0, table.code("sky")] == pytest.approx(1 / (1 + 2 - 1))
    assert iou[0, table.code("striped")] == pytest.approx(4 / (4 + 4 - 4))


def test_table_build_is_the_same_with_any_number_of_workers(world, monkeypatch) -> None:
    """Shards reduced in worker processes give the very table the serial build gives."""
    probe, _, _, table, _ = world
    monkeypatch.setattr(D, "SHARD_IMAGES", 7)  # 6 shards of the 40 images
    one = D.build_concept_table(probe, workers=1)
    two = D.build_concept_table(probe, workers=2)
    np.testing.assert_array_equal(np.asarray(one.sig), np.asarray(two.sig))
    np.testing.assert_array_equal(one.pixels, two.pixels)
    assert (one.members != two.members).nnz == 0
    np.testing.assert_array_equal(one.sig_categories, two.sig_categories)
    np.testing.assert_array_equal(one.image_categories, table.image_categories)
    np.testing.assert_array_equal(one.whole_image_categories, table.whole_image_categories)
    # Other shards number signatures differently, but every concept covers the same pixels.
    np.testing.assert_array_equal(one.label_area(), table.label_area())
    for code in range(1, table.num_concepts + 1):
        in_one = np.asarray(one.members[:, code].toarray().ravel() > 0)[np.asarray(one.sig)]
        in_table = np.asarray(table.members[:, code].toarray().ravel() > 0)[np.asarray(table.sig)]
        np.testing.assert_array_equal(in_one, in_table)
    with pytest.raises(UsageError, match="at least 1"):
        D.build_concept_table(probe, workers=0)


def test_table_workers_setting(monkeypatch) -> None:
    monkeypatch.setenv("BENCH_TABLE_WORKERS", "3")
    assert D.table_workers() == 3 and D.table_workers(1) == 1
    monkeypatch.setenv("BENCH_TABLE_WORKERS", "many")
    with pytest.raises(UsageError, match="BENCH_TABLE_WORKERS"):
        D.table_workers()


def test_a_worker_error_reaches_the_caller(tmp_path: Path, monkeypatch) -> None:
    from bench.errors import DataError

    write_broden(tmp_path, n_images=6, seed=5)
    (tmp_path / "images" / "synth" / "000004_color.png").unlink()
    monkeypatch.setattr(D, "SHARD_IMAGES", 2)
    with pytest.raises(DataError, match="line 6.*000004_color.png"):
        D.build_concept_table(BrodenProbe(tmp_path), workers=2)


def test_table_through_a_relative_cache_root(world, tmp_path: Path, monkeypatch) -> None:
    """A cache given as a relative path (``--cache-dir cache``) builds the same table: saving
    it must not rewrite sig.npy over its own memory map (that truncated the file: SIGBUS)."""
    probe, _, _, table, _ = world
    monkeypatch.chdir(tmp_path)
    rel = Cache("relative-cache")
    assert rel.root.is_absolute()
    again = D.concept_table_cached(rel, probe)
    np.testing.assert_array_equal(np.asarray(again.sig), np.asarray(table.sig))
    assert (again.members != table.members).nnz == 0
    # and the table saved into the directory it was built in, named relatively
    Path("built").mkdir()
    D.build_concept_table(probe, directory=Path("built")).save(Path("built"))
    saved = D.ConceptTable.load(Path("built"))
    np.testing.assert_array_equal(np.asarray(saved.sig), np.asarray(table.sig))
