"""Targets: the networks whose units are described.

A :class:`TargetSpec` is a value (name, architecture, weights source, preprocessing, default layers,
class names); :func:`load_target` turns it into a :class:`Target` (an ``nn.Module`` in eval mode
plus what the recorder needs). Specs are registered in ``bench.registry.TARGETS``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import UnknownNameError, UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

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
        return {"input_size": self.input_size, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetSpec:
    """Everything needed to build a target, without building it.

    ``family`` selects the loader ("torchvision", "places365", "synthetic", "checkpoint").
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "arch": self.arch, "weights": self.weights,
            "weights_url": self.weights_url, "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_json(), "layers": list(self.layers),
            "final_layer": self.final_layer, "num_classes": self.num_classes,
            "token_prefix": self.token_prefix, "options": self.options,
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
        return {"name": self.spec.name, "arch": self.spec.arch, "weights_sha256": self.weights_sha256,
                "preprocessing": self.spec.preprocessing.to_json(),
                "token_prefix": self.spec.token_prefix}

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
                raise UnknownNameError(f"layer of target '{self.name}'", n,
                                       list(dict.fromkeys(close + list(self.spec.layers))))
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
            raise UsageError(f"Layer '{layer}' of '{self.name}' returned {type(out).__name__}, "
                             "expected a tensor; pick another layer.")
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
        raise UsageError(f"Layer '{layer}' of '{self.name}' gives a {out.ndim}-d output "
                         f"{tuple(out.shape)}; expected [B,C,H,W], [B,C] or [B,T,D].")
