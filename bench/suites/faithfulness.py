"""``faithfulness``: does a label predict what its unit does on the probe images?

NeuronEval's framing (Oikarinen et al. 2025; reference/evaluation.md): for every described unit,
its pooled activation over the probe images (``a_k``: spatial mean by default, CoSy's and
INVERT's pooling; ``pool=max`` by option) against the presence of its label's concept over the
same images (``c_t``, :mod:`bench.presence`: the label read into the probe's own concepts,
presence from the ground-truth segmentations; or, with ``presence=clip``, any text through a joint
image-text model, by a calibrated cosine threshold or a softmax over a concept set, said in the
result's settings). Per unit and method:

* ``auroc``: presence as the class, activation as the score (CoSy's and INVERT's direction);
* ``auprc``: average precision of the activation retrieving the concept's images;
* ``iou``, ``f1``: of the unit's top-``alpha`` images (default 0.5%, NetDissect's quantile)
  against the concept's images;
* ``pearson``: correlation of activation and presence;
* ``mad``: mean activation on the concept minus off it, over the off-concept standard deviation
  (CoSy's MAD with the probe's off-concept images as the control);
* ``parsed``: 1 when the label reads into the probe's concepts, 0 when it does not.

Each unit's details keep, per method, a histogram of the unit's activation on the images that
show the label's concept and on the others (:func:`activation_histograms`, presence above 0.5),
which the leaderboard's unit pages draw.

A label that does not read into concepts is **unparsed**: it gets ``parsed = 0`` and no other
score (never a zero presence scored as if it were a concept), and it is counted per method in
the result's settings. So the constant ``depictions`` baseline shows up as unparsed, not as a
score. A label whose concept is on no probe image (or on every one) has undefined scores; it is
counted as ``degenerate`` and left out. Means are over the units a method has a defined score
for; significance groups compare methods on the units all of them were scored on. Labels the
probe's reader reads with a context on the image ("red squares on grass": red square pixels of
images with grass, :mod:`bench.presence`) are counted as ``context_on_image``.

All units and labels of a layer are scored at once: presence is one matrix product over the
concept table's signatures, each metric one array operation over ``[units, images]``
(:mod:`metrics.faithfulness`). Activations come from the run's recorded evidence when it is
still in the cache (pooled maxima and means are an evidence kind), else from one forward pass
over the probe (cached).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, DataError, RequirementError, UsageError
from bench.schema import UnitRef
from bench.suites.base import (
    MetricValues,
    ScoreOptions,
    Suite,
    SuiteContext,
    SuiteScores,
    TargetInfo,
    UnitEntry,
)

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache
    from bench.presence import ClipPresence, SegmentationPresence
    from bench.probes.base import ProbeSet
    from bench.targets import Target

log = logging.getLogger(__name__)

POOLS: tuple[str, ...] = ("mean", "max")
#: Cache stage of per-image pooled activations of several layers (spatial mean and max).
POOLED_STAGE = "suite-pooled-layers"
POOLED_VERSION = "1"
#: The metrics, in display order: name -> (function name in metrics.faithfulness, takes alpha).
METRICS: dict[str, tuple[str, bool]] = {
    "auroc": ("auroc", False),
    "auprc": ("auprc", False),
    "iou": ("iou", True),
    "f1": ("f1", True),
    "pearson": ("pearson", False),
    "mad": ("mad", False),
}
_DEFINITIONS = {
    "auroc": "AUROC, the label's concept presence as the class and the unit's activation as the "
    "score (CoSy, INVERT direction); ties 1/2",
    "auprc": "average precision of the activation retrieving the concept's images",
    "iou": "IoU of the unit's top-alpha images and the concept's images",
    "f1": "F1 of the unit's top-alpha images against the concept's images",
    "pearson": "Pearson correlation of activation and presence",
    "mad": "(mean activation on concept - mean off concept) / std off concept",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class FaithfulnessConfig:
    #: Top fraction of images where a unit counts as "on" (IoU, F1): NeuronEval's and
    #: NetDissect's 0.5%.
    alpha: float = 0.005
    #: Pooling of a unit's map per image: ``mean`` (CoSy, INVERT) or ``max``.
    pool: str = "mean"
    #: Where presence comes from: ``segmentation`` (the label read into the probe's concepts,
    #: presence from its ground-truth masks) or ``clip`` (any text, through a joint image-text
    #: model; :class:`bench.presence.ClipPresence`).
    presence: str = "segmentation"
    #: CLIP presence: ``threshold`` on the cosine (default; calibrated on the probe's
    #: segmentations unless given) or ``softmax`` over a concept set. Softmax presence rarely
    #: exceeds 0.5 for one of several concepts on an image (on the synthetic world most planted
    #: single concepts were never "on": undefined AUROC), so the threshold is the default.
    clip_mode: str = "threshold"
    #: CLIP presence by threshold: the cosine; ``None``: calibrated on the probe's segmentations.
    clip_threshold: float | None = None
    #: CLIP presence by softmax: the logit scale (CLIP's 100).
    clip_logit_scale: float = 100.0
    #: The concept set (a file with one concept per line); ``None``: the probe's concepts.
    clip_concepts: str | None = None
    #: ``image_text_encoder`` backend; ``None``: ``synthetic`` (the synthetic world's recogniser,
    #: offline) for synthetic targets, ``open-clip`` otherwise.
    clip_backend: str | None = None
    #: open_clip model and pretrained tag (``None``: the component's ViT-B-16 / openai).
    clip_model: str | None = None
    clip_pretrained: str | None = None
    #: An image shows a concept when more than this share of its pixels does (0: any pixel).
    min_fraction: float = 0.0
    #: Probe set; ``None``: the run's probe (labels scored without a run on a synthetic target:
    #: ``synthetic``).
    probe: str | None = None
    probe_root: str | None = None
    #: Images of the synthetic probe (its ``n_images`` option) when this suite loads it itself.
    n_images: int | None = None
    #: Layers to score; empty: every described layer.
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"Expected 0 < alpha <= 1, got {self.alpha}")
        if self.pool not in POOLS:
            raise ValueError(f"Expected pool in {POOLS}, got {self.pool!r}")
        from bench.presence import CLIP_MODES, PRESENCE_MODES

        if self.presence not in PRESENCE_MODES:
            raise ValueError(f"Expected presence in {PRESENCE_MODES}, got {self.presence!r}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"Expected clip_mode in {CLIP_MODES}, got {self.clip_mode!r}")
        if not self.clip_logit_scale > 0:
            raise ValueError(f"Expected clip_logit_scale > 0, got {self.clip_logit_scale}")
        if self.clip_threshold is not None and not -1.0 <= self.clip_threshold <= 1.0:
            raise ValueError(f"Expected clip_threshold in [-1, 1], got {self.clip_threshold}")
        if not 0.0 <= self.min_fraction < 1.0:
            raise ValueError(f"Expected 0 <= min_fraction < 1, got {self.min_fraction}")
        if self.n_images is not None and self.n_images < 10:
            raise ValueError(f"Expected n_images >= 10, got {self.n_images}")
        layers = self.layers
        if isinstance(layers, str):
            object.__setattr__(self, "layers", tuple(x for x in layers.split(",") if x))


# --- activations ---------------------------------------------------------------------------------


def pooled_activations(
    target: Target,
    probe: ProbeSet,
    layers: Sequence[str],
    *,
    cache: Cache,
    device: str,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """layer -> pool (``mean``, ``max``) -> float32 ``[N, U]``, one forward pass, cached."""
    import numpy as np
    import torch

    parts = {
        "version": POOLED_VERSION,
        "target": target.identity(),
        "probe": probe.identity(),
        "fixed_geometry": bool(probe.fixed_geometry),
        "layers": list(layers),
        "device": torch.device(device).type,
    }

    def write(directory: Path) -> None:
        out = _forward_pooled(target, probe, list(layers), device, batch_size, progress)
        for i, layer in enumerate(layers):
            for pool in POOLS:
                np.save(directory / f"{i}.{pool}.npy", out[layer][pool], allow_pickle=False)

    path, _ = cache.get_or_create(POOLED_STAGE, parts, write)
    return {
        layer: {pool: np.load(path / f"{i}.{pool}.npy", allow_pickle=False) for pool in POOLS}
        for i, layer in enumerate(layers)
    }


def _forward_pooled(
    target: Target,
    probe: ProbeSet,
    layers: list[str],
    device: str,
    batch_size: int,
    progress: bool,
) -> dict[str, dict[str, np.ndarray]]:
    import numpy as np
    import torch

    from bench.progress import progress_bar
    from bench.record import ProbeImages, hooks

    n = len(probe)
    if n == 0:
        raise DataError(f"Probe set '{probe.name}' has no images; expected at least one.")
    loader: Any = torch.utils.data.DataLoader(
        ProbeImages(probe, target.preprocessing),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
    )
    model = target.model.to(device).eval()
    out: dict[str, dict[str, np.ndarray]] = {}
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str, output: Any) -> None:
        seen[name] = target.spatialize(name, output).float().flatten(2).cpu()

    with (
        torch.inference_mode(),
        hooks(model, layers, grab),
        progress_bar(total=n, desc="activations", enabled=progress, unit="img") as bar,
    ):
        for images, index in loader:
            seen.clear()
            model(images.to(device))
            rows = index.numpy()
            for layer in layers:
                if layer not in seen:
                    raise UsageError(f"Layer '{layer}' of '{target.name}' did not run.")
                acts = seen[layer]
                if layer not in out:
                    u = acts.shape[1]
                    out[layer] = {p: np.empty((n, u), dtype=np.float32) for p in POOLS}
                out[layer]["mean"][rows] = acts.mean(dim=2).numpy()
                out[layer]["max"][rows] = acts.amax(dim=2).numpy()
            bar.update(len(rows))
    for layer, pools in out.items():
        if not all(np.all(np.isfinite(a)) for a in pools.values()):
            from bench.errors import NonFiniteError

            raise NonFiniteError(f"Layer '{layer}' of '{target.name}' gave NaN or infinite values.")
    return out


def _recorded_pooled(
    ctx: SuiteContext, layers: Sequence[str], pool: str
) -> dict[str, np.ndarray] | None:
    """The run's recorded pooled activations (``[N, U]`` per layer) when its evidence is still
    in the cache, else ``None``."""
    from bench.record import cached_run_evidence

    config = ctx.run.config or {}
    run_layers = list(config.get("layers") or [])
    if not run_layers or not set(layers) <= set(run_layers) or not config.get("probe"):
        return None
    try:
        target = ctx.load_target()
        probe = _load_probe(ctx, config["probe"], ctx.probe_root, None)
        evidence = cached_run_evidence(ctx.cache, target, probe, run_layers, config)
        if evidence is None:
            return None
    except (BenchError, KeyError, TypeError, ValueError) as e:
        log.info("faithfulness: the run's recorded evidence is not usable (%s)", e)
        return None
    if not set(layers) <= set(evidence.layers) or not all(
        evidence.layers[layer].whole for layer in layers
    ):  # a --units run recorded only some units (its columns are not unit indices)
        return None
    return {
        layer: (ev.pooled_mean if pool == "mean" else ev.pooled_max)
        for layer, ev in evidence.layers.items()
        if layer in layers
    }


def _load_probe(ctx: SuiteContext, name: str, root: str | None, n_images: int | None) -> ProbeSet:
    from bench.probes import load_probe

    options = dict((ctx.run.config or {}).get("probe_options") or {})
    if name != (ctx.run.config or {}).get("probe"):
        options = {}
    if n_images is not None:
        options["n_images"] = n_images
    return load_probe(name, root, options=options, cache=ctx.cache)


# --- distributions for the unit pages ------------------------------------------------------------

#: Bins of each unit's activation histogram (concept against non-concept images).
HISTOGRAM_BINS = 16


def activation_histograms(
    acts: np.ndarray, on: np.ndarray, bins: int = HISTOGRAM_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit, a histogram of its activations on the concept's images and on the others.

    ``acts``: ``[M, N]`` activations; ``on``: ``[M, N]`` booleans (the concept on the image).
    Returns ``(edges [M, bins + 1], concept [M, bins], other [M, bins])``: equal-width bins over
    each unit's own range (the last bin closed), counts as int64. One ``bincount`` for all units.
    """
    import numpy as np

    a = np.asarray(acts, dtype=np.float64)
    o = np.asarray(on, dtype=bool)
    if a.shape != o.shape or a.ndim != 2:
        raise DataError(
            f"Expected activations and presence of the same shape [units, images], got "
            f"{a.shape} and {o.shape}."
        )
    m = a.shape[0]
    lo = a.min(axis=1, initial=np.inf) if a.size else np.zeros(m)
    hi = a.max(axis=1, initial=-np.inf) if a.size else np.zeros(m)
    width = np.where(hi > lo, hi - lo, 1.0)
    edges = lo[:, None] + width[:, None] * np.linspace(0.0, 1.0, bins + 1)[None, :]
    idx = np.clip(((a - lo[:, None]) / width[:, None] * bins).astype(np.int64), 0, bins - 1)
    flat = (np.arange(m)[:, None] * 2 + o.astype(np.int64)) * bins + idx
    counts = np.bincount(flat.ravel(), minlength=m * 2 * bins).reshape(m, 2, bins)
    return edges, counts[:, 1], counts[:, 0]


