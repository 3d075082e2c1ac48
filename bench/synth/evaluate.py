"""Measure synthetic targets: task accuracy and planted-unit selectivity on fresh images.

Selectivity follows NetDissect (Bau et al. 2017, 3.1): a unit's map is thresholded at its top
0.5% activation quantile over every spatial position of every probe image, upsampled bilinearly
(``align_corners=False``) to the label resolution, and compared with the concept's mask by IoU
over the whole probe. We also report the fraction of the unit's 15 top images (by spatial max)
that contain the concept, and the IoU ceiling: with a fraction ``p`` of pixels above threshold
and a concept covering a fraction ``c``, no unit can exceed ``min(p, c) / max(p, c)``.

``pooled_auroc`` is what the ``faithfulness`` suite asks of a label (with the planted concept as
the label and the synthetic presence): the AUROC of the unit's spatially mean-pooled (rectified)
activation per image against whether the image shows the concept at all (any pixel); ``None``
when the images all show it or none does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import UsageError
from bench.synth import concepts as C
from bench.synth import world as W
from bench.synth.recipes import EVAL_SEED, PlantedUnit, Recipe, recipe

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

QUANTILE = 0.995
TOP_IMAGES = 15


def task_labels(scenes: Sequence[W.Scene], task: str) -> np.ndarray:
    """int64 [N]: class index of each scene under ``task`` (see ``recipes.task_class_names``)."""
    if task == "objects":
        nshape = len(C.SHAPES)
        return np.array(
            [C.COLORS.index(s.main.color) * nshape + C.SHAPES.index(s.main.shape) for s in scenes],
            dtype=np.int64,
        )
    if task == "scenes":
        return np.array([C.SCENES.index(s.scene) for s in scenes], dtype=np.int64)
    from bench.synth.recipes import task_class_names

    task_class_names(task)  # raises the "unknown task" error
    raise AssertionError(task)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], ImageNet mean/std normalised (the synthetic
    targets' preprocessing; equal to ``Preprocessing.transform`` at the native size)."""
    import torch

    from bench.targets import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    x = x.div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[None, :, None, None]
    return ((x - mean) / std).contiguous()


@contextlib.contextmanager
def capture(model: torch.nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each named layer's latest output; always removed on exit."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise UsageError(
            f"Expected layers of the model, got unknown {missing}; "
            f"available: {[n for n in modules if n]}."
        )
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in dict.fromkeys(layers):

        def hook(_m: Any, _inp: Any, out: Any, name: str = name) -> None:
            store[name] = out

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_units(
    model: torch.nn.Module,
    images: np.ndarray,
    units: Sequence[PlantedUnit],
    *,
    batch_size: int = 250,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``model`` (eval mode) on uint8 images [N, H, W, 3].

    Returns logits float32 [N, K] and, per unit, its maps float32 [N, h, w].
    """
    import torch

    layers = [u.layer for u in units]
    logits: list[np.ndarray] = []
    maps: list[list[np.ndarray]] = [[] for _ in units]
    with torch.no_grad(), capture(model, layers) as store:
        for i in range(0, len(images), batch_size):
            out = model(to_input(images[i : i + batch_size]))
            logits.append(out.float().numpy())
            for k, u in enumerate(units):
                maps[k].append(store[u.layer][:, u.unit].float().numpy())
    return np.concatenate(logits), [np.concatenate(m) for m in maps]


def unit_selectivity(
    maps: np.ndarray, mask: np.ndarray, *, quantile: float = QUANTILE, top: int = TOP_IMAGES
) -> dict[str, float | None]:
    """NetDissect IoU and top-image precision of one unit.

    ``maps``: float32 [N, h, w]; ``mask``: bool [N, H, W] where the concept holds.
    """
    import torch
    import torch.nn.functional as F

    from metrics.classification import auroc

    n, height, width = mask.shape
    threshold = float(np.quantile(maps.astype(np.float64).ravel(), quantile))
    inter = union = above = 0
    for i in range(0, n, 200):
        up = F.interpolate(
            torch.from_numpy(maps[i : i + 200])[:, None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
        on = up > threshold
        m = mask[i : i + 200]
        inter += int(np.count_nonzero(on & m))
        union += int(np.count_nonzero(on | m))
        above += int(np.count_nonzero(on))
    covered = int(np.count_nonzero(mask))
    total = mask.size
    p, c = above / total, covered / total
    peaks = maps.reshape(n, -1).max(axis=1)
    order = np.argsort(-peaks, kind="stable")[:top]
    has = np.any(mask.reshape(n, -1), axis=1)
    pooled = np.maximum(maps, 0).reshape(n, -1).mean(axis=1, dtype=np.float64)
    return {
        "iou": inter / union if union else 0.0,
        "top15_fraction": float(has[order].mean()),
        "threshold": threshold,
        "active_fraction": p,
        "concept_coverage": c,
        "iou_ceiling": (min(p, c) / max(p, c)) if max(p, c) > 0 else 0.0,
        # undefined (None, JSON null) when every image or none shows the concept
        "pooled_auroc": auroc(pooled, has) if 0 < int(has.sum()) < n else None,
    }


def evaluate_model(
    model: torch.nn.Module, rec: Recipe, *, n_eval: int = 2000, seed: int = EVAL_SEED
) -> dict[str, Any]:
    """Accuracy on ``n_eval`` fresh images of world ``seed`` and every planted unit's
    selectivity on them (see the module docstring)."""
    if seed == rec.seed:
        raise UsageError(
            f"Expected an evaluation seed different from the training seed "
            f"{rec.seed} of {rec.name}, got {seed}; pick another --seed."
        )
    if n_eval < 1:
        raise UsageError(f"Expected n_eval >= 1, got {n_eval}.")
    model.eval()
    scenes = W.generate(n_eval, seed)
    images, labels, scene_labels = W.render_batch(scenes)
    y = task_labels(scenes, rec.task)
    logits, maps = forward_units(model, images, rec.planted)
    accuracy = float((logits.argmax(axis=1) == y).mean())
    lab = W.labels_dict(labels, scene_labels)
    units = []
    for u, m in zip(rec.planted, maps, strict=True):
        mask = C.formula_mask(u.formula, lab)
        scores = unit_selectivity(m, mask)
        units.append(
            {
                "layer": u.layer,
                "unit": u.unit,
                "concept": u.concept,
                **{k: None if v is None else round(v, 6) for k, v in scores.items()},
            }
        )
    return {
        "name": rec.name,
        "accuracy": round(accuracy, 6),
        "n_eval": n_eval,
        "seed": seed,
        "generator_version": W.GENERATOR_VERSION,
        "planted_units": units,
    }


def report(name: str, *, n_eval: int = 2000, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Accuracy of shipped target ``name`` on fresh images and the selectivity of each of its
    planted units (IoU at the top-0.5% threshold, top-15 image precision, IoU ceiling)."""
    from bench.synth.targets import load_synthetic_model, synthetic_target_spec

    rec = recipe(name)
    model, sha, _ = load_synthetic_model(synthetic_target_spec(name))
    out = evaluate_model(model, rec, n_eval=n_eval, seed=seed)
    out["weights_sha256"] = sha
    return out
