"""Targets: the networks whose units are described.

A :class:`TargetSpec` is a value (name, architecture, weights source, preprocessing, default layers,
class names); :func:`load_target` turns it into a :class:`Target` (an ``nn.Module`` in eval mode
plus what the recorder needs). Specs are registered in ``bench.registry.TARGETS``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import (
    DataError,
    DownloadError,
    UnknownNameError,
    UsageError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from bench.cache import Cache

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True, slots=True)
class Preprocessing:
    """How an image becomes the network's input tensor.

    ``input_size``: side of the square input. ``resize``: shorter side before the centre crop
    (``None``: resize straight to ``input_size``). ``mean``/``std`` on [0, 1] RGB.
    """

    input_size: int
    resize: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def transform(self, img: Image.Image, *, fixed_geometry: bool = False) -> torch.Tensor:
        """float32 ``[3, S, S]``. With ``fixed_geometry`` the image is resized (never cropped)."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        mode = InterpolationMode(self.interpolation)
        img = img.convert("RGB")
        if fixed_geometry or self.resize is None:
            if img.size != (self.input_size, self.input_size):
                img = TF.resize(img, [self.input_size, self.input_size], interpolation=mode)
        else:
            img = TF.resize(img, self.resize, interpolation=mode)
            img = TF.center_crop(img, [self.input_size, self.input_size])
        x = TF.pil_to_tensor(img).to(torch.float32).div_(255.0)
        return TF.normalize(x, list(self.mean), list(self.std))

    def to_json(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetSpec:
    """Everything needed to build a target, without building it.

    ``family`` selects the built-in loader ("torchvision", "places365", "checkpoint"); a family
    registered from elsewhere names its own ``loader`` ("module:function" taking
    ``(spec, local weights path or None, download, progress)`` and returning
    ``(model, weights sha256, class names or None)``; not part of the target's identity).
    ``weights`` is the family's weights identifier (a torchvision enum name such as
    ``"ResNet50_Weights.IMAGENET1K_V1"``, a URL, or a packaged file name); ``weights_sha256`` pins
    the content where it is known. ``token_prefix``: leading tokens (CLS) dropped before a
    transformer's token outputs are reshaped to their patch grid.
    """

    name: str
    family: str
    arch: str
    weights: str | None
    preprocessing: Preprocessing
    layers: tuple[str, ...]
    final_layer: str
    num_classes: int
    weights_url: str | None = None
    weights_sha256: str | None = None
    class_names_source: str = ""
    token_prefix: int = 0
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    loader: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "arch": self.arch,
            "weights": self.weights,
            "weights_url": self.weights_url,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_json(),
            "layers": list(self.layers),
            "final_layer": self.final_layer,
            "num_classes": self.num_classes,
            "token_prefix": self.token_prefix,
            "options": self.options,
        }


@dataclass(kw_only=True)
class Target:
    """A loaded target network (eval mode) and what the recorder needs to read its layers."""

    spec: TargetSpec
    model: torch.nn.Module
    weights_sha256: str
    class_names: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def identity(self) -> dict[str, Any]:
        """What identifies this target's outputs in cache keys and results."""
        return {
            "name": self.spec.name,
            "arch": self.spec.arch,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.spec.preprocessing.to_json(),
            "token_prefix": self.spec.token_prefix,
        }

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.model.named_modules() if n]

    def resolve_layers(self, names: list[str] | tuple[str, ...] | None) -> list[str]:
        """Validate layer names against ``named_modules()``; default: the spec's layers."""
        if not names:
            return list(self.spec.layers)
        available = self.layer_names()
        known = set(available)
        out = []
        for n in names:
            if n not in known:
                # Prefer the spec's layers in suggestions: they are the ones people mean.
                pool = list(self.spec.layers) + available
                close = difflib.get_close_matches(n, pool, n=3, cutoff=0.5)
                raise UnknownNameError(
                    "layer",
                    n,
                    list(dict.fromkeys(close + list(self.spec.layers))),
                    where=f"in target '{self.name}'",
                    note="Any module name of the model (named_modules()) is accepted.",
                )
            out.append(n)
        if len(set(out)) != len(out):
            raise UsageError(f"Expected distinct layer names, got {out}.")
        return out

    def module(self, layer: str) -> torch.nn.Module:
        return dict(self.model.named_modules())[layer]

    def spatialize(self, layer: str, out: Any) -> torch.Tensor:
        """A layer's output as a float ``[B, C, H, W]`` map.

        Conv maps pass through; ``[B, C]`` outputs (fully connected, whose units are classes)
        become 1x1 maps; transformer tokens ``[B, T, D]`` drop ``token_prefix`` tokens and are
        reshaped to their square patch grid.
        """
        import math

        import torch

        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise UsageError(
                f"Layer '{layer}' of '{self.name}' returned {type(out).__name__}, "
                "expected a tensor; pick another layer."
            )
        if out.ndim == 4:
            return out
        if out.ndim == 2:
            return out[:, :, None, None]
        if out.ndim == 3:
            tokens = out[:, self.spec.token_prefix :, :]
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise UsageError(
                    f"Layer '{layer}' of '{self.name}' gives {out.shape[1]} tokens; after dropping "
                    f"{self.spec.token_prefix} prefix token(s) they do not form a square grid."
                )
            return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        raise UsageError(
            f"Layer '{layer}' of '{self.name}' gives a {out.ndim}-d output "
            f"{tuple(out.shape)}; expected [B,C,H,W], [B,C] or [B,T,D]."
        )


