"""bench.record against brute force: every statistic is recomputed from all stacked activation maps.

The target is a hand-weighted conv net whose first-layer units detect red, green and blue and
vertical edges; the probe is a few dozen 16 x 16 images with a coloured square each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bench.cache import Cache
from bench.errors import ConfigError, NonFiniteError, UnknownNameError, UsageError
from bench.evidence import MILAN_QUANTILE, NETDISSECT_QUANTILE, QuantileSpec
from bench.probes.base import ProbeSet
from bench.record import (
    RECORD_VERSION,
    _ExactTail,
    _RunningTopK,
    hooks,
    lerp,
    quantile_positions,
    record,
    record_cached,
    record_key_parts,
    tail_size,
)
from bench.targets import Preprocessing, Target, TargetSpec

SIZE = 16
N_IMAGES = 30
PLAIN = Preprocessing(input_size=SIZE, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]  # image i has COLOURS[i % 4]
QUANTILES = (
    MILAN_QUANTILE,
    NETDISSECT_QUANTILE,
    QuantileSpec(q=0.5, method="linear"),  # a tail of half the values
    QuantileSpec(q=0.9, method="lower"),
    QuantileSpec(q=0.95, method="higher"),
    QuantileSpec(q=0.97, method="nearest"),
    QuantileSpec(q=0.8, method="hazen"),
)


# --- fixtures: a tiny probe and hand-weighted targets --------------------------------------------


class ArrayProbe(ProbeSet):
    """Images held in a uint8 array [N, S, S, 3]."""

    name = "arrays"
    fixed_geometry = True

    def __init__(self, images: np.ndarray):
        self.images = images
        self.loads = 0

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, i: int) -> Image.Image:
        self.loads += 1
        return Image.fromarray(self.images[i])

    def identity(self) -> dict:
        return {"name": self.name, "sha256": hashlib.sha256(self.images.tobytes()).hexdigest()}


class CroppedArrayProbe(ArrayProbe):
    fixed_geometry = False


def make_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, SIZE, SIZE, 3)) * 60).astype(np.uint8)
    for i in range(n):
        side = int(rng.integers(3, 8))
        y, x = rng.integers(0, SIZE - side, 2)
        images[i, y : y + side, x : x + side] = COLOURS[i % 4]
    return images


class TinyNet(nn.Module):
    """conv1 units: 0 red, 1 green, 2 blue (colour opponents), 3 vertical edges."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        self.calls = 0
        self.devices: list[str] = []
        with torch.no_grad():
            w1 = torch.zeros(4, 3, 3, 3)
            for u in range(3):
                w1[u, :, 1, 1] = -0.5
                w1[u, u, 1, 1] = 1.0
            w1[3] = torch.tensor([-1.0, 0.0, 1.0]).repeat(3, 3, 1) / 9
            self.conv1.weight.copy_(w1)
            self.conv1.bias.copy_(torch.tensor([-0.1, -0.1, -0.1, 0.0]))
            w2 = torch.full((3, 4, 3, 3), -0.25 / 9)
            for o in range(3):
                w2[o, o] = 1.0 / 9
            self.conv2.weight.copy_(w2)
            self.conv2.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.5]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.devices.append(x.device.type)
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