# --- the suite -----------------------------------------------------------------------------------


class FaithfulnessSuite(Suite[FaithfulnessConfig]):
    """Each unit's activation over the probe against its label's concept presence."""

    name = "faithfulness"
    #: 2: a label reader's context ("red squares on grass") holds on the image, not per pixel.
    version = "2"
    summary = "does the label predict the unit's activations (AUROC, AUPRC, IoU, F1, r, MAD)"

    def applicable(self, target: TargetInfo) -> str | None:
        if target.spec is None:
            return "it is not a registered target, so it cannot be run on images"
        return None

    def _probe(self, ctx: SuiteContext) -> tuple[ProbeSet, bool]:
        """The probe, and whether it is the run's own (so its recorded evidence may serve)."""
        cfg = self.config
        run_probe = (ctx.run.config or {}).get("probe") or ctx.run.probe
        name = cfg.probe or run_probe
        if name is None:
            if not ctx.target.synthetic:
                raise UsageError(
                    "Suite 'faithfulness' needs a probe set with segmentations; these labels "
                    "come without a run, so pass faithfulness.probe=NAME (e.g. broden)."
                )
            name = "synthetic"
        own = name == run_probe and cfg.n_images is None and cfg.probe_root is None
        root = cfg.probe_root if cfg.probe_root is not None else None
        if own:
            root = ctx.probe_root
        probe = _load_probe(ctx, name, root, cfg.n_images)
        clip_without_masks = cfg.presence == "clip" and (
            cfg.clip_concepts is not None
            if cfg.clip_mode == "softmax"
            else cfg.clip_threshold is not None
        )
        if not probe.has_segmentations and not clip_without_masks:
            if cfg.presence == "clip":
                raise UsageError(
                    f"Suite 'faithfulness': probe set '{probe.name}' has no segmentations to "
                    "take CLIP presence's concept set from or to calibrate its threshold on. "
                    "Pass faithfulness.clip_threshold=COSINE, or faithfulness.clip_mode=softmax "
                    "with faithfulness.clip_concepts=FILE (one concept per line)."
                )
            raise UsageError(
                f"Suite 'faithfulness' reads labels into a probe's concepts and needs "
                f"segmentations; probe set '{probe.name}' has none. Use a Broden-format probe "
                "(faithfulness.probe=broden or synthetic), or CLIP presence "
                "(faithfulness.presence=clip)."
            )
        return probe, own

    def check(self, target: TargetInfo, run: Mapping[str, Any], options: ScoreOptions) -> None:
        """CLIP presence: the image-text encoder is available (weights here or downloadable);
        nothing is loaded."""
        from bench.components import ComponentError
        from bench.components.base import check_available
        from bench.environment import resolve_device

        super().check(target, run, options)
        if self.config.presence != "clip":
            return
        encoder, backend = self._encoder(target.synthetic, resolve_device(options.device))
        try:
            check_available(encoder)
        except ComponentError as e:
            raise RequirementError(
                f"CLIP presence (faithfulness.presence=clip) embeds with the image_text_encoder "
                f"backend '{backend}'. {e} For this suite the options are "
                "--suite-option faithfulness.clip_pretrained=PATH and "
                "faithfulness.clip_model=local-dir:DIR (faithfulness.clip_backend=NAME for "
                "another backend)."
            ) from e

    def _encoder(self, synthetic: bool, device: str) -> tuple[Any, str]:
        """The image-text encoder of CLIP presence (built, not loaded) and its backend name."""
        from bench.components import build_component

        cfg = self.config
        backend = cfg.clip_backend or ("synthetic" if synthetic else "open-clip")
        options: dict[str, Any] = {}
        if cfg.clip_model is not None:
            options["model"] = cfg.clip_model
        if cfg.clip_pretrained is not None:
            options["pretrained"] = cfg.clip_pretrained
        return build_component("image_text_encoder", backend, options, device=device), backend

    def _clip(
        self, ctx: SuiteContext, probe: ProbeSet, source: SegmentationPresence | None
    ) -> ClipPresence:
        """CLIP presence: the image-text encoder, the concept set and (to calibrate a threshold)
        the concepts' ground truth."""
        from bench.formula import Leaf
        from bench.presence import ClipPresence

        cfg = self.config
        encoder, _ = self._encoder(ctx.target.synthetic, ctx.device)
        truth = None
        if cfg.clip_concepts is not None:
            from bench.suites.final_layer import parse_class_lines

            concepts = list(parse_class_lines(Path(cfg.clip_concepts).expanduser()))
        elif source is not None:
            concepts = list(source.names.clean)
        else:
            concepts = []
        if source is not None and cfg.clip_mode == "threshold" and cfg.clip_threshold is None:
            known = [c for c in concepts if source.names.get(c) is not None]
            if not known:
                raise UsageError(
                    "Suite 'faithfulness': cannot calibrate the CLIP threshold: none of the "
                    "concept set's names is a concept of the probe. Pass "
                    "faithfulness.clip_threshold=COSINE."
                )
            concepts = known
            truth = source.presence([Leaf(source.names.get(c) or c) for c in concepts])
        return ClipPresence(
            encoder,
            probe,
            concepts=concepts,
            mode=cfg.clip_mode,
            scale=cfg.clip_logit_scale,
            threshold=cfg.clip_threshold,
            truth=truth,
            cache=ctx.cache,
            batch_size=ctx.options.batch_size,
            progress=ctx.options.progress,
        )

    def _activations(
        self, ctx: SuiteContext, probe: ProbeSet, own: bool, layers: list[str]
    ) -> tuple[dict[str, np.ndarray], str]:
        if own:
            found = _recorded_pooled(ctx, layers, self.config.pool)
            if found is not None:
                return found, "the run's recorded evidence"
        target = ctx.load_target()
        target.resolve_layers(layers)
        acts = pooled_activations(
            target,
            probe,
            layers,
            cache=ctx.cache,
            device=ctx.device,
            batch_size=ctx.options.batch_size,
            progress=ctx.options.progress,
        )
        return {la: acts[la][self.config.pool] for la in layers}, "a forward pass over the probe"

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        import numpy as np

        from bench.dissect import concept_table_cached
        from bench.presence import (
            LabelPresence,
            SegmentationPresence,
            label_reader,
            segmentation_presence,
        )

        cfg = self.config
        units = ctx.described_units(cfg.layers or None)
        if not units:
            raise UsageError(
                "Suite 'faithfulness': no method described a unit"
                + (f" of layers {', '.join(cfg.layers)}" if cfg.layers else "")
                + "."
            )
        layers = list(dict.fromkeys(u.layer for u in units))
        probe, own = self._probe(ctx)
        source = (
            SegmentationPresence(
                concept_table_cached(ctx.cache, probe, progress=ctx.options.progress),
                min_fraction=cfg.min_fraction,
            )
            if probe.has_segmentations
            else None
        )
        reader = label_reader(probe.name)
        clip = self._clip(ctx, probe, source) if cfg.presence == "clip" else None
        num_images = clip.num_images if clip is not None else source.num_images  # type: ignore[union-attr]

        def presence_of(labels: list[str], extras: list[Any]) -> LabelPresence:
            if clip is not None:
                return clip.presence(labels)
            assert source is not None
            return segmentation_presence(labels, source, extras=extras, reader=reader)

        acts_by_layer, acts_from = self._activations(ctx, probe, own, layers)
        metrics = {
            name: MetricValues(
                name=name,
                settings={
                    "metric": name,
                    "definition": _DEFINITIONS[name],
                    **({"alpha": cfg.alpha} if takes_alpha else {}),
                    "pool": cfg.pool,
                    "presence": cfg.presence,
                },
                comparable_with_papers=False,
                note=(
                    f"presence from {clip.settings()['encoder'].get('name')} ({cfg.clip_mode})"
                    if clip is not None
                    else "presence from the probe's ground-truth segmentations"
                ),
            )
            for name, (_, takes_alpha) in METRICS.items()
        }
        parsed_mv = MetricValues(
            name="parsed",
            value_type="binary",
            comparable_with_papers=False,
            note="share of labels that read into the probe's concepts (unparsed labels get no "
            "other score)",
            settings={"metric": "parsed"},
        )
        counts: dict[str, dict[str, int]] = {}
        details: dict[UnitRef, dict[str, Any]] = {u: {"labels": {}} for u in units}
        import metrics.faithfulness as mf

        for layer in layers:
            acts = np.asarray(acts_by_layer[layer], dtype=np.float64)  # [N, U]
            if acts.shape[0] != num_images:
                raise DataError(
                    f"Expected activations for {num_images} probe images, got "
                    f"{acts.shape[0]} for layer '{layer}'."
                )
            layer_units = [u for u in units if u.layer == layer]
            bad = [u for u in layer_units if u.index >= acts.shape[1]]
            if bad:
                raise DataError(
                    f"Suite 'faithfulness': unit {bad[0].index} of '{layer}' is described, but "
                    f"the layer has {acts.shape[1]} units."
                )
            for mname, m in ctx.methods.items():
                c = counts.setdefault(
                    mname, {"units": 0, "unparsed": 0, "degenerate": 0, "context_on_image": 0}
                )
                scored = [(u, d) for u in layer_units if (d := m.get(u)) is not None and d.ok]
                if not scored:
                    continue
                pres = presence_of([d.label for _, d in scored], [d.extras for _, d in scored])
                ok = np.array([r.parsed for r in pres.readings], dtype=bool)
                c["units"] += len(scored)
                c["unparsed"] += int((~ok).sum())
                c["context_on_image"] += sum(bool(r.image_leaves) for r in pres.readings)
                idx = np.array([u.index for u, _ in scored], dtype=np.int64)
                a = acts[:, idx[ok]].T  # [M, N]
                p = pres.presence[ok]
                values: dict[str, np.ndarray] = {}
                if ok.any():
                    for name, (fn_name, takes_alpha) in METRICS.items():
                        fn = getattr(mf, fn_name)
                        values[name] = fn(a, p, cfg.alpha) if takes_alpha else fn(a, p)
                kept = [u for (u, _), k in zip(scored, ok, strict=True) if k]
                n_on = p.sum(axis=1) if ok.any() else np.zeros(0)
                hist = activation_histograms(a, p > 0.5) if ok.any() else None
                for j, u in enumerate(kept):
                    if not np.isfinite(values["auroc"][j]):
                        c["degenerate"] += 1
                    for name, v in values.items():
                        if np.isfinite(v[j]):
                            metrics[name].values.setdefault(mname, {})[u] = float(v[j])
                for (u, _), r, k in zip(scored, pres.readings, ok, strict=True):
                    parsed_mv.values.setdefault(mname, {})[u] = 1.0 if k else 0.0
                    details[u]["labels"][mname] = (
                        {"formula": str(r.formula), "read_as": r.source}
                        if k and r.formula is not None
                        else {"read_as": r.source}
                        if k
                        else {"unparsed": r.reason}
                    )
                    if k and r.image_leaves:
                        details[u]["labels"][mname]["on_the_image"] = list(r.image_leaves)
                for j, u in enumerate(kept):
                    entry = details[u]["labels"][mname]
                    entry["images_with_concept"] = int(n_on[j])
                    if hist is not None:
                        edges, on_counts, off_counts = hist
                        entry["distribution"] = {
                            "edges": [float(x) for x in edges[j]],
                            "concept": [int(x) for x in on_counts[j]],
                            "other": [int(x) for x in off_counts[j]],
                        }
        entries = [UnitEntry(unit=u, details=details[u]) for u in units]
        settings = {
            "probe": probe.identity(),
            "images": num_images,
            "alpha": cfg.alpha,
            "pool": cfg.pool,
            "presence": clip.settings()
            if clip is not None
            else {
                "mode": cfg.presence,
                "min_fraction": cfg.min_fraction,
                "rule": "formula evaluated per pixel on the ground-truth masks (image-level "
                "labels as whole-image masks); an image shows the concept when more than "
                "min_fraction of its pixels do; a formula of image-level labels (INVERT's, "
                "formula_level=image) is evaluated per image on the same rule per concept; a "
                "context the label reader marks as holding on the image ('red squares on "
                "grass', leaves 'image:grass') is on an image by the same rule and holds on "
                "all of that image's pixels",
                "label_reader": probe.name if reader is not None else None,
            },
            "activations_from": acts_from,
            "labels": counts,
        }
        return SuiteScores(
            units=entries,
            metrics=[*metrics.values(), parsed_mv],
            settings=settings,
        )