# --- the built-in registry ----------------------------------------------------------------------

#: What the papers dissect in ResNets (NetDissect, MILAN): the stem conv, every stage, the head.
RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
IMAGENET_PREPROCESSING = Preprocessing(input_size=224, resize=256)
PLACES365_CATEGORIES_URL = (
    "https://raw.githubusercontent.com/csailvision/places365/master/categories_places365.txt"
)
_PLACES365_ZOO = "http://places2.csail.mit.edu/models_places365"
_TV_URL = "https://download.pytorch.org/models"

#: conv1..conv5 of AlexNet.
ALEXNET_LAYERS = (
    "features.0",
    "features.3",
    "features.6",
    "features.8",
    "features.10",
    "classifier.6",
)
#: The last conv of each of VGG16's five blocks, and the head.
VGG16_LAYERS = (
    "features.2",
    "features.7",
    "features.14",
    "features.21",
    "features.28",
    "classifier.6",
)
#: The output of every encoder block (tokens: CLS + 14x14 patches), and the head.
VIT_B_16_LAYERS = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12)) + ("heads.head",)
DENSENET_LAYERS = (
    "features.denseblock1",
    "features.denseblock2",
    "features.denseblock3",
    "features.denseblock4",
    "classifier",
)

# arch -> (weights enum, file name on download.pytorch.org, default layers, final layer).
# The URLs and hash prefixes are torchvision's own (checked against the enums by the tests); they
# are spelled out so that listing targets does not import torchvision.
_TORCHVISION: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", RESNET_LAYERS, "fc"),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", "resnet34-b627a593.pth", RESNET_LAYERS, "fc"),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth", RESNET_LAYERS, "fc"),
    "resnet101": ("ResNet101_Weights.IMAGENET1K_V1", "resnet101-63fe2227.pth", RESNET_LAYERS, "fc"),
    "resnet152": ("ResNet152_Weights.IMAGENET1K_V1", "resnet152-394f9c45.pth", RESNET_LAYERS, "fc"),
    "alexnet": (
        "AlexNet_Weights.IMAGENET1K_V1",
        "alexnet-owt-7be5be79.pth",
        ALEXNET_LAYERS,
        "classifier.6",
    ),
    "vgg16": ("VGG16_Weights.IMAGENET1K_V1", "vgg16-397923af.pth", VGG16_LAYERS, "classifier.6"),
    "vit_b_16": (
        "ViT_B_16_Weights.IMAGENET1K_V1",
        "vit_b_16-c867db91.pth",
        VIT_B_16_LAYERS,
        "heads.head",
    ),
    "densenet161": (
        "DenseNet161_Weights.IMAGENET1K_V1",
        "densenet161-8d451a50.pth",
        DENSENET_LAYERS,
        "classifier",
    ),
}
_TOKEN_PREFIX = {"vit_b_16": 1}

