"""A target's pooled activations on images that are not a probe set (generated images, crops).

Shared by Describe-and-Dissect (its candidates' generated images and its crops) and the
``generated`` suite (CoSy's images generated from a label), so both see an image the same way:
``uint8 [H, W, 3]`` resized to the target's input size (bicubic), normalised by its
preprocessing, batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.targets import Target

POOLS: tuple[str, ...] = ("mean", "max")


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (PIL bicubic, Pillow's default; unchanged when
    already that size)."""
    from PIL import Image

    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))


def pooled_on_images(
    target: Target,
    layers: Sequence[str],
    images: Sequence[np.ndarray],
    *,
    pool: str = "mean",
    device: str = "cpu",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """layer -> float32 ``[N, U]``: each unit's spatial ``pool`` (mean or max) on each image,
    one forward pass per batch for all ``layers``. Empty ``images`` give ``[0, 0]`` arrays."""
    import torch

    from bench.record import hooks

    if pool not in POOLS:
        raise UsageError(f"Expected pool in {POOLS}, got {pool!r}.")
    layers = list(dict.fromkeys(layers))
    if not images:
        return {layer: np.zeros((0, 0), dtype=np.float32) for layer in layers}
    pre = target.preprocessing
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    model = target.model
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    out: dict[str, list[Any]] = {layer: [] for layer in layers}
    got: dict[str, Any] = {}

    def on_output(name: str, value: Any) -> None:
        acts = target.spatialize(name, value).float()
        got[name] = (acts.mean((2, 3)) if pool == "mean" else acts.amax((2, 3))).cpu()

    with torch.inference_mode(), hooks(model, layers, on_output):
        for start in range(0, len(images), batch_size):
            batch = [resize_image(a, pre.input_size) for a in images[start : start + batch_size]]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
            x = ((x - mean) / std).to(device=device, dtype=dtype)
            got.clear()
            model(x)
            for layer in layers:
                if layer not in got:
                    raise UsageError(f"Layer '{layer}' of '{target.name}' did not run.")
                out[layer].append(got[layer])
    return {layer: torch.cat(parts).numpy().astype(np.float32) for layer, parts in out.items()}
