"""MILAN's exemplar encoder: mask-pooled features of a frozen image classifier's pyramid.

``PyramidConvEncoder`` in the original (``src/milan/encoders.py``): the *unmasked* exemplar image
goes through a frozen ImageNet classifier (ImageNet normalisation inside the module); the outputs
of ``conv1`` and ``layer1`` to ``layer4`` are each pooled with the exemplar's mask, resized to the
feature map with ``F.interpolate(mode="bilinear", align_corners=False)`` and normalised to sum to
one, and the pooled vectors are concatenated: 64 + 256 + 512 + 1024 + 2048 = 3904 values per
exemplar for ResNet-50/101, 1024 for ResNet-18/34, 1152 for AlexNet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError, UnknownNameError
from bench.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache

log = logging.getLogger(__name__)

#: torchvision's ImageNet normalisation (MILAN applies it inside the encoder).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET = ("conv1", "layer1", "layer2", "layer3", "layer4")
#: Architecture -> pyramid layers (MILAN's encoder configs; AlexNet's conv1..conv5 are
#: torchvision's ``features.{0,3,6,8,10}``).
PYRAMID_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet18": _RESNET,
    "resnet34": _RESNET,
    "resnet50": _RESNET,
    "resnet101": _RESNET,
    "resnet152": _RESNET,
    "alexnet": ("features.0", "features.3", "features.6", "features.8", "features.10"),
}


def pool_features(feature_maps: Sequence[Tensor], masks: Tensor) -> Tensor:
    """Mask-weighted average of each feature map, concatenated: [B, sum_l C_l].

    feature_maps: [B, C_l, h_l, w_l] per level; masks: [B, 1, H, W] (0/1 or soft). Each mask is
    resized to the level with bilinear interpolation (``align_corners=False``) and divided by its
    sum. A level where the resized mask sums to zero contributes a zero vector: the original
    skips such masks rather than dividing by zero.
    """
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"Expected masks [B, 1, H, W], got {list(masks.shape)}")
    pooled = []
    for fmap in feature_maps:
        if fmap.dim() != 4 or fmap.shape[0] != masks.shape[0]:
            raise ValueError(
                f"Expected feature maps [{masks.shape[0]}, C, h, w], got {list(fmap.shape)}"
            )
        resized = F.interpolate(
            masks.to(fmap.dtype), size=fmap.shape[-2:], mode="bilinear", align_corners=False
        )
        total = resized.sum(dim=(2, 3), keepdim=True)
        weights = torch.where(
            total > 0, resized / total.clamp_min(1e-30), torch.zeros_like(resized)
        )
        pooled.append((fmap * weights).sum(dim=(2, 3)))
    return torch.cat(pooled, dim=1)


class PyramidEncoder(nn.Module):
    """A frozen backbone whose ``layers`` outputs are mask-pooled into one vector per image.

    ``normalize``: ``(mean, std)`` applied to images in [0, 1] inside the module, or None when
    the backbone takes the images as they are. ``config``: JSON describing how to rebuild the
    encoder (saved with trained models); the factories fill it in.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[str],
        normalize: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD),
        *,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        names = dict(backbone.named_modules())
        for layer in layers:
            if layer not in names or not layer:
                raise UnknownNameError(
                    "layer", layer, [n for n in names if n], where="in the encoder backbone"
                )
        if not layers:
            raise ConfigError("Expected at least one encoder layer, got none.")
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.layers = tuple(layers)
        self._modules_by_name = {layer: names[layer] for layer in self.layers}
        if normalize is not None:
            mean, std = normalize
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.normalize = normalize is not None
        self.config = dict(config or {"layers": list(self.layers)})
        self._feature_size: int | None = None

    def train(self, mode: bool = True) -> PyramidEncoder:
        """The backbone stays in eval mode (frozen batch-norm statistics, no dropout)."""
        super().train(False)
        return self

    @contextmanager
    def _hooks(self, store: dict[str, Tensor]) -> Iterator[None]:
        handles = []
        for layer, module in self._modules_by_name.items():

            def hook(_m: nn.Module, _i: Any, out: Any, layer: str = layer) -> None:
                store[layer] = out[0] if isinstance(out, (tuple, list)) else out

            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The pyramid's maps [B, C_l, h_l, w_l] for images [B, 3, H, W] in [0, 1]."""
        if self.normalize:
            images = (images - self.mean) / self.std
        store: dict[str, Tensor] = {}
        with self._hooks(store):
            self.backbone(images)
        missing = [layer for layer in self.layers if layer not in store]
        if missing:
            raise ConfigError(f"Encoder layers {missing} did not run in the backbone's forward.")
        return [store[layer] for layer in self.layers]

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        """[B, F] for images [B, 3, H, W] in [0, 1] and masks [B, 1, H, W]."""
        return pool_features(self.feature_maps(images), masks)

    @property
    def feature_size(self) -> int:
        """F: the summed channel counts of the pyramid (found with one small forward pass)."""
        if self._feature_size is None:
            param = next(self.backbone.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            with torch.inference_mode():
                maps = self.feature_maps(torch.zeros(1, 3, 64, 64, device=device))
            self._feature_size = sum(m.shape[1] for m in maps)
        return self._feature_size

    def encode(
        self,
        images: Tensor | np.ndarray,
        masks: Tensor | np.ndarray,
        *,
        batch_size: int = 64,
        progress: bool = False,
    ) -> Tensor:
        """float32 [N, k, F] on the CPU for exemplars images [N, k, 3, H, W], masks [N, k, 1, H, W].

        Images may be uint8 (0..255) or float in [0, 1]; masks 0/1 of any dtype. The work runs on
        the encoder's device, ``batch_size`` exemplar images at a time.
        """
        images_t = torch.as_tensor(images)
        masks_t = torch.as_tensor(masks)
        if images_t.dim() != 5 or masks_t.dim() != 5 or images_t.shape[:2] != masks_t.shape[:2]:
            raise ValueError(
                f"Expected images [N, k, 3, H, W] and masks [N, k, 1, H, W], got "
                f"{list(images_t.shape)} and {list(masks_t.shape)}"
            )
        n, k = images_t.shape[:2]
        flat_images = images_t.reshape(n * k, *images_t.shape[2:])
        flat_masks = masks_t.reshape(n * k, *masks_t.shape[2:])
        param = next(self.backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        out = torch.empty(n * k, self.feature_size, dtype=torch.float32)
        with (
            torch.inference_mode(),
            progress_bar(total=n * k, desc="MILAN features", enabled=progress, unit="image") as bar,
        ):
            for lo in range(0, n * k, batch_size):
                batch = flat_images[lo : lo + batch_size].to(device)
                batch = batch.to(dtype) / 255.0 if batch.dtype == torch.uint8 else batch.to(dtype)
                mask = flat_masks[lo : lo + batch_size].to(device=device, dtype=dtype)
                out[lo : lo + batch.shape[0]] = self(batch, mask).float().cpu()
                bar.update(batch.shape[0])
        return out.reshape(n, k, -1)


def torchvision_pyramid(
    arch: str = "resnet101",
    weights: str | Path | None = None,
    *,
    download: bool = True,
    progress: bool = False,
    cache: Cache | None = None,
) -> PyramidEncoder:
    """A torchvision classifier as MILAN's pyramid encoder.

    ``weights``: None for random weights (tests), ``"imagenet"`` for torchvision's
    IMAGENET1K_V1 weights (fetched with a timeout and checksum by
    :func:`bench.targets.load_target` when not on disk), or a local weights file.
    """
    if arch not in PYRAMID_LAYERS:
        raise UnknownNameError("MILAN encoder architecture", arch, PYRAMID_LAYERS)
    if weights is None:
        from torchvision import models  # type: ignore[import-untyped]

        backbone = models.get_model(arch, weights=None)
        source = None
    else:
        from bench.targets import load_target

        local = None if str(weights) == "imagenet" else Path(weights)
        backbone = load_target(
            arch, weights=local, download=download, progress=progress, cache=cache
        ).model
        source = "imagenet" if local is None else str(local)
    config = {"arch": arch, "layers": list(PYRAMID_LAYERS[arch]), "weights": source}
    return PyramidEncoder(backbone, PYRAMID_LAYERS[arch], config=config)


def encoder_from_config(
    config: dict[str, Any],
    *,
    weights: str | Path | None = "imagenet",
    download: bool = True,
    progress: bool = False,
    cache: Cache | None = None,
) -> PyramidEncoder:
    """Rebuild a torchvision pyramid from a saved encoder config.

    Accepts ours (``{"arch": ..., "layers": ...}``) and the released checkpoints' encoder
    properties (``{"config": "resnet101", ...}``). Other backbones (the synthetic world's) are
    built by their owners and wrapped in :class:`PyramidEncoder` directly.
    """
    arch = config.get("arch") or config.get("config")
    if not isinstance(arch, str):
        raise ConfigError(
            f"Expected an encoder config naming a torchvision architecture ('arch' or 'config'), "
            f"got {sorted(config)}."
        )
    encoder = torchvision_pyramid(arch, weights, download=download, progress=progress, cache=cache)
    layers = config.get("layers")
    if layers is not None and list(layers) != list(encoder.layers):
        raise ConfigError(
            f"Expected the {arch} pyramid layers {list(encoder.layers)}, the config names "
            f"{list(layers)}."
        )
    return encoder