class TinyViT(nn.Module):
    """Patch embedding (4 x 4 grid of 5-d tokens) + a CLS token; ``mlp`` returns [B, 17, 5]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 5, 4, stride=4)
        self.cls = nn.Parameter(torch.linspace(-1, 1, 5))
        self.mlp = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], 1, 5), tokens], dim=1)
        return self.head(self.mlp(tokens)[:, 0])


def make_spec(
    layers: tuple[str, ...],
    *,
    preprocessing: Preprocessing = PLAIN,
    token_prefix: int = 0,
    final_layer: str = "fc",
) -> TargetSpec:
    return TargetSpec(
        name="tiny",
        family="test",
        arch="tiny",
        weights=None,
        preprocessing=preprocessing,
        layers=layers,
        final_layer=final_layer,
        num_classes=2,
        token_prefix=token_prefix,
    )


def tiny_target(weights_sha256: str = "test", model: nn.Module | None = None) -> Target:
    return Target(
        spec=make_spec(("relu1", "conv2", "fc")),
        model=(model or TinyNet()).eval(),
        weights_sha256=weights_sha256,
    )


@pytest.fixture
def probe() -> ArrayProbe:
    return ArrayProbe(make_images(N_IMAGES))


# --- brute force -------------------------------------------------------------------------------


def stacked_maps(
    target: Target, probe: ProbeSet, layers: list[str], batch_size: int
) -> dict[str, np.ndarray]:
    """Every activation map of every image: float32 [N, U, h, w] per layer (same batches)."""
    x = torch.stack(
        [
            target.preprocessing.transform(probe.load_image(i), fixed_geometry=True)
            for i in range(len(probe))
        ]
    )
    outs: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [
        target.module(layer).register_forward_hook(
            lambda m, i, o, layer=layer: outs[layer].append(target.spatialize(layer, o).clone())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for s in range(0, len(probe), batch_size):
                target.model(x[s : s + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(v).numpy() for layer, v in outs.items()}


def reference_topk(pooled: np.ndarray, k: int) -> np.ndarray:
    """int64 [U, k]: best first, ties to the lower index."""
    n = pooled.shape[0]
    return np.stack([np.lexsort((np.arange(n), -pooled[:, u]))[:k] for u in range(pooled.shape[1])])


def check_against_brute_force(ev, maps: np.ndarray, k: int, modes, specs) -> None:
    n, u, h, w = maps.shape
    pooled = {
        "max": torch.from_numpy(maps).amax(dim=(2, 3)).numpy(),
        "mean": torch.from_numpy(maps).mean(dim=(2, 3)).numpy(),
    }
    assert ev.num_units == u and ev.map_shape == (h, w)
    np.testing.assert_array_equal(ev.pooled_max, pooled["max"])
    np.testing.assert_allclose(ev.pooled_mean, pooled["mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ev.pooled_mean, maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert set(ev.topk) == set(modes)
    for mode in modes:
        top = ev.top(mode)
        want = reference_topk(pooled[mode], k)
        assert top.indices.shape == (u, k) and top.indices.dtype == np.int64
        np.testing.assert_array_equal(top.indices, want)
        # Summation order (hence the last bit of a mean) depends on memory layout and batch.
        np.testing.assert_allclose(
            top.values, np.take_along_axis(pooled[mode].T, want, 1), rtol=1e-6, atol=1e-7
        )
        assert top.maps.shape == (u, k, h, w)
        np.testing.assert_array_equal(top.maps, maps[want, np.arange(u)[:, None]])
    assert sorted(ev.thresholds) == sorted(s.key for s in specs)
    for spec in specs:
        want = np.array(
            [np.quantile(maps[:, j].ravel(), spec.q, method=spec.method) for j in range(u)],
            dtype=np.float32,
        )
        got = ev.threshold(spec)
        assert got.dtype == np.float32 and got.shape == (u,)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert ev.meta["exact_quantiles"] is True


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "k"), [(7, 5), (64, 40), (1, 3)])
def test_record_matches_brute_force(probe, batch_size, k, monkeypatch):
    if batch_size == 7:  # tail candidates extracted image by image, top-k maps copied one by one
        monkeypatch.setattr(_ExactTail, "CHUNK_VALUES", 1)
        monkeypatch.setattr(_RunningTopK, "GATHER_VALUES", 0)
    target = tiny_target()
    layers = ["relu1", "conv2", "fc"]
    got = record(
        target,
        probe,
        layers,
        k=k,
        topk_by=("max", "mean"),
        quantiles=QUANTILES,
        batch_size=batch_size,
    )
    maps = stacked_maps(target, probe, layers, batch_size)
    assert list(got) == layers
    assert maps["fc"].shape == (N_IMAGES, 2, 1, 1)  # fc outputs become 1 x 1 maps
    k_eff = min(k, N_IMAGES)
    for layer in layers:
        check_against_brute_force(got[layer], maps[layer], k_eff, ("max", "mean"), QUANTILES)
        meta = got[layer].meta
        assert meta["n_images"] == N_IMAGES and meta["k"] == k_eff
        assert meta["topk_by"] == ["max", "mean"] and meta["device"] == "cpu"
        assert meta["dtype"] == "float32" and meta["map_shape"] == list(maps[layer].shape[2:])
    if k > N_IMAGES:  # every image appears once per unit
        for u in range(4):
            assert sorted(got["relu1"].top("max").indices[u]) == list(range(N_IMAGES))


def test_colour_units_pick_their_colour(probe):
    ev = record(tiny_target(), probe, ["relu1"], k=5, quantiles=())["relu1"]
    for unit in range(3):  # red, green, blue detectors
        assert [i % 4 for i in ev.top("max").indices[unit]] == [unit] * 5
    assert ev.thresholds == {}


def test_tie_goes_to_lower_index():
    # Identical images: every score ties, so the top-k must be the first k indices.
    images = np.repeat(make_images(1), 12, axis=0)
    ev = record(
        tiny_target(), ArrayProbe(images), ["conv2"], k=4, batch_size=5, topk_by=("max", "mean")
    )["conv2"]
    for mode in ("max", "mean"):
        np.testing.assert_array_equal(ev.top(mode).indices, np.tile(np.arange(4), (3, 1)))


def test_vit_tokens_become_patch_grid(probe):
    target = Target(
        spec=make_spec(("mlp",), token_prefix=1, final_layer="head"),
        model=TinyViT(),
        weights_sha256="vit",
    )
    tokens: list[torch.Tensor] = []
    handle = target.model.mlp.register_forward_hook(lambda m, i, o: tokens.append(o.clone()))
    x = torch.stack(
        [PLAIN.transform(probe.load_image(i), fixed_geometry=True) for i in range(len(probe))]
    )
    with torch.no_grad():
        for s in range(0, len(probe), 8):  # the batches record uses: matmul bits depend on them
            target.model(x[s : s + 8])
    handle.remove()
    out = torch.cat(tokens)  # [N, 1 + 16, 5]: drop CLS, patch t -> (t // 4, t % 4)
    maps = np.ascontiguousarray(out[:, 1:, :].transpose(1, 2).reshape(len(probe), 5, 4, 4))
    ev = record(target, probe, k=6, topk_by=("max", "mean"), quantiles=QUANTILES, batch_size=8)[
        "mlp"
    ]
    assert ev.top("max").maps.shape == (5, 6, 4, 4)
    check_against_brute_force(ev, maps, 6, ("max", "mean"), QUANTILES)


@pytest.mark.parametrize("chunk", [2**20, 500])  # candidates of all images at once, or of 2
@pytest.mark.parametrize("low_q", [False, True])
@pytest.mark.parametrize("order", ["random", "ascending", "descending", "ties"])
def test_exact_tail_any_order(order, low_q, chunk, monkeypatch):
    monkeypatch.setattr(_ExactTail, "CHUNK_VALUES", chunk)
    # 600 "images" of 8 x 8 maps for 3 units, streamed in uneven batches; sorted streams force
    # the fallbacks (every batch beats all before it, or none does), ties the strict cuts.
    rng = np.random.default_rng(1)
    n_units, n_images, side = 3, 600, 8
    n = n_images * side * side
    values = {
        "random": rng.normal(size=(n_units, n)),
        "ascending": np.sort(rng.normal(size=(n_units, n)), axis=1),
        "descending": -np.sort(rng.normal(size=(n_units, n)), axis=1),
        "ties": rng.integers(0, 4, size=(n_units, n)),
    }[order].astype(np.float32)
    specs = [MILAN_QUANTILE, NETDISSECT_QUANTILE]
    if low_q:  # a tail of 40% of the values: no subsampled cuts
        specs.append(QuantileSpec(q=0.6, method="hazen"))
    tail = _ExactTail(n_units, tail_size(n, specs))
    per_image = values.reshape(n_units, n_images, side, side).transpose(1, 0, 2, 3)
    start = 0
    for size in [50, 1, 120, 3, 80, 7] * 10:
        if start >= n_images:
            break
        tail.update(torch.from_numpy(per_image[start : start + size].copy()))
        start += size
    got = tail.quantiles(n, specs)
    for spec in specs:
        want = np.quantile(values, spec.q, axis=1, method=spec.method)
        np.testing.assert_allclose(got[spec.key], want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["linear", "hazen", "lower", "higher", "nearest"])
def test_quantile_positions_follow_numpy(method):
    rng = np.random.default_rng(2)
    for n in [1, 2, 3, 5, 10, 37, 200, 999, 1000, 1001]:
        x = np.sort(rng.normal(size=n).astype(np.float32))
        for q in [0.001, 0.25, 0.5, 0.9, 0.99, 994 / 999, 0.9995]:
            prev, nxt, gamma = quantile_positions(n, QuantileSpec(q=q, method=method))
            a, b = x[prev : prev + 1], x[nxt : nxt + 1]
            got = a if gamma is None else lerp(a, b, gamma)
            assert got[0] == np.quantile(x, q, method=method), (n, q, method)


def test_memory_budget_fallback_is_approximate_and_seeded(monkeypatch):
    monkeypatch.setattr("bench.record.MIN_SAMPLE_PER_UNIT", 1000)
    probe = ArrayProbe(make_images(60, seed=3))  # relu1: 60 * 256 positions per unit
    target = tiny_target()
    specs = (MILAN_QUANTILE, QuantileSpec(q=0.5, method="linear"))
    got = record(target, probe, ["relu1", "conv2"], quantiles=specs, memory_budget=1)
    again = record(target, probe, ["relu1", "conv2"], quantiles=specs, memory_budget=1)
    maps = stacked_maps(target, probe, ["relu1", "conv2"], 64)
    for layer in ["relu1", "conv2"]:
        ev = got[layer]
        assert ev.meta["exact_quantiles"] is False
        assert 0 < ev.meta["quantile_sample_rate"] < 1
        for spec in specs:
            np.testing.assert_array_equal(ev.threshold(spec), again[layer].threshold(spec))
            values = maps[layer].transpose(1, 0, 2, 3).reshape(ev.num_units, -1)
            sample = ev.meta["quantile_sample_rate"] * values.shape[1]
            tol = 5 * np.sqrt(spec.q * (1 - spec.q) / sample)  # 5 sd of a sample quantile's rank
            for u in range(ev.num_units):
                thr = ev.threshold(spec)[u]
                below, upto = np.mean(values[u] < thr), np.mean(values[u] <= thr)
                assert below - tol <= spec.q <= upto + tol, (layer, spec, u)
    exact = record(target, probe, ["conv2"], quantiles=specs)["conv2"]
    assert exact.meta["exact_quantiles"] is True
    assert not np.array_equal(
        exact.threshold(MILAN_QUANTILE), got["conv2"].threshold(MILAN_QUANTILE)
    )  # a real subsample


def test_hooks_context_removes_hooks_even_on_error():
    model = TinyNet()
    x = torch.zeros(1, 3, SIZE, SIZE)
    with hooks(model, ["conv1", "fc"]) as store:
        assert len(model.conv1._forward_hooks) == 1
        model(x)
    assert set(store) == {"conv1", "fc"} and store["conv1"].shape == (1, 4, SIZE, SIZE)
    assert not model.conv1._forward_hooks and not model.fc._forward_hooks
    with pytest.raises(ValueError, match="inside"):
        with hooks(model, ["conv1"]):
            raise ValueError("inside")
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(UnknownNameError, match="conv1"):
        with hooks(model, ["conv9"]):
            pass


class FailingNet(TinyNet):
    def forward(self, x):
        out = super().forward(x)
        if self.calls == 3:  # after the layers ran: the dry run, batch 1, then batch 2 fails
            raise RuntimeError("boom")
        return out


def test_record_removes_hooks_after_success_and_failure(probe):
    threads = torch.get_num_threads()
    target = tiny_target()
    record(target, probe, k=3, batch_size=7)
    assert all(not m._forward_hooks for m in target.model.modules())
    assert torch.get_num_threads() == threads  # statistics may run on fewer threads, then restore
    failing = tiny_target(model=FailingNet())
    with pytest.raises(RuntimeError, match="boom"):
        record(failing, probe, k=3, batch_size=7)
    assert all(not m._forward_hooks for m in failing.model.modules())
    assert not failing.model.training


class BadValues(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        peak = x.amax(dim=(1, 2, 3), keepdim=True)
        x = x / peak if self.kind == "nan" else x + torch.log(peak)  # black image: 0/0, log 0
        return self.conv(x)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_activations_raise(kind):
    images = make_images(16)
    images[[6, 8]] = 0  # black images, both in the second batch
    target = Target(
        spec=make_spec(("conv",), final_layer="conv"), model=BadValues(kind), weights_sha256="bad"
    )
    threads = torch.get_num_threads()
    with pytest.raises(NonFiniteError, match=r"'conv'.*\[6, 8\]"):
        record(target, ArrayProbe(images), batch_size=5)
    assert all(not m._forward_hooks for m in target.model.modules())
    assert torch.get_num_threads() == threads


def test_bad_arguments(probe):
    target = tiny_target()
    with pytest.raises(UnknownNameError, match="relu1"):
        record(target, probe, ["relu"])
    with pytest.raises(ConfigError, match="top-k"):
        record(target, probe, topk_by=("median",))
    with pytest.raises(ConfigError, match="batch_size"):
        record(target, probe, batch_size=0)
    with pytest.raises(ConfigError, match="accumulators"):
        record(target, probe, ["relu1"], accumulators={"fc": [CountingAccumulator]})


class WithSpare(TinyNet):
    def __init__(self):
        super().__init__()
        self.spare = nn.Conv2d(3, 3, 1)  # never called by forward


def test_layer_that_does_not_run_is_an_error(probe):
    target = tiny_target(model=WithSpare())
    with pytest.raises(UsageError, match="spare"):
        record(target, probe, ["spare"])


class InplaceNet(nn.Module):
    """conv -> bn -> ReLU(inplace=True): the ReLU overwrites the hooked BatchNorm output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, 4 * 3 * 9).view(4, 3, 3, 3))
            self.bn.running_mean.fill_(0.5)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def test_output_is_read_before_inplace_ops(probe):
    target = Target(
        spec=make_spec(("bn",), final_layer="relu"),
        model=InplaceNet().eval(),
        weights_sha256="inplace",
    )
    maps = stacked_maps(target, probe, ["bn"], 8)["bn"]  # cloned in the hook: pre-ReLU values
    assert (maps < 0).any()
    ev = record(target, probe, k=4, batch_size=8)["bn"]
    check_against_brute_force(ev, maps, 4, ("max",), (MILAN_QUANTILE, NETDISSECT_QUANTILE))
    assert (ev.pooled_mean < 0).any()


