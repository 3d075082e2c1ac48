"""Train the synthetic targets and write their weights and cards (``bench synth train``).

``train_target("synth.resnet")`` reproduces ``bench/data/synth/synth.resnet.safetensors`` and its
card ``synth.resnet.json``: the same seed, torch version, thread count and CPU kind give
identical weights (deterministic algorithms, seeded data order and flips, one intra-op thread
by default). Training follows the recipe (:mod:`bench.synth.recipes`): cross-entropy on the task
plus an auxiliary loss that plants the chosen concepts in the chosen channels (a balanced BCE,
or, for units that must answer every instance alike such as OR units, a balanced regression:
:func:`unit_loss`).
"""

from __future__ import annotations

import contextlib
import logging
import math
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


def balance_groups(formula: C.FormulaTree, labels: dict[str, np.ndarray]) -> np.ndarray:
    """int [N, S, S]: the balance group of each pixel where ``formula`` holds, 0 elsewhere.

    A group is the (disjunct of an OR, object colour, shape, pattern) of the pixel: a planted
    unit's positive cells weigh equally per group, so it answers every disjunct and every kind
    of instance (a white square as much as a red one, a striped cross as much as a plain
    circle) alike, not mostly the easiest.
    """
    parts = list(formula[1:]) if formula[0] == "or" else [formula]
    within = np.zeros(labels["color"].shape, dtype=np.int32)
    n_within = 1
    for category in ("color", "object", "pattern"):
        first = C.number(C.values(category)[0])
        index = np.where(labels[category] > 0, labels[category] - first + 1, 0)
        within = within * (len(C.values(category)) + 1) + index
        n_within *= len(C.values(category)) + 1
    groups = np.zeros(labels["color"].shape, dtype=np.int32)
    for k in reversed(range(len(parts))):  # the first disjunct that holds wins
        m = C.formula_mask(parts[k], labels)
        groups[m] = k * n_within + within[m] + 1
    groups[~C.formula_mask(formula, labels)] = 0
    return groups


