"""The target-side pieces of Describe-and-Dissect: the images the network saw, and the pooled
activations of a layer on new images (crops, generated images), batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from bench.targets import Preprocessing, Target


def network_view(img: Image.Image, pre: Preprocessing, *, fixed_geometry: bool) -> np.ndarray:
    """uint8 [S, S, 3]: ``img`` framed as the target's preprocessing frames it (resize, and
    centre crop unless ``fixed_geometry``), before normalisation. Activation maps recorded on
    the probe are aligned with this view."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode(pre.interpolation)
    img = img.convert("RGB")
    s = pre.input_size
    if fixed_geometry or pre.resize is None:
        if img.size != (s, s):
            img = TF.resize(img, [s, s], interpolation=mode)
    else:
        img = TF.resize(img, pre.resize, interpolation=mode)
        img = TF.center_crop(img, [s, s])
    return np.asarray(img, dtype=np.uint8).copy()


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (PIL bicubic, Pillow's default; unchanged when
    already that size)."""
    from PIL import Image

    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))


def crop_image(view: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``(x0, y0, x1, y1)`` region of ``view``, resized to ``size`` x ``size`` (bicubic)."""
    x0, y0, x1, y1 = box
    return resize_image(np.ascontiguousarray(view[y0:y1, x0:x1]), size)


def layer_means(
    target: Target,
    layer: str,
    images: Sequence[np.ndarray],
    *,
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """float32 [N, U]: the spatial mean of each unit of ``layer`` on each image (uint8
    [H, W, 3], resized to the target's input size; normalised by its preprocessing)."""
    import torch

    from bench.record import hooks

    if not images:
        return np.zeros((0, 0), dtype=np.float32)
    pre = target.preprocessing
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    model = target.model
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    out: list[Any] = []
    got: dict[str, Any] = {}

    def on_output(name: str, value: Any) -> None:
        got[name] = target.spatialize(name, value).float().mean((2, 3)).cpu()

    with torch.inference_mode(), hooks(model, [layer], on_output):
        for start in range(0, len(images), batch_size):
            batch = [resize_image(a, pre.input_size) for a in images[start : start + batch_size]]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
            x = ((x - mean) / std).to(device=device, dtype=dtype)
            got.clear()
            model(x)
            out.append(got[layer])
    return torch.cat(out).numpy().astype(np.float32)