# name -> (arch, file name in the Places365 model zoo, default layers, final layer)
_PLACES365: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "resnet18.places365": ("resnet18", "resnet18_places365.pth.tar", RESNET_LAYERS, "fc"),
    "alexnet.places365": ("alexnet", "alexnet_places365.pth.tar", ALEXNET_LAYERS, "classifier.6"),
}


def torchvision_specs() -> list[TargetSpec]:
    """The ImageNet-trained torchvision targets with the weights the papers used (IMAGENET1K_V1)."""
    out = []
    for arch, (weights, file, layers, final) in _TORCHVISION.items():
        out.append(
            TargetSpec(
                name=arch,
                family="torchvision",
                arch=arch,
                weights=weights,
                preprocessing=IMAGENET_PREPROCESSING,
                layers=layers,
                final_layer=final,
                num_classes=1000,
                weights_url=f"{_TV_URL}/{file}",
                weights_sha256=_hash_prefix_from_name(file),
                class_names_source=f"torchvision {weights}.meta['categories']",
                token_prefix=_TOKEN_PREFIX.get(arch, 0),
                description=f"torchvision {arch}, ImageNet-1k ({weights})",
            )
        )
    return out


def places365_specs() -> list[TargetSpec]:
    """Places365 CNNs from the CSAIL model zoo (no published checksum: pinned on first download)."""
    return [
        TargetSpec(
            name=name,
            family="places365",
            arch=arch,
            weights=file,
            preprocessing=IMAGENET_PREPROCESSING,
            layers=layers,
            final_layer=final,
            num_classes=365,
            weights_url=f"{_PLACES365_ZOO}/{file}",
            class_names_source=PLACES365_CATEGORIES_URL,
            description=f"{arch} trained on Places365 (CSAIL model zoo)",
        )
        for name, (arch, file, layers, final) in _PLACES365.items()
    ]


def register_builtin_targets() -> None:
    """Register the torchvision and Places365 targets in ``bench.registry.TARGETS``.

    Called by the registry on its first lookup; calling it again is harmless.
    """
    from bench.registry import TARGETS

    for spec in torchvision_specs() + places365_specs():
        if spec.name not in TARGETS:
            TARGETS.register(spec.name, spec)


def _hash_prefix_from_name(file_name: str) -> str | None:
    """torchvision's convention: ``resnet50-0676ba61.pth`` -> the sha256 starts with 0676ba61."""
    m = re.search(r"-([0-9a-f]{8,64})\.", file_name)
    return m.group(1) if m else None


# --- loading ------------------------------------------------------------------------------------


def load_target(
    name_or_spec: str | TargetSpec,
    *,
    weights: str | Path | None = None,
    device: str = "cpu",
    download: bool = True,
    progress: bool = False,
    cache: Cache | None = None,
) -> Target:
    """Build a target and load its weights.

    ``weights``: a local file (a torch checkpoint read with ``weights_only=True``: a state dict or
    a dict holding one under ``"state_dict"``/``"model"``; or ``.safetensors``) used instead of
    the spec's source. Otherwise the file is looked up in torch hub's checkpoint directory and the
    cache's models directory and, with ``download``, fetched into the latter with a 10 s timeout
    and a checksum. Offline this fails fast
    with :class:`WeightsUnavailableError` saying where the weights come from and where to put them.
    """
    from bench.registry import TARGETS

    if isinstance(name_or_spec, str):
        spec = TARGETS.get(name_or_spec)
    elif isinstance(name_or_spec, TargetSpec):
        spec = name_or_spec
    else:
        raise UsageError(
            f"Expected a target name or a TargetSpec, got {type(name_or_spec).__name__}."
        )
    loaders: dict[str, Any] = {
        "torchvision": _load_torchvision,
        "places365": _load_places365,
        "checkpoint": _load_checkpoint,
    }
    if spec.loader is not None:
        from bench.registry import import_string

        loader = import_string(spec.loader)
    elif spec.family in loaders:
        loader = functools.partial(loaders[spec.family], cache=cache)
    else:
        raise UnknownNameError("target family", spec.family, loaders)
    local = Path(weights).expanduser() if weights is not None else None
    if local is not None and not local.is_file():
        raise UsageError(f"Expected a weights file at {local} (--weights), found nothing there.")
    model, sha, class_names = loader(spec, local, download, progress)
    if class_names is not None and len(class_names) != spec.num_classes:
        raise DataError(
            f"Target '{spec.name}' has {spec.num_classes} classes but its class names "
            f"list has {len(class_names)} entries."
        )
    model = model.eval().to(device)
    return Target(spec=spec, model=model, weights_sha256=sha, class_names=class_names)