def _cell_groups(groups: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """int [N, S, S] pixel groups -> int32 [N, h, w]: the group covering most of each cell."""
    n, s, _ = groups.shape
    h, w = hw
    best = np.zeros((n, h, w), dtype=np.int32)
    best_count = np.zeros((n, h, w), dtype=np.int32)
    for g in np.unique(groups):
        if g == 0:
            continue
        count = (groups == g).reshape(n, h, s // h, w, s // w).sum(axis=(2, 4))
        more = count > best_count
        best[more] = g
        best_count[more] = count[more]
    return best


def _huber(x: torch.Tensor) -> torch.Tensor:
    """Squared error below 1, linear above: large early errors do not swamp the task's loss."""
    import torch

    a = x.abs()
    return torch.where(a < 1, 0.5 * x * x, a - 0.5)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n.clamp_min(1)


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


def unit_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    groups: torch.Tensor,
    *,
    margin: float,
    over_weight: float,
    hard_weight: float,
    peak_weight: float,
    uniform_weight: float = 0.0,
) -> torch.Tensor:
    """Auxiliary loss of one planted unit: regression of its map onto the concept's coverage.

    ``pred`` [B, h, w]: the unit's scaled pre-activation; ``target`` [B, h, w]: the fraction of
    each cell the concept covers (0..1); ``groups`` int64 [B, h, w]: each concept cell's balance
    group (:func:`balance_groups`), 0 on concept-free cells.

    Squared errors are Huber (:func:`_huber`).

    - concept cells: squared error to the coverage, so the unit answers every instance with the
      same strength (a fully covered cell 1, a half-covered one 0.5): a class-balanced BCE is
      content once a logit is large, which leaves one instance (or one disjunct) far above
      another, and a top-quantile threshold then reads only the strongest;
      the mean error of each balance group present in the batch weighs equally, and an
      overshoot weighs ``over_weight`` times an undershoot (a unit is read at its top quantile:
      where its concept covers more than that, the few cells that overshoot most would be all
      that is read, and those are the easiest instances, e.g. large round plain ones);
    - concept-free cells: squared hinge ``relu(pred + margin)^2``, so the rectified unit is 0
      there; the 1% highest of them weigh ``hard_weight`` more (a unit is read at its top
      quantile, so those are the negatives that matter);
    - ``peak_weight`` times the same loss on each image's spatial maximum (to the image's highest
      coverage, or below ``-margin`` without the concept), images with and without the concept
      weighing half each;
    - ``uniform_weight`` times, per kind of attribute (object colour, shape, pattern), the
      variance across its values of the mean of the top quarter of the unit's answers on fully
      covered cells: where a concept covers several times the unit's top quantile, which of its
      cells are read depends on the upper tail of each kind of instance, not its mean.
    """
    import torch
    import torch.nn.functional as F

    free = target == 0
    neg_err = _huber(F.relu(pred + margin))
    pos_err = _huber(pred - target)
    pos_err = torch.where(pred > target, over_weight * pos_err, pos_err)
    loss = 0.5 * _masked_mean(neg_err, free)
    pos = ~free
    if bool(pos.any()):
        ids = groups[pos]
        n_groups = int(ids.max()) + 1
        sums = torch.zeros(n_groups, dtype=pred.dtype).index_add(0, ids, pos_err[pos])
        counts = torch.bincount(ids, minlength=n_groups)
        present = counts > 0
        loss = loss + 0.5 * (sums[present] / counts[present]).mean()
    if hard_weight:
        free_pred = pred[free]
        if free_pred.numel():
            k = max(1, free_pred.numel() // 100)
            hardest = free_pred.topk(k).values
            loss = loss + hard_weight * _huber(F.relu(hardest + margin)).mean()
    if peak_weight:
        peak = pred.amax(dim=(1, 2))
        top = target.amax(dim=(1, 2))
        has = top > 0
        peak_loss = 0.5 * _masked_mean(_huber(F.relu(peak + margin)), ~has)
        peak_loss = peak_loss + 0.5 * _masked_mean(_huber(peak - top), has)
        loss = loss + peak_weight * peak_loss
    if uniform_weight:
        full = target >= 0.999
        if bool(full.any()):
            code = groups[full] - 1
            vals = pred[full]
            n_pattern, n_shape = len(C.PATTERNS) + 1, len(C.SHAPES) + 1
            n_color = len(C.COLORS) + 1
            attributes = (
                code % n_pattern,
                (code // n_pattern) % n_shape,
                (code // (n_pattern * n_shape)) % n_color,
            )
            spread = []
            for attr in attributes:
                tails = []
                for v in torch.unique(attr):
                    sel = vals[attr == v]
                    k = max(1, (sel.numel() + 3) // 4)
                    tails.append(sel.topk(k).values.mean())
                if len(tails) > 1:
                    spread.append(torch.stack(tails).var(unbiased=False))
            if spread:
                loss = loss + uniform_weight * torch.stack(spread).mean()
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
        group_maps = [
            torch.from_numpy(_cell_groups(balance_groups(u.formula, lab), sizes[u.layer]))
            if u.objective == "regression"
            else None
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
        param_groups: list[dict[str, Any]] = [
            {"params": params},
            {"params": [log_scale], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(
            param_groups,
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
                    fb = flips[idx] if flips is not None else None

                    def batch(t: torch.Tensor, idx: torch.Tensor = idx, fb: Any = fb) -> Any:
                        t = t[idx]
                        return t if fb is None else torch.where(fb[:, None, None], t.flip(-1), t)

                    tb = [batch(t).to(torch.float32).div_(255.0) for t in targets]
                    gb = [None if g is None else batch(g).long() for g in group_maps]
                    if fb is not None:
                        xb = torch.where(fb[:, None, None, None], xb.flip(-1), xb)
                    xb = xb.contiguous(memory_format=torch.channels_last)
                    logits = model(xb)
                    ce = F.cross_entropy(logits, y[idx])
                    aux = logits.new_zeros(())
                    for k, u in enumerate(rec.planted):
                        pre = store[u.layer][:, u.unit]
                        if u.objective == "regression":
                            groups = gb[k]
                            assert groups is not None  # group_maps has one per regression unit
                            loss_k = unit_loss(
                                pre * log_scale[k].exp(),
                                tb[k],
                                groups,
                                margin=cfg.margin,
                                over_weight=cfg.over_weight,
                                hard_weight=cfg.hard_weight,
                                peak_weight=cfg.peak_weight,
                                # Only a disjunction covers several times what is read.
                                uniform_weight=cfg.uniform_weight if u.formula[0] == "or" else 0.0,
                            )
                        else:
                            logit = pre * log_scale[k].exp() + cfg.unit_bias
                            loss_k = _balanced_bce(logit, tb[k], cfg.hard_weight)
                            if cfg.peak_weight:
                                # Peaks decide a unit's top images: an image without the
                                # concept must not peak high anywhere.
                                has = (tb[k].amax(dim=(1, 2)) > 0).to(logit.dtype)
                                loss_k = loss_k + cfg.peak_weight * _balanced_bce(
                                    logit.amax(dim=(1, 2)), has
                                )
                        aux = aux + u.weight * loss_k
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


def train_target(
    name: str, *, seed: int | None = None, out_dir: Path | None = None, progress: bool = False
) -> Path:
    """Train synthetic target ``name`` and write ``<name>.safetensors`` and ``<name>.json``.

    Defaults: the recipe's seed, ``out_dir`` = ``bench/data/synth``. Returns the weights path.
    """
    import torch
    from safetensors.torch import save

    from bench.cache import sha256_bytes
    from bench.schema import atomic_write, dumps
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
            "unit_objectives": {f"{u.layer}:{u.unit}": u.objective for u in rec.planted},
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
    atomic_write(out / rec.weights_file, data)
    atomic_write(out / rec.card_file, dumps(card, indent=2) + "\n")
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
