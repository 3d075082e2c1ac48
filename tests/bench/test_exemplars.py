"""bench.exemplars: MILAN's exemplar images and masks against hand and brute-force computations."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from bench.errors import RequirementError, UsageError
from bench.evidence import MILAN_QUANTILE, NETDISSECT_QUANTILE, Evidence
from bench.exemplars import (
    ProbeViews,
    compute_exemplars,
    iter_exemplars,
    target_view,
    upsample_masks,
    write_exemplars,
)
from bench.milannotations import read_ids_csv
from bench.probes.base import ProbeSet
from bench.record import record
from bench.targets import Preprocessing, Target, TargetSpec

# --- the functional core: a hand computation ------------------------------------------------------


def _bilinear_half_pixel(a: np.ndarray, out: int) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres and clamped edges, written out by hand."""
    h, w = a.shape
    res = np.zeros((out, out))
    for i in range(out):
        for j in range(out):
            y = min(max((i + 0.5) * h / out - 0.5, 0.0), h - 1)
            x = min(max((j + 0.5) * w / out - 0.5, 0.0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            res[i, j] = (
                a[y0, x0] * (1 - fy) * (1 - fx)
                + a[y0, x1] * (1 - fy) * fx
                + a[y1, x0] * fy * (1 - fx)
                + a[y1, x1] * fy * fx
            )
    return res


def test_masks_equal_a_hand_computation_on_a_tiny_map() -> None:
    # A 2x2 map 4x + 8y upsampled to 4x4: sample positions 0, .25, .75, 1 along each axis.
    m = np.array([[0.0, 4.0], [8.0, 12.0]], dtype=np.float32)
    expected_values = np.array(
        [[4 * cx + 8 * cy for cx in (0, 0.25, 0.75, 1)] for cy in (0, 0.25, 0.75, 1)]
    )
    np.testing.assert_allclose(_bilinear_half_pixel(m, 4), expected_values)
    maps = np.stack([np.stack([m, m[::-1]]), np.stack([m * 0, m])])  # [U=2, k=2, 2, 2]
    thresholds = np.array([5.0, 9.0], dtype=np.float32)
    masks = upsample_masks(maps, thresholds, 4)
    assert masks.shape == (2, 2, 1, 4, 4) and masks.dtype == np.uint8
    for u in range(2):
        for j in range(2):
            want = (_bilinear_half_pixel(maps[u, j], 4) > thresholds[u]).astype(np.uint8)
            np.testing.assert_array_equal(masks[u, j, 0], want)
    # Strictly above: the value 9 (at cy=.75, cx=.75) is not in unit 1's mask.
    assert expected_values[2, 2] == 9.0 and masks[1, 1, 0, 2, 2] == 0
    assert masks[1, 0].sum() == 0  # an all-zero map gives an empty mask


def test_masks_reject_mismatched_thresholds() -> None:
    with pytest.raises(UsageError, match="thresholds"):
        upsample_masks(np.zeros((2, 1, 2, 2), np.float32), np.zeros(3, np.float32), 4)


# --- from recorded evidence -----------------------------------------------------------------------


class ArrayProbe(ProbeSet):
    """RGB images held in a list of uint8 arrays (any sizes)."""

    name = "arrays"
    fixed_geometry = True

    def __init__(self, images: list[np.ndarray], fixed_geometry: bool = True):
        self.images = images
        self.fixed_geometry = fixed_geometry
        self.loads = 0

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, i: int) -> Image.Image:
        self.loads += 1
        return Image.fromarray(self.images[i])

    def identity(self) -> dict:
        h = hashlib.sha256()
        for a in self.images:
            h.update(a.tobytes())
        return {"name": self.name, "sha256": h.hexdigest()}


class ColourNet(nn.Module):
    """Unit 0: red minus the others, unit 1: green, unit 2: blue, on a 2x2-pooled grid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]]).view(
                    3, 3, 1, 1
                )
            )
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def _target(size: int, resize: int | None) -> Target:
    prep = Preprocessing(
        input_size=size,
        resize=resize,
        mean=(0.2, 0.3, 0.4),
        std=(0.5, 0.6, 0.7),
    )
    spec = TargetSpec(
        name="colournet",
        family="checkpoint",
        arch="colournet",
        weights=None,
        preprocessing=prep,
        layers=("pool",),
        final_layer="pool",
        num_classes=3,
    )
    return Target(spec=spec, model=ColourNet().eval(), weights_sha256="0" * 64)


def _images(n: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 60, size=(*shape, 3), dtype=np.uint8)
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        img[y : y + 4, x : x + 4, i % 3] = 200 + i  # a bright patch of one colour
        out.append(img)
    return out


def _evidence(target: Target, probe: ProbeSet, k: int, quantiles=(MILAN_QUANTILE,)) -> Evidence:
    layers = record(target, probe, ["pool"], k=k, topk_by=("max",), quantiles=quantiles)
    return Evidence(target=target, probe=probe, layers=layers)


def _brute_force(target: Target, probe: ProbeSet) -> np.ndarray:
    """Every activation map: float32 [N, U, h, w]."""
    prep = target.preprocessing
    x = torch.stack(
        [
            prep.transform(probe.load_image(i), fixed_geometry=probe.fixed_geometry)
            for i in range(len(probe))
        ]
    )
    with torch.no_grad():
        return target.model(x).numpy()


def test_exemplars_match_a_brute_force_recomputation() -> None:
    torch.set_num_threads(1)
    target = _target(16, None)
    probe = ArrayProbe(_images(12, (16, 16)))
    ev = _evidence(target, probe, k=4)
    ex = compute_exemplars(ev, "pool", k=4)
    acts = _brute_force(target, probe)  # [N, 3, 8, 8]
    n, u, h, w = acts.shape
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(u, -1), 0.99, axis=1)
    pooled = acts.reshape(n, u, -1).max(axis=2)
    np.testing.assert_array_equal(ex.units, np.arange(3))
    for unit in range(u):
        top = np.argsort(-pooled[:, unit], kind="stable")[:4]
        np.testing.assert_allclose(np.sort(pooled[ex.ids[unit], unit]), np.sort(pooled[top, unit]))
        np.testing.assert_allclose(ex.thresholds[unit], thr[unit], rtol=1e-6)
        for j, i in enumerate(ex.ids[unit]):
            # Fixed-geometry probe at the input size: the images are the probe's own pixels.
            np.testing.assert_array_equal(ex.images[unit, j], probe.images[i].transpose(2, 0, 1))
            up = torch.nn.functional.interpolate(
                torch.from_numpy(acts[i, unit][None, None]),
                size=(16, 16),
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            np.testing.assert_array_equal(ex.masks[unit, j, 0], (up > ex.thresholds[unit]))
    # The bright red patch of each red image is inside the red unit's mask at its best image.
    best = int(ex.ids[0, 0])
    red = probe.images[best][..., 0] >= 200
    assert ex.masks[0, 0, 0][red].mean() > 0.5


def test_cropping_targets_see_resized_and_centre_cropped_images() -> None:
    target = _target(16, 20)
    probe = ArrayProbe(_images(6, (24, 40), seed=1), fixed_geometry=False)
    ev = _evidence(target, probe, k=2)
    ex = compute_exemplars(ev, "pool", [2, 0], k=2)
    np.testing.assert_array_equal(ex.units, [2, 0])
    for a in range(len(ex.units)):
        for j, i in enumerate(ex.ids[a]):
            img = TF.center_crop(TF.resize(Image.fromarray(probe.images[i]), 20), [16, 16])
            np.testing.assert_array_equal(ex.images[a, j], np.asarray(img).transpose(2, 0, 1))
    view = target_view(probe, [3], target.preprocessing)
    assert view.shape == (1, 3, 16, 16) and view.dtype == np.uint8


def test_chunks_and_written_files_agree(tmp_path) -> None:
    target = _target(16, None)
    probe = ArrayProbe(_images(10, (16, 16), seed=2))
    ev = _evidence(target, probe, k=3)
    whole = compute_exemplars(ev, "pool", k=3)
    parts = list(iter_exemplars(ev, "pool", k=3, memory_budget=1))  # one unit per chunk
    assert len(parts) == 3
    np.testing.assert_array_equal(np.concatenate([p.masks for p in parts]), whole.masks)
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    out = write_exemplars(tmp_path / "pool", ev, "pool", k=3, memory_budget=1)
    np.testing.assert_array_equal(np.load(out / "masks.npy"), whole.masks)
    np.testing.assert_array_equal(np.load(out / "images.npy"), whole.images)
    np.testing.assert_array_equal(read_ids_csv(out / "ids.csv"), whole.ids)
    assert (out / "ids.csv").read_text().splitlines()[0] == ",".join(map(str, whole.ids[0]))


def test_shared_views_load_each_image_once() -> None:
    target = _target(16, None)
    probe = ArrayProbe(_images(10, (16, 16), seed=4))
    ev = _evidence(target, probe, k=3)
    views = ProbeViews(probe, target.preprocessing)
    probe.loads = 0
    first = compute_exemplars(ev, "pool", k=3, views=views, memory_budget=1)
    loaded = probe.loads
    assert loaded == len(np.unique(first.ids))  # each needed image once, across chunks
    again = compute_exemplars(ev, "pool", [1, 2], k=3, views=views)
    assert probe.loads == loaded  # served from the views
    np.testing.assert_array_equal(again.images, first.images[1:])
    other = ProbeViews(ArrayProbe(_images(10, (16, 16), seed=4)), target.preprocessing)
    with pytest.raises(UsageError, match="ProbeViews"):
        compute_exemplars(ev, "pool", k=3, views=other)


def test_missing_evidence_is_a_clear_error() -> None:
    target = _target(16, None)
    probe = ArrayProbe(_images(20, (16, 16), seed=3))
    ev = _evidence(target, probe, k=3, quantiles=(NETDISSECT_QUANTILE,))
    with pytest.raises(RequirementError, match="0.99"):
        compute_exemplars(ev, "pool", k=3)
    ev = _evidence(target, probe, k=3)
    with pytest.raises(RequirementError, match="record with k >= 15"):
        compute_exemplars(ev, "pool")
    with pytest.raises(UsageError, match="has 3 units"):
        compute_exemplars(ev, "pool", [3], k=3)
    ev.target = None
    with pytest.raises(RequirementError, match="preprocessing"):
        compute_exemplars(ev, "pool", k=3)