def build_architecture(spec: TargetSpec) -> torch.nn.Module:
    """The spec's torchvision architecture with random weights (``weights=None``)."""
    from torchvision import models

    try:
        return models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
    except ValueError as e:
        raise UnknownNameError("torchvision architecture", spec.arch, models.list_models()) from e


def torchvision_class_names(spec: TargetSpec) -> tuple[str, ...] | None:
    """Class names from torchvision's weights metadata (shipped with torchvision: offline)."""
    from torchvision import models

    if not spec.weights:
        return None
    try:
        weights = models.get_weight(spec.weights)
    except (ValueError, KeyError, AttributeError):
        return None
    categories = weights.meta.get("categories")
    if not categories or len(categories) != spec.num_classes:
        # A re-headed architecture (fine-tuned on other classes): ImageNet's names do not apply.
        return None
    return tuple(categories)


_SKIP_PART = "module"
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch checkpoint (``weights_only=True``).

    Accepts a plain state dict or a dict holding one under ``"state_dict"``, ``"model"`` or
    ``"model_state_dict"``. ``DataParallel`` wrappers are removed: a ``module`` key component
    (``module.conv1.weight``, Places365 AlexNet's ``features.module.0.weight``) is dropped.
    """
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path} is not a readable safetensors file ({e}).") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise DataError(
                f"{path} is not a checkpoint that loads with torch.load(weights_only=True) ({e}). "
                "Expected a state dict of tensors (or a dict with one under 'state_dict'); convert "
                "pickled whole-model files to a state dict or safetensors first."
            ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DataError(
            f"{path}: expected a state dict (parameter name -> tensor), got {type(obj).__name__}."
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise DataError(
                f"{path}: expected tensors in the state dict, got {type(v).__name__} for key {k!r}."
            )
        out[".".join(p for p in str(k).split(".") if p != _SKIP_PART)] = v
    return out


def apply_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, arch: str
) -> None:
    """Load ``state`` strictly, or raise DataError listing missing/unexpected keys and shapes."""
    if arch.startswith("densenet"):
        # torchvision's densenet files predate a module rename ("norm.1" -> "norm1").
        state = {(_DENSENET_LEGACY.sub(r"\1\2", k)): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and expected[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {head(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {head(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es): {head(shapes)}")
        raise DataError(
            f"The weights in {source} do not fit architecture '{arch}' "
            f"({len(expected)} tensors expected, {len(state)} given): {'; '.join(problems)}. "
            "Pass weights made for this architecture and number of classes."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"The weights in {source} do not fit architecture '{arch}': {e}") from e


def _file_name(url: str) -> str:
    import urllib.parse

    return Path(urllib.parse.urlsplit(url).path).name


def _download_dest(url: str, cache: Cache | None) -> Path:
    """Where a downloaded file of ``url`` is: torch hub's checkpoint dir when the file is already
    there (shared with torchvision and other tools; only read), else the cache's models dir."""
    import torch

    from bench.cache import Cache

    name = _file_name(url)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / name
    if hub.is_file():
        return hub
    return (cache if cache is not None else Cache()).models_dir() / name


def _hub_alternative(dest: Path) -> str:
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints" / dest.name
    return "" if hub == dest else f" (or in torch hub's checkpoint dir, {hub})"


def _remote_weights(
    spec: TargetSpec, download: bool, progress: bool, cache: Cache | None = None
) -> tuple[Path, str]:
    """Path and sha256 of the spec's weights (torch hub's checkpoint dir if they are there, else
    the cache's models dir), fetched if missing."""
    from bench.download import ensure_file

    if not spec.weights_url:
        raise WeightsUnavailableError(
            f"Target '{spec.name}' names no weights URL; pass --weights PATH to a weights file."
        )
    dest = _download_dest(spec.weights_url, cache)
    expected = spec.weights_sha256 or _hash_prefix_from_name(dest.name)
    what = f"the weights {spec.weights or dest.name} of target '{spec.name}'"
    try:
        return ensure_file(
            spec.weights_url,
            dest,
            sha256=expected,
            what=what,
            download_missing=download,
            timeout=10.0,
            progress=progress,
        )
    except DownloadError as e:
        reason = getattr(e, "reason", None) or str(e)
        raise WeightsUnavailableError(
            f"The weights {spec.weights or dest.name} of target '{spec.name}' are unavailable: "
            f"{reason}. They come from {spec.weights_url}. To supply them, put the file at "
            f"{dest}{_hub_alternative(dest)}, or pass --weights PATH to use a local file."
        ) from e


def _weights_state(
    spec: TargetSpec, local: Path | None, download: bool, progress: bool, cache: Cache | None
) -> tuple[dict[str, torch.Tensor], str, str]:
    from bench.cache import sha256_file

    if local is not None:
        return load_state_dict_file(local), sha256_file(local), str(local)
    path, sha = _remote_weights(spec, download, progress, cache)
    return load_state_dict_file(path), sha, str(path)


def _load_torchvision(
    spec: TargetSpec,
    local: Path | None,
    download: bool,
    progress: bool,
    cache: Cache | None = None,
) -> tuple[torch.nn.Module, str, tuple[str, ...] | None]:
    model = build_architecture(spec)
    state, sha, source = _weights_state(spec, local, download, progress, cache)
    apply_state_dict(model, state, source=source, arch=spec.arch)
    return model, sha, torchvision_class_names(spec)


def _load_checkpoint(
    spec: TargetSpec,
    local: Path | None,
    download: bool,
    progress: bool,
    cache: Cache | None = None,
) -> tuple[torch.nn.Module, str, tuple[str, ...] | None]:
    """A torchvision architecture with a user's weights (``spec.weights`` or ``--weights``)."""
    if local is None:
        if spec.weights and Path(spec.weights).expanduser().is_file():
            local = Path(spec.weights).expanduser()
        elif not spec.weights_url:
            raise UsageError(f"Target '{spec.name}' needs a weights file: pass --weights PATH.")
    names = spec.options.get("class_names")
    return (
        *_load_torchvision(spec, local, download, progress, cache)[:2],
        tuple(names) if names else None,
    )


def _load_places365(
    spec: TargetSpec,
    local: Path | None,
    download: bool,
    progress: bool,
    cache: Cache | None = None,
) -> tuple[torch.nn.Module, str, tuple[str, ...] | None]:
    model = build_architecture(spec)
    state, sha, source = _weights_state(spec, local, download, progress, cache)
    apply_state_dict(model, state, source=source, arch=spec.arch)
    return model, sha, places365_class_names(download=download, progress=progress, cache=cache)


def places365_class_names(
    *, download: bool = True, progress: bool = False, cache: Cache | None = None
) -> tuple[str, ...] | None:
    """The 365 scene names (``/a/airfield 0`` -> ``airfield``; ``_`` and ``/`` become spaces).

    The list is fetched on request into the cache's models dir (or read from torch hub's
    checkpoint dir when it is there). When it cannot be had the
    target still loads, without class names, and a warning says how to supply the list.
    """
    from bench.download import ensure_file

    dest = _download_dest(PLACES365_CATEGORIES_URL, cache)
    try:
        path, _ = ensure_file(
            PLACES365_CATEGORIES_URL,
            dest,
            what="the Places365 category list",
            download_missing=download,
            timeout=10.0,
            progress=progress,
        )
    except DownloadError as e:
        log.warning(
            "Places365 class names unavailable (%s); final-layer units get no class names.", e
        )
        return None
    return parse_places365_categories(path)


def parse_places365_categories(path: Path) -> tuple[str, ...]:
    """Parse ``categories_places365.txt``: lines ``/<letter>/<name>[/<qualifier>] <index>``."""
    names: list[str] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if (
            len(parts) != 2
            or not parts[1].isdigit()
            or int(parts[1]) != len(names)
            or not re.match(r"^/[a-z]/\S+$", parts[0])
        ):
            raise DataError(
                f"{path}: line {lineno}: expected '/<letter>/<name> {len(names)}', got {line!r}."
            )
        names.append(parts[0][3:].replace("_", " ").replace("/", " "))
    return tuple(names)
