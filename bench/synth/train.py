"""Train the synthetic targets and write their weights and cards (``bench synth train``).

``train_target("synth.resnet")`` reproduces ``bench/data/synth/synth.resnet.safetensors`` and its
card ``synth.resnet.json``: the same seed, torch version, thread count and CPU kind give
identical weights (deterministic algorithms, seeded data order and flips, one intra-op thread
by default). Training follows the recipe (:mod:`bench.synth.recipes`): cross-entropy on the task
plus an auxiliary loss that plants the chosen concepts in the chosen channels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import UsageError
from bench.synth import concepts as C
from bench.synth import world as W
from bench.synth.recipes import EVAL_SEED, RECIPES, Recipe, TrainConfig, recipe

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CARD_VERSION = 1


def data_dir() -> Path:
    """Where the package ships the synthetic targets: ``bench/data/synth``."""
    return Path(__file__).resolve().parent.parent / "data" / "synth"


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _map_sizes(model: torch.nn.Module, layers: list[str], size: int) -> dict[str, tuple[int, int]]:
    import torch

    from bench.synth.evaluate import capture

    was_training = model.training
    model.eval()
    with torch.no_grad(), capture(model, layers) as store:
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    return {n: (int(store[n].shape[-2]), int(store[n].shape[-1])) for n in layers}


@contextlib.contextmanager
def _preactivations(relus: dict[str, Any]) -> Iterator[dict[str, torch.Tensor]]:
    """Layer -> the latest input of its output ReLU (pre-activation), via forward pre-hooks."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for layer, relu in relus.items():

        def hook(_m: Any, args: tuple, layer: str = layer) -> None:
            store[layer] = args[0]

        handles.append(relu.register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _downsample(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [N, S, S] -> uint8 [N, h, w]: the covered fraction of each cell, times 255."""
    n, s, _ = mask.shape
    h, w = hw
    if s % h or s % w:
        raise UsageError(f"Expected map sizes that divide the image side {s}, got {hw}.")
    frac = mask.reshape(n, h, s // h, w, s // w).mean(axis=(2, 4))
    return np.rint(frac * 255).astype(np.uint8)


def _balanced_bce(
    logit: torch.Tensor, target: torch.Tensor, hard_weight: float = 0.0
) -> torch.Tensor:
    """BCE in which concept and non-concept mass weigh half each (concepts cover a few %).

    ``hard_weight`` adds the mean BCE of the hardest concept-free cells (the top 1% by logit):
    a unit is read at its top quantile, so those are the negatives that matter.
    """
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    pos = target.sum()
    neg = (1 - target).sum()
    loss = 0.5 * (bce * (1 - target)).sum() / neg.clamp_min(1e-6)
    loss = loss + 0.5 * (bce * target).sum() / pos.clamp_min(1e-6)
    if hard_weight:
        free = logit[target == 0]
        if free.numel():
            k = max(1, free.numel() // 100)
            hardest = free.topk(k).values
            loss = loss + hard_weight * F.softplus(hardest).mean()  # BCE towards 0
    return loss


def train_model(
    rec: Recipe,
    *,
    seed: int | None = None,
    config: TrainConfig | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> tuple[Any, dict]:
    """Train ``rec``'s model; returns ``(model in eval mode, training log)``.

    ``config`` overrides the recipe's training settings, ``max_steps`` stops early (tests).
    """
    import torch
    import torch.nn.functional as F

    from bench.synth.evaluate import task_labels, to_input
    from bench.synth.models import build_model, output_relu

    cfg = config or rec.train
    seed = rec.seed if seed is None else int(seed)
    if seed == EVAL_SEED:
        raise UsageError(f"Expected a training seed other than the evaluation seed {EVAL_SEED}.")
    with _torch_settings(cfg.threads):
        torch.manual_seed(seed)
        model = build_model(rec.arch, len(rec.class_names))
        layers = list(dict.fromkeys(u.layer for u in rec.planted))
        sizes = _map_sizes(model, layers, W.DEFAULT_SIZE)

        log.info("%s: rendering %d training images (world seed %d)", rec.name, cfg.n_train, seed)
        scenes = W.generate(cfg.n_train, seed)
        images, labels, scene_labels = W.render_batch(scenes)
        y = torch.from_numpy(task_labels(scenes, rec.task))
        lab = W.labels_dict(labels, scene_labels)
        targets = [
            torch.from_numpy(_downsample(C.formula_mask(u.formula, lab), sizes[u.layer]))
            for u in rec.planted
        ]
        del labels, lab
        x_all = to_input(images)
        del images

        model = model.to(memory_format=torch.channels_last)  # several times faster on CPU
        relus = {layer: output_relu(model, layer) for layer in layers}
        n_units = len(rec.planted)
        log_scale = torch.zeros(n_units, requires_grad=True)
        params = list(model.parameters())
        opt = torch.optim.AdamW(
            [{"params": params}, {"params": [log_scale], "weight_decay": 0.0}],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        steps_per_epoch = math.ceil(cfg.n_train / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        if max_steps is not None:
            total = min(total, max_steps)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15
        )
        gen = torch.Generator().manual_seed(seed)
        history = []
        step = 0
        model.train()
        with _preactivations(relus) as store:
            for epoch in range(cfg.epochs):
                order = torch.randperm(cfg.n_train, generator=gen)
                flips = torch.rand(cfg.n_train, generator=gen) < 0.5 if cfg.flip else None
                ce_sum = aux_sum = 0.0
                n_batches = 0
                for b in range(steps_per_epoch):
                    if step >= total:
                        break
                    idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    xb = x_all[idx]
                    tb = [t[idx].to(torch.float32).div_(255.0) for t in targets]
                    if flips is not None:
                        fb = flips[idx]
                        xb = torch.where(fb[:, None, None, None], xb.flip(-1), xb)
                        tb = [torch.where(fb[:, None, None], t.flip(-1), t) for t in tb]
                    xb = xb.contiguous(memory_format=torch.channels_last)
                    logits = model(xb)
                    ce = F.cross_entropy(logits, y[idx])
                    aux = logits.new_zeros(())
                    for k, u in enumerate(rec.planted):
                        pre = store[u.layer][:, u.unit]
                        logit = pre * log_scale[k].exp() + cfg.unit_bias
                        unit_loss = _balanced_bce(logit, tb[k], cfg.hard_weight)
                        if cfg.peak_weight:
                            # Peaks decide a unit's top images: an image without the concept
                            # must not peak high anywhere.
                            has = (tb[k].amax(dim=(1, 2)) > 0).to(logit.dtype)
                            unit_loss = unit_loss + cfg.peak_weight * _balanced_bce(
                                logit.amax(dim=(1, 2)), has
                            )
                        aux = aux + u.weight * unit_loss
                    loss = ce + cfg.aux_weight * aux
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    step += 1
                    ce_sum += float(ce.detach())
                    aux_sum += float(aux.detach())
                    n_batches += 1
                if n_batches:
                    history.append(
                        {
                            "epoch": epoch,
                            "ce": round(ce_sum / n_batches, 5),
                            "aux": round(aux_sum / n_batches, 5),
                        }
                    )
                    (log.info if progress else log.debug)(
                        "%s epoch %d: ce %.4f aux %.4f",
                        rec.name,
                        epoch,
                        ce_sum / n_batches,
                        aux_sum / n_batches,
                    )
                if step >= total:
                    break
        model = model.to(memory_format=torch.contiguous_format)
        model.eval()
    return model, {"steps": step, "history": history}


def state_dict_arrays(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict (what is saved)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files ship with the package
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train_target(
    name: str, *, seed: int | None = None, out_dir: Path | None = None, progress: bool = False
) -> Path:
    """Train synthetic target ``name`` and write ``<name>.safetensors`` and ``<name>.json``.

    Defaults: the recipe's seed, ``out_dir`` = ``bench/data/synth``. Returns the weights path.
    """
    import torch
    from safetensors.torch import save

    from bench.cache import sha256_bytes
    from bench.schema import dumps
    from bench.synth.evaluate import evaluate_model
    from bench.targets import Preprocessing

    rec = recipe(name)
    seed = rec.seed if seed is None else int(seed)
    out = Path(out_dir) if out_dir is not None else data_dir()
    model, train_log = train_model(rec, seed=seed, progress=progress)
    # No metadata: safetensors writes a metadata mapping in hash order, which would make the
    # bytes (and the card's sha256) differ between identical runs.
    data = save(state_dict_arrays(model))
    sha = sha256_bytes(data)
    evaluation = evaluate_model(model, rec)
    if progress:
        log.info(
            "%s: accuracy %.3f on %d fresh images",
            name,
            evaluation["accuracy"],
            evaluation["n_eval"],
        )
    prep = Preprocessing(input_size=W.DEFAULT_SIZE, resize=None)
    card = {
        "card_version": CARD_VERSION,
        "name": rec.name,
        "arch": rec.arch,
        "task": rec.task,
        "description": rec.description,
        "class_names": list(rec.class_names),
        "num_classes": len(rec.class_names),
        "input_size": W.DEFAULT_SIZE,
        "normalization": {"mean": list(prep.mean), "std": list(prep.std)},
        "preprocessing": prep.to_json(),
        "layers": list(rec.layers),
        "final_layer": rec.final_layer,
        "planted_units": [u.to_json() for u in rec.planted],
        "training": {
            **rec.train.to_json(),
            "steps": train_log["steps"],
            "unit_weights": {f"{u.layer}:{u.unit}": u.weight for u in rec.planted},
            "history": train_log["history"],
            "torch_version": torch.__version__,
            "generator_version": W.GENERATOR_VERSION,
        },
        "seed": seed,
        "command": f"bench synth train --target {rec.name} --seed {seed}",
        "accuracy": evaluation["accuracy"],
        "evaluation": evaluation,
        "weights": rec.weights_file,
        "weights_sha256": sha,
    }
    _atomic_write(out / rec.weights_file, data)
    _atomic_write(out / rec.card_file, (dumps(card, indent=2) + "\n").encode())
    log.info("wrote %s (sha256 %s)", out / rec.weights_file, sha[:12])
    return out / rec.weights_file


def train_all(
    names: Sequence[str] | None = None,
    *,
    seed: int | None = None,
    out_dir: Path | None = None,
    progress: bool = False,
) -> list[Path]:
    """Train synthetic targets ``names`` (default: all of :data:`~bench.synth.recipes.RECIPES`)."""
    todo = list(names) if names else list(RECIPES)
    for name in todo:
        recipe(name)  # fail on a misspelt name before training anything
    return [train_target(name, seed=seed, out_dir=out_dir, progress=progress) for name in todo]


def report(name: str, *, n_eval: int = 2000, seed: int = EVAL_SEED) -> dict[str, Any]:
    """See :func:`bench.synth.evaluate.report`."""
    from bench.synth.evaluate import report as _report

    return _report(name, n_eval=n_eval, seed=seed)


def report_all(
    names: Sequence[str] | None = None, *, n_eval: int = 2000, seed: int = EVAL_SEED
) -> dict[str, dict[str, Any]]:
    """``{name: report(name)}`` for ``names`` (default: every synthetic target)."""
    todo = list(names) if names else list(RECIPES)
    for name in todo:
        recipe(name)
    return {name: report(name, n_eval=n_eval, seed=seed) for name in todo}
