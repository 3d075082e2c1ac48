"""Targets: the built-in registry, weights loading from local files, offline failures."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torchvision import models

from bench.errors import DataError, UnknownNameError, WeightsUnavailableError
from bench.registry import TARGETS, Registry
from bench.targets import (
    Target,
    TargetSpec,
    apply_state_dict,
    build_architecture,
    load_state_dict_file,
    load_target,
    parse_places365_categories,
    register_builtin_targets,
    torchvision_class_names,
)

BUILTIN = [n for n in TARGETS.names() if TARGETS.get(n).family in ("torchvision", "places365")]
TORCHVISION = [n for n in BUILTIN if TARGETS.get(n).family == "torchvision"]


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_has_the_paper_targets() -> None:
    for name in (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "alexnet",
        "vgg16",
        "vit_b_16",
        "resnet18.places365",
    ):
        assert name in TARGETS


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_spec_builds_with_its_layers(name: str) -> None:
    spec = TARGETS.get(name)
    with torch.device("meta"):  # architecture only: no memory, no weights, no init cost
        model = build_architecture(spec)
    modules = dict(model.named_modules())
    missing = [layer for layer in spec.layers if layer not in modules]
    assert not missing, f"{name}: default layers not in the model: {missing}"
    assert spec.final_layer in spec.layers
    assert modules[spec.final_layer].out_features == spec.num_classes
    assert spec.weights_url and spec.weights_url.startswith("http")


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_spec_matches_torchvision_weights(name: str) -> None:
    spec = TARGETS.get(name)
    weights = models.get_weight(spec.weights)
    assert spec.weights == f"{type(weights).__name__}.IMAGENET1K_V1"
    assert spec.weights_url == weights.url
    # torchvision's convention: the file name carries the sha256 prefix.
    assert spec.weights_sha256 and weights.url.rsplit("-", 1)[1].startswith(spec.weights_sha256)
    t = weights.transforms()
    pre = spec.preprocessing
    assert [pre.input_size] == list(t.crop_size)
    assert [pre.resize] == list(t.resize_size)
    assert list(pre.mean) == list(t.mean) and list(pre.std) == list(t.std)
    assert pre.interpolation == t.interpolation.value
    assert spec.num_classes == len(weights.meta["categories"])


def test_vit_layers_are_block_outputs_with_cls_prefix() -> None:
    spec = TARGETS.get("vit_b_16")
    assert spec.token_prefix == 1
    assert spec.layers[:12] == tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12))
    assert spec.layers[-1] == "heads.head"


def test_spatialize_vit_tokens_to_14x14_grid() -> None:
    spec = TARGETS.get("vit_b_16")
    with torch.device("meta"):
        model = build_architecture(spec)
        seen: dict[str, torch.Tensor] = {}
        target = Target(spec=spec, model=model, weights_sha256="0" * 64)
        layer = spec.layers[3]
        handle = target.module(layer).register_forward_hook(
            lambda m, i, o: seen.setdefault("out", o)
        )
        model(torch.zeros(1, 3, 224, 224))
        handle.remove()
    assert tuple(seen["out"].shape) == (1, 197, 768)
    assert tuple(target.spatialize(layer, seen["out"]).shape) == (1, 768, 14, 14)
    # Values: grid cell (i, j) of channel d is patch token 1 + 14*i + j (row-major), CLS dropped.
    tokens = torch.randn(2, 197, 8)
    grid = target.spatialize(layer, tokens)
    assert grid.shape == (2, 8, 14, 14)
    for b, d, i, j in [(0, 0, 0, 0), (1, 5, 3, 7), (0, 7, 13, 13), (1, 2, 13, 0)]:
        assert grid[b, d, i, j] == tokens[b, 1 + 14 * i + j, d]


def test_resnet50_class_names_from_torchvision_metadata() -> None:
    names = torchvision_class_names(TARGETS.get("resnet50"))
    assert names is not None and len(names) == 1000
    assert names[0] == "tench"
    assert names == tuple(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def test_unknown_target_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_target("resnet5")
    assert "Did you mean" in str(info.value) and "'resnet50'" in str(info.value)


def test_load_local_state_dict(tmp_path: Path, torch_home: Path) -> None:
    reference = models.resnet18(num_classes=1000)
    path = tmp_path / "my-resnet18.pth"
    torch.save(reference.state_dict(), path)
    target = load_target("resnet18", weights=path, download=False)
    assert target.weights_sha256 == _sha256(path)
    assert not target.model.training
    for k, v in reference.state_dict().items():
        assert torch.equal(target.model.state_dict()[k], v), k
    assert target.class_names is not None and target.class_names[0] == "tench"
    assert target.resolve_layers(None) == list(TARGETS.get("resnet18").layers)
    assert not (torch_home / "hub").exists()  # nothing fetched, nothing written


def test_load_safetensors_and_wrapped_dicts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = models.resnet18(num_classes=7).state_dict()
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    wrapped = tmp_path / "w.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (st, wrapped):
        loaded = load_state_dict_file(path)
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    spec = dataclasses.replace(TARGETS.get("resnet18"), name="resnet18-7", num_classes=7)
    target = load_target(spec, weights=st)
    assert target.weights_sha256 == _sha256(st)
    assert target.model.fc.out_features == 7


def test_places365_checkpoint_with_module_prefix(tmp_path: Path, torch_home: Path) -> None:
    reference = models.resnet18(num_classes=365)
    ckpt = {
        "epoch": 90,
        "arch": "resnet18",
        "best_prec1": 54.7,
        "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
    }
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save(ckpt, path)
    # The category list, as published: "/<letter>/<name>[/<qualifier>] <index>".
    cats = torch_home / "hub" / "checkpoints" / "categories_places365.txt"
    cats.parent.mkdir(parents=True)
    lines = ["/a/airfield 0", "/a/apartment_building/outdoor 1"]
    lines += [f"/z/scene_{i} {i}" for i in range(2, 365)]
    cats.write_text("\n".join(lines) + "\n")
    target = load_target("resnet18.places365", weights=path, download=False)
    assert target.weights_sha256 == _sha256(path)
    assert target.model.fc.out_features == 365
    assert torch.equal(target.model.fc.weight, reference.fc.weight)
    assert target.class_names is not None and len(target.class_names) == 365
    assert target.class_names[:2] == ("airfield", "apartment building outdoor")


def test_places365_without_category_list_loads_without_names(
    tmp_path: Path, torch_home: Path
) -> None:
    path = tmp_path / "r.pth"
    torch.save({"state_dict": models.resnet18(num_classes=365).state_dict()}, path)
    target = load_target("resnet18.places365", weights=path, download=False)
    assert target.class_names is None


def test_parse_places365_categories_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("/a/airfield 0\n/a/alley 5\n")
    with pytest.raises(DataError, match="line 2"):
        parse_places365_categories(path)


def test_alexnet_places365_dataparallel_keys(tmp_path: Path) -> None:
    # Places365's AlexNet wrapped only `features` in DataParallel: "features.module.0.weight".
    with torch.device("meta"):
        keys = list(models.alexnet(num_classes=365).state_dict())
    state = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}  # tiny stand-in tensors
    odd = {k.replace("features.", "features.module.", 1): v for k, v in state.items()}
    assert odd.keys() != state.keys()
    path = tmp_path / "a.pth.tar"
    torch.save({"state_dict": odd}, path)
    assert set(load_state_dict_file(path)) == set(state)


def test_mismatching_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    state = models.resnet18(num_classes=10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as info:
        load_target("resnet18", weights=path)
    msg = str(info.value)
    assert str(path) in msg and "resnet18" in msg
    assert "fc.weight: expected (1000, 512), got (10, 512)" in msg
    assert "missing key(s): layer1.0.conv1.weight" in msg
    assert "unexpected key(s): extra.weight" in msg


def test_densenet_legacy_keys_are_renamed() -> None:
    spec = dataclasses.replace(TARGETS.get("densenet161"), arch="densenet121", name="d121")
    with torch.device("meta"):
        model = build_architecture(spec)
        state = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
    }
    assert legacy.keys() != state.keys()
    apply_state_dict(model, legacy, source="legacy", arch="densenet121")


def test_offline_fails_fast_and_leaves_nothing(torch_home: Path) -> None:
    spec = dataclasses.replace(
        TARGETS.get("resnet18"),
        weights_url=f"http://127.0.0.1:{_free_port()}/models/resnet18-f37072fd.pth",
    )
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_target(spec)
    assert time.monotonic() - start < 15
    msg = str(info.value)
    dest = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert spec.weights_url in msg
    assert str(dest) in msg and "--weights PATH" in msg
    checkpoints = torch_home / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_offline_dns_failure_for_real_url(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_target("resnet50")
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "ResNet50_Weights.IMAGENET1K_V1" in msg
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert "--weights PATH" in msg
    checkpoints = torch_home / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_without_download_missing_weights_say_where_to_put_them(torch_home: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_target("resnet18", download=False)
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(info.value)


def test_cached_weights_with_wrong_hash_are_not_trusted(torch_home: Path) -> None:
    dest = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    dest.parent.mkdir(parents=True)
    torch.save(models.resnet18().state_dict(), dest)  # random weights: hash does not match
    with pytest.raises(DataError, match="does not match its checksum"):
        load_target("resnet18", download=False)


def test_cached_weights_with_matching_hash_load(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(models.resnet18().state_dict(), path)
    digest = _sha256(path)
    name = f"resnet18-{digest[:8]}.pth"
    dest = torch_home / "hub" / "checkpoints" / name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(path.read_bytes())
    spec = dataclasses.replace(
        TARGETS.get("resnet18"), weights_sha256=None, weights_url=f"http://127.0.0.1:9/{name}"
    )
    target = load_target(spec, download=False)  # found in the hub dir: no network needed
    assert target.weights_sha256 == digest


def test_synthetic_targets_registered_and_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TargetSpec(
        name="synth.fake",
        family="synthetic",
        arch="fake",
        weights="fake.st",
        preprocessing=TARGETS.get("resnet18").preprocessing,
        layers=("0",),
        final_layer="0",
        num_classes=2,
        loader="bench.synth.registration:load_target",
    )
    fake = types.ModuleType("bench.synth.targets")
    fake.synthetic_target_specs = lambda: [spec]  # type: ignore[attr-defined]
    fake.load_synthetic_model = lambda s: (
        torch.nn.Sequential(torch.nn.Linear(3, 2)),  # type: ignore[attr-defined]
        "ab" * 32,
        ("cat", "dog"),
    )
    monkeypatch.setitem(sys.modules, "bench.synth.targets", fake)
    registry: Registry = Registry("target")
    monkeypatch.setattr("bench.registry.TARGETS", registry)
    from bench.synth.registration import register_targets

    register_builtin_targets()
    register_targets()  # the synthetic world registers itself, as a plug-in would
    register_builtin_targets()  # idempotent
    register_targets()
    assert registry.get("synth.fake") is spec
    assert "resnet50" in registry
    target = load_target(spec)
    assert target.weights_sha256 == "ab" * 32
    assert target.class_names == ("cat", "dog")
    assert not target.model.training