class ItemNet(TinyNet):
    """Data-dependent control flow: cannot run on the meta device."""

    def forward(self, x):
        if float(x.mean()) < -1.0:
            x = -x
        return super().forward(x)


def test_shapes_fall_back_to_a_real_forward_pass(probe):
    normal = tiny_target()
    plain = record(normal, probe, k=3, batch_size=8)
    assert normal.model.devices == ["meta"] + ["cpu"] * 4  # shapes on meta, then 4 batches
    target = tiny_target(model=ItemNet())
    got = record(target, probe, k=3, batch_size=8)
    assert target.model.devices == ["cpu"] * 5  # meta failed: one real image for the shapes
    for layer, ev in plain.items():
        np.testing.assert_array_equal(got[layer].pooled_max, ev.pooled_max)
        np.testing.assert_array_equal(got[layer].top("max").indices, ev.top("max").indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_brute_force(probe):
    target = tiny_target()
    layers = ["relu1", "conv2", "fc"]
    got = record(
        target,
        probe,
        layers,
        k=5,
        topk_by=("max", "mean"),
        quantiles=QUANTILES,
        batch_size=7,
        device="cuda",
    )
    target.model.cpu()
    maps = stacked_maps(target, probe, layers, 7)
    for layer in layers:  # cuDNN convolutions differ from CPU ones in the last bits
        ev = got[layer]
        assert ev.meta["device"] == "cuda"
        np.testing.assert_allclose(
            ev.pooled_max, maps[layer].max(axis=(2, 3)), rtol=1e-5, atol=1e-6
        )
        for spec in QUANTILES:
            want = [
                np.quantile(maps[layer][:, u].ravel(), spec.q, method=spec.method)
                for u in range(ev.num_units)
            ]
            np.testing.assert_allclose(ev.threshold(spec), want, rtol=1e-5, atol=1e-6)


class CountingAccumulator:
    """Counts the times each image is seen and sums each unit's activations."""

    name = "count"

    def __init__(self):
        self.hits = np.zeros(N_IMAGES, dtype=np.int64)
        self.total: torch.Tensor | None = None

    def update(self, acts, indices):
        np.add.at(self.hits, indices.numpy(), 1)
        s = acts.double().sum(dim=(0, 2, 3))
        self.total = s if self.total is None else self.total + s

    def finalize(self):
        return {"hits": self.hits, "sum": self.total.numpy()}


def test_accumulator_sees_every_image_once(probe):
    target = tiny_target()
    ev = record(
        target, probe, ["relu1", "fc"], batch_size=7, accumulators={"relu1": [CountingAccumulator]}
    )
    np.testing.assert_array_equal(ev["relu1"].extras["count.hits"], np.ones(N_IMAGES))
    maps = stacked_maps(target, probe, ["relu1"], 7)["relu1"]
    np.testing.assert_allclose(
        ev["relu1"].extras["count.sum"], maps.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-6
    )
    assert ev["fc"].extras == {}


def assert_same_evidence(a, b) -> None:
    assert list(a.layers) == list(b.layers)
    for layer in a.layers:
        xa, xb = a.layer(layer).arrays(), b.layer(layer).arrays()
        assert sorted(xa) == sorted(xb)
        for name in xa:
            np.testing.assert_array_equal(xa[name], xb[name])


def test_record_cached_hit_runs_nothing(tmp_path, probe, caplog):
    caplog.set_level(logging.INFO, logger="bench")
    cache = Cache(tmp_path)
    target = tiny_target()
    first = record_cached(cache, target, probe, k=4, batch_size=8, topk_by=("max", "mean"))
    calls, loads = target.model.calls, probe.loads
    assert calls > 0 and first.key and len(first.key) == 64 and not first.cached
    assert "cache miss" in caplog.text
    caplog.clear()
    second = record_cached(cache, target, probe, k=4, batch_size=16, topk_by=("max", "mean"))
    assert target.model.calls == calls and probe.loads == loads  # no forward pass, no image
    assert "cache hit" in caplog.text and second.cached
    assert second.key == first.key and second.probe is probe and second.target is target
    assert_same_evidence(first, second)
    direct = record(target, probe, k=4, batch_size=8, topk_by=("max", "mean"))
    for layer, ev in direct.items():
        np.testing.assert_array_equal(second.layer(layer).top("mean").maps, ev.top("mean").maps)
        np.testing.assert_array_equal(
            second.layer(layer).threshold(NETDISSECT_QUANTILE), ev.threshold(NETDISSECT_QUANTILE)
        )
    entry = cache.entries("record")
    assert len(entry) == 1 and entry[0].key == first.key
    assert sorted(p.name for p in entry[0].path.iterdir()) == [
        "0.json",
        "0.safetensors",
        "1.json",
        "1.safetensors",
        "2.json",
        "2.safetensors",
        "manifest.json",
    ]
    record_cached(cache, target, probe, k=5, batch_size=8, topk_by=("max", "mean"))
    assert target.model.calls > calls + 1  # a changed input is a miss


def test_cache_key_changes_with_every_input(probe):
    cache = Cache("/nonexistent")
    base = {"k": 15, "topk_by": ("max",), "quantiles": (MILAN_QUANTILE,), "device": "cpu"}
    target = tiny_target()

    def key(t=target, p=probe, layers=None, **over):
        return cache.key("record", record_key_parts(t, p, layers, **{**base, **over}))

    other_pre = dataclasses.replace(
        target.spec, preprocessing=dataclasses.replace(PLAIN, mean=(0.5, 0.5, 0.5))
    )
    variants = {
        "base": key(),
        "weights": key(t=tiny_target(weights_sha256="other")),
        "probe": key(p=ArrayProbe(make_images(N_IMAGES, seed=9))),
        "geometry": key(p=CroppedArrayProbe(probe.images)),
        "preprocessing": key(t=Target(spec=other_pre, model=target.model, weights_sha256="test")),
        "layers": key(layers=["relu1"]),
        "k": key(k=16),
        "topk_by": key(topk_by=("max", "mean")),
        "quantiles": key(quantiles=(MILAN_QUANTILE, NETDISSECT_QUANTILE)),
        "quantile method": key(quantiles=(QuantileSpec(q=0.99, method="hazen"),)),
        "device": key(device="cuda"),
    }
    assert len(set(variants.values())) == len(variants), variants
    assert key() == key(layers=["relu1", "conv2", "fc"])  # the default layers, spelled out
    assert key() == key(t=tiny_target())  # same content, another object
    parts = record_key_parts(target, probe, None, **base)
    assert parts["stage_version"] == RECORD_VERSION
    assert parts["torch"] == ".".join(torch.__version__.split(".")[:2])


def test_corrupt_cache_entry_is_recomputed(tmp_path, probe, caplog):
    caplog.set_level(logging.INFO, logger="bench")
    cache = Cache(tmp_path)
    target = tiny_target()
    first = record_cached(cache, target, probe, k=4, batch_size=8)
    calls = target.model.calls
    path = cache.entries("record")[0].path / "1.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0xFF  # inside the array data: the file still parses
    path.write_bytes(bytes(data))
    second = record_cached(cache, target, probe, k=4, batch_size=8)
    assert target.model.calls > calls
    assert "corrupt" in caplog.text
    assert_same_evidence(first, second)
    calls = target.model.calls
    record_cached(cache, target, probe, k=4, batch_size=8)
    assert target.model.calls == calls  # the rewritten entry is intact


def test_record_cached_with_accumulators(tmp_path, probe):
    cache = Cache(tmp_path)
    target = tiny_target()
    acc = {"relu1": [CountingAccumulator]}
    ev = record_cached(cache, target, probe, ["relu1"], accumulators=acc)
    assert ev.key == "" and not ev.cached and cache.entries() == []  # no identity: not cached
    assert "count.hits" in ev.layer("relu1").extras
    one = record_cached(
        cache, target, probe, ["relu1"], accumulators=acc, accumulator_identity={"count": "1"}
    )
    calls = target.model.calls
    hit = record_cached(
        cache, target, probe, ["relu1"], accumulators=acc, accumulator_identity={"count": "1"}
    )
    assert target.model.calls == calls and hit.key == one.key
    np.testing.assert_array_equal(hit.layer("relu1").extras["count.hits"], np.ones(N_IMAGES))
    two = record_cached(
        cache, target, probe, ["relu1"], accumulators=acc, accumulator_identity={"count": "2"}
    )
    assert two.key != one.key and target.model.calls > calls


def test_cached_approximation_is_refined_when_budget_allows(tmp_path, probe):
    cache = Cache(tmp_path)
    target = tiny_target()
    approx = record_cached(cache, target, probe, ["relu1"], memory_budget=1)
    assert approx.layer("relu1").meta["exact_quantiles"] is False
    calls = target.model.calls
    again = record_cached(cache, target, probe, ["relu1"], memory_budget=1)
    assert target.model.calls == calls and again.key == approx.key  # still a hit
    exact = record_cached(cache, target, probe, ["relu1"])
    assert target.model.calls > calls and exact.key == approx.key
    assert exact.layer("relu1").meta["exact_quantiles"] is True
    calls = target.model.calls
    small = record_cached(cache, target, probe, ["relu1"], memory_budget=1)
    assert target.model.calls == calls  # an exact entry serves a smaller budget too
    assert small.layer("relu1").meta["exact_quantiles"] is True


def test_record_matches_brute_force_on_the_synthetic_world():
    """The real path: a shipped synthetic target on the synthetic Broden export, read back by the
    Broden loader, recorded in batches that do not divide the probe."""
    from bench.synth.probes import synthetic_probe
    from bench.targets import load_target

    target = load_target("synth.resnet")
    probe = synthetic_probe(max_images=48)
    layers = list(target.spec.layers)
    got = record(target, probe, layers, k=15, quantiles=QUANTILES, batch_size=20)
    maps = stacked_maps(target, probe, layers, 20)
    for layer in layers:
        check_against_brute_force(got[layer], maps[layer], 15, ("max",), QUANTILES)
