"""``cifar-auroc``: find a class's unit by its label, and use the unit as a classifier.

DnD's use case (anchors.md; the AUC code that exists is CLIP-Dissect's, methods.md 5.3): for
each CIFAR-10 and CIFAR-100 class, take the unit of one layer (ResNet-50 ``layer4``: the last
layer before the classifier) whose label is closest to the class name, and use the unit's mean
activation as a one-class classifier on the CIFAR validation images (the test split). Per class
and method:

* similarity of every label of the layer to the class name: the mean of CLIP ViT-B/16 text
  cosine and all-mpnet-base-v2 cosine (DnD's ensemble of the two encoders); with offline text
  models, the offline sentence encoder alone, and the result says so;
* the closest units, ties kept (a constant label ties every unit: the ``depictions`` baseline
  scores what picking a unit at random scores);
* each tied unit's spatial-mean activation on every image scores it as a class-vs-rest
  classifier: AUROC and AUPRC (average precision; Oikarinen et al. 2025 find AUPRC passes sanity
  checks AUROC fails), averaged over the tied units.

Means and intervals are over classes (one value per class), per dataset. Synthetic targets have
no CIFAR: the synthetic world's held-out concept classes (``bench.synth.probes``) stand in,
and the result says so. Activations come from a plain forward pass with a scoped hook, batched,
cached per (target, probe, layer).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError, UsageError
from bench.results import ClassMatch, ClassResult
from bench.schema import UnitRef
from bench.suites.base import (
    MetricValues,
    Suite,
    SuiteContext,
    SuiteScores,
    TargetInfo,
    UnitEntry,
)

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache
    from bench.probes.base import ProbeSet
    from bench.targets import Target

log = logging.getLogger(__name__)

CIFAR_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
HELDOUT = "heldout"
#: Cache stage of per-image spatial-mean activations.
POOLED_STAGE = "suite-pooled"
POOLED_VERSION = "1"
#: Labels whose similarity to the class name is within this of the best count as tied.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True, kw_only=True, slots=True)
class CifarAurocConfig:
    #: Layer whose units are candidates; ``None``: the last described layer before the final
    #: one (DnD: ResNet-50 ``layer4``).
    layer: str | None = None
    #: Real targets: which CIFAR sets (``cifar10``, ``cifar100``).
    datasets: tuple[str, ...] = CIFAR_DATASETS
    #: Directory holding (or receiving, with download) the CIFAR folders; ``None``: the cache's
    #: ``datasets/``.
    root: str | None = None
    #: CIFAR split used as the validation set.
    split: str = "test"
    #: Synthetic targets: images of the held-out classes.
    heldout_images: int = 1000

    def __post_init__(self) -> None:
        datasets = self.datasets
        if isinstance(datasets, str):
            datasets = tuple(d.strip() for d in datasets.split(",") if d.strip())
            object.__setattr__(self, "datasets", datasets)
        bad = [d for d in datasets if d not in CIFAR_DATASETS]
        if bad or not datasets:
            raise ValueError(f"Expected datasets among {CIFAR_DATASETS}, got {list(datasets)}")
        if self.heldout_images < 10:
            raise ValueError(f"Expected heldout_images >= 10, got {self.heldout_images}")


def default_layer(target: TargetInfo) -> str:
    """The last layer before the final one among the described layers (else the spec's)."""
    spec = target.require_spec("cifar-auroc")
    for layers in (target.layers, spec.layers):
        candidates = [layer for layer in layers if layer != spec.final_layer]
        if candidates:
            return candidates[-1]
    raise UsageError(
        f"Target '{spec.name}' has no layer before its final layer '{spec.final_layer}' to "
        "pick units from; pass cifar-auroc.layer=NAME."
    )


# --- classifiers ---------------------------------------------------------------------------------


def auroc_per_class(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` (float [N]) for each class column of ``positives`` (bool [N, C]);
    equal to :func:`metrics.classification.auroc` per class (mid-ranks: ties count 1/2).
    Classes with no positive or no negative get NaN."""
    import numpy as np

    from metrics.classification import midranks

    y = np.asarray(positives, dtype=np.float64)
    ranks = midranks(scores)
    n_pos = y.sum(axis=0)
    n_neg = y.shape[0] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        u = ranks @ y - n_pos * (n_pos + 1.0) / 2.0
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auprc_per_class(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Average precision of ``scores`` for each class column of ``positives``, thresholds at the
    distinct score values (tied items enter together), as
    :func:`metrics.classification.average_precision`. Classes without positives get NaN."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    y = np.asarray(positives, dtype=np.float64)[order]
    tp = np.cumsum(y, axis=0)
    fp = np.arange(1, s.size + 1, dtype=np.float64)[:, None] - tp
    last = np.concatenate((np.flatnonzero(np.diff(sorted_s)), [s.size - 1]))
    tp_t, fp_t = tp[last], fp[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp_t / (tp_t + fp_t)
        recall = tp_t / tp[-1]
        before = np.vstack([np.zeros((1, y.shape[1])), recall[:-1]])
        ap = np.sum((recall - before) * precision, axis=0)
    return np.where(tp[-1] > 0, ap, np.nan)


# --- activations ---------------------------------------------------------------------------------


def pooled_means(
    target: Target,
    probe: ProbeSet,
    layer: str,
    *,
    cache: Cache,
    device: str,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """float32 ``[N, U]``: each unit's spatial-mean activation on every probe image (cached)."""
    import numpy as np
    import torch

    parts = {
        "version": POOLED_VERSION,
        "target": target.identity(),
        "probe": probe.identity(),
        "fixed_geometry": bool(probe.fixed_geometry),
        "layer": layer,
        "pool": "spatial mean",
        "device": torch.device(device).type,
    }

    def write(directory: Path) -> None:
        arr = _forward_means(target, probe, layer, device, batch_size, progress)
        np.save(directory / "pooled.npy", arr, allow_pickle=False)

    path, _ = cache.get_or_create(POOLED_STAGE, parts, write)
    return np.load(path / "pooled.npy", allow_pickle=False)


def _forward_means(
    target: Target, probe: ProbeSet, layer: str, device: str, batch_size: int, progress: bool
) -> np.ndarray:
    import numpy as np
    import torch

    from bench.progress import progress_bar
    from bench.record import ProbeImages, hooks

    n = len(probe)
    if n == 0:
        raise DataError(f"Probe set '{probe.name}' has no images; expected at least one.")
    loader: Any = torch.utils.data.DataLoader(
        ProbeImages(probe, target.preprocessing),  # type: ignore[arg-type]  # map-style
        batch_size=batch_size,
        shuffle=False,
    )
    model = target.model.to(device).eval()
    out: np.ndarray | None = None
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str, output: Any) -> None:
        seen["acts"] = target.spatialize(name, output).float().mean(dim=(2, 3)).cpu()

    with (
        torch.inference_mode(),
        hooks(model, [layer], grab),
        progress_bar(total=n, desc=f"activations {layer}", enabled=progress, unit="img") as bar,
    ):
        for images, index in loader:
            seen.clear()
            model(images.to(device))
            if "acts" not in seen:
                raise UsageError(f"Layer '{layer}' of '{target.name}' did not run.")
            acts = seen["acts"].numpy()
            if out is None:
                out = np.empty((n, acts.shape[1]), dtype=np.float32)
            out[index.numpy()] = acts
            bar.update(len(index))
    assert out is not None
    if not np.all(np.isfinite(out)):
        from bench.errors import NonFiniteError

        raise NonFiniteError(f"Layer '{layer}' of '{target.name}' gave NaN or infinite values.")
    return out


class _PerUnitScores:
    """AUROC and AUPRC of one unit for every class, computed once per unit when first asked."""

    def __init__(self, acts: np.ndarray, positives: np.ndarray):
        self.acts = acts
        self.positives = positives
        self.done: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, unit: int) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        if unit not in self.done:
            col = self.acts[:, unit].astype(np.float64)
            self.done[unit] = (
                auroc_per_class(col, self.positives),
                auprc_per_class(col, self.positives),
            )
        return self.done[unit]


# --- the suite -----------------------------------------------------------------------------------


class CifarAurocSuite(Suite[CifarAurocConfig]):
    """Per class, the unit whose label is closest to the class name, as a classifier."""

    name = "cifar-auroc"
    version = "1"
    text_models = ("clip", "sentence")
    summary = "the unit whose label is closest to a class name, as a classifier (AUROC, AUPRC)"

    def applicable(self, target: TargetInfo) -> str | None:
        if target.spec is None:
            return "it is not a registered target, so it cannot be run on images"
        return None

    def _probes(self, ctx: SuiteContext) -> list[tuple[str, ProbeSet]]:
        if ctx.target.synthetic:
            from bench.synth.probes import SyntheticHeldoutProbe

            return [(HELDOUT, SyntheticHeldoutProbe(n_images=self.config.heldout_images))]
        from bench.probes.cifar import CifarProbe

        root = self.config.root
        if root is None:
            root = str(ctx.cache.datasets_dir())
        return [
            (
                ds,
                CifarProbe(
                    root,
                    name=ds,
                    split=self.config.split,
                    download=ctx.options.download,
                    progress=ctx.options.progress,
                ),
            )
            for ds in self.config.datasets
        ]

    def _candidates(
        self, ctx: SuiteContext, layer: str, num_units: int
    ) -> dict[str, tuple[list[UnitRef], list[str]]]:
        """Method -> (its labelled units of ``layer``, their labels)."""
        out = {}
        for name, m in ctx.methods.items():
            units = (
                [UnitRef(layer=layer, index=i) for i in range(num_units)]
                if m.constant is not None
                else m.units(layer)
            )
            kept = [(u, t) for u in units if (t := m.label(u)) is not None]
            bad = [u for u, _ in kept if u.index >= num_units]
            if bad:
                raise DataError(
                    f"Suite 'cifar-auroc': method '{name}' labels unit {bad[0].index} of "
                    f"'{layer}', which has {num_units} units."
                )
            if kept:
                out[name] = ([u for u, _ in kept], [t for _, t in kept])
        return out

    def _similarity(
        self, ctx: SuiteContext, class_texts: Sequence[str], labels: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
        """Cosine matrices ``[classes, labels]`` by encoder, averaged later (the ensemble)."""
        import numpy as np

        from bench.suites.text import embed, encoder_for, identity

        kinds = ["sentence"] if ctx.options.offline else ["clip", "sentence"]
        texts = list(dict.fromkeys([*class_texts, *labels]))
        index = {t: i for i, t in enumerate(texts)}
        sims, encoders = {}, {}
        for kind in kinds:
            enc, _ = encoder_for(ctx.options, ctx.device, kind=kind)
            emb = embed(enc, texts, progress=ctx.options.progress)
            c = emb[[index[t] for t in class_texts]]
            lab = emb[[index[t] for t in labels]] if labels else emb[:0]
            sims[kind] = np.clip(c @ lab.T, -1.0, 1.0)
            encoders[kind] = identity(enc)
        notes = []
        if ctx.options.offline:
            notes.append(
                "label-to-class similarity from the offline sentence encoder alone, not DnD's "
                "ensemble of CLIP ViT-B/16 and all-mpnet-base-v2"
            )
        settings = {
            "similarity": "mean of the encoders' cosines of label and class name",
            "encoders": encoders,
        }
        return sims, settings, notes

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        import numpy as np

        cfg = self.config
        layer = cfg.layer or default_layer(ctx.target)
        spec = ctx.target.require_spec(self.name)
        if layer == spec.final_layer:
            log.warning("cifar-auroc on the final layer '%s': its units are classes.", layer)
        target = ctx.load_target()
        target.resolve_layers([layer])  # an unknown layer is an error listing close matches
        metrics: dict[str, MetricValues] = {}
        classes: list[ClassResult] = []
        order: list[Hashable] = []
        chosen: set[UnitRef] = set()
        datasets: dict[str, Any] = {}
        notes: list[str] = []
        sim_settings: dict[str, Any] = {}
        for ds, probe in self._probes(ctx):
            acts = pooled_means(
                target,
                probe,
                layer,
                cache=ctx.cache,
                device=ctx.device,
                batch_size=ctx.options.batch_size,
                progress=ctx.options.progress,
            )
            names = [str(n) for n in (probe.class_names or [])]
            if probe.labels is None or not names:
                raise DataError(f"Probe set '{probe.name}' has no class labels.")
            labels_arr = np.asarray(probe.labels)
            texts = [n.replace("_", " ") for n in names]
            positives = labels_arr[:, None] == np.arange(len(names))[None, :]
            candidates = self._candidates(ctx, layer, acts.shape[1])
            if not any(ctx.methods[m].constant is None for m in candidates):
                raise UsageError(
                    f"Suite 'cifar-auroc': no method labelled units of layer '{layer}'. Describe "
                    f"that layer (bench run --layers ...,{layer}) or pass cifar-auroc.layer=NAME."
                )
            all_labels = [t for _, labs in candidates.values() for t in labs]
            sims, sim_settings, sim_notes = self._similarity(ctx, texts, all_labels)
            notes.extend(sim_notes)
            ensemble = np.mean(np.stack(list(sims.values())), axis=0)
            auroc_name, auprc_name = f"auroc-{ds}", f"auprc-{ds}"
            for mname in (auroc_name, auprc_name):
                metrics[mname] = MetricValues(
                    name=mname,
                    settings={
                        "metric": mname.split("-")[0],
                        "dataset": ds,
                        "layer": layer,
                        "classifier": "the unit's spatial-mean activation on each image",
                        "ties": "averaged over the units tied for the closest label",
                    },
                    comparable_with_papers=not ctx.options.offline and ds != HELDOUT,
                    note="" if ds != HELDOUT else "synthetic held-out classes, not CIFAR",
                )
            unit_scores = _PerUnitScores(acts, positives)

            start = 0
            matches: dict[str, list[tuple[list[UnitRef], float]]] = {}
            for mname, (units, labs) in candidates.items():
                sim = ensemble[:, start : start + len(labs)]
                start += len(labs)
                matches[mname] = []
                for c in range(len(names)):
                    best = float(sim[c].max())
                    tied = [units[j] for j in np.flatnonzero(sim[c] >= best - TIE_TOLERANCE)]
                    matches[mname].append((tied, best))
            n_pos = positives.sum(axis=0)
            for c, cname in enumerate(names):
                if n_pos[c] == 0 or n_pos[c] == len(labels_arr):
                    continue
                item = (ds, cname)
                order.append(item)
                per_method = {}
                for mname, found in matches.items():
                    tied, best = found[c]
                    au = [unit_scores(u.index)[0][c] for u in tied]
                    ap = [unit_scores(u.index)[1][c] for u in tied]
                    a, p = float(np.mean(au)), float(np.mean(ap))
                    metrics[auroc_name].values.setdefault(mname, {})[item] = a
                    metrics[auprc_name].values.setdefault(mname, {})[item] = p
                    per_method[mname] = ClassMatch(
                        units=tuple(tied),
                        similarity=best,
                        scores={auroc_name: a, auprc_name: p},
                    )
                    if ctx.methods[mname].constant is None:
                        chosen.update(tied)
                classes.append(
                    ClassResult(
                        name=cname,
                        dataset=ds,
                        n=int(len(labels_arr)),
                        n_positive=int(n_pos[c]),
                        per_method=per_method,
                    )
                )
            datasets[ds] = {
                "probe": probe.identity(),
                "images": int(len(labels_arr)),
                "classes": len(names),
            }
            if ds == HELDOUT:
                notes.append("the synthetic held-out concept classes stand in for CIFAR-10/100")
        units = sorted(chosen, key=lambda u: u.index)
        settings = {
            "layer": layer,
            "datasets": datasets,
            **sim_settings,
            "activation": "spatial mean of the unit's map per image",
        }
        return SuiteScores(
            units=[UnitEntry(unit=u) for u in units],
            metrics=list(metrics.values()),
            order=order,
            layer_of={},
            classes=classes,
            settings=settings,
            offline_notes=notes,
        )
