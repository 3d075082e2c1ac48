"""``generated``: does the unit fire on images generated from its label? (CoSy)

CoSy's protocol (Kopf et al. 2024; reference/evaluation.md): for unit ``k`` with label ``t``,
``A1`` = its activations on ``N`` images generated from the prompt "realistic photo of a close up
of ``t``" (``N = 50``; 10 by default on the synthetic world, whose renderer and forward passes
would otherwise dominate ``make run``: ``n_images`` sets it), ``A0`` = its activations on a
control set of natural images; per unit and method:

* ``auc``: ROC-AUC with ``A1`` as the positives and ``A0`` as the negatives, the activation as
  the score (the probability that a generated image beats a control one; ties 1/2);
* ``mad``: ``(mean(A1) - mean(A0)) / std(A0)`` (population standard deviation);
* ``p_value``: the two-sided Mann-Whitney p-value (normal approximation with tie and continuity
  corrections, scipy's ``method="asymptotic"``); lower is better. ``U1`` is in the unit details.

The control set here is the run's probe (CoSy's is the ImageNet validation set), and its
activations come from the run's recorded evidence (pooled means, or maxima with ``pool=max``)
when it is still in the cache, else from one cached forward pass over the probe. Activations are
pooled as CoSy does (spatial mean) by default.

Images come from the ``text_to_image`` component DnD uses, built the same way (the run's backend
and options; the synthetic world's phrase renderer for synthetic targets, Stable Diffusion for
real ones; ``sdxl=true`` for CoSy's SDXL base 1.0), through the same content-addressed cache
(stage ``component-t2i``, keyed by the component's identity, the prompt, ``N`` and the seed): an
image set drawn once serves DnD and this suite alike, whichever asked first. Every distinct
label is generated once per scoring (all methods and layers share it), prompts in batches.

All units of a layer are scored at once (:func:`metrics.faithfulness.mann_whitney` and
:func:`metrics.faithfulness.mad` over ``[units, images]``). The constant ``depictions`` label is
scored like any label: on the synthetic world its prompt names no concept, so its images are
random scenes and its AUC sits near chance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.components.base import ComponentError
from bench.errors import RequirementError, UsageError
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

    from bench.probes.base import ProbeSet

log = logging.getLogger(__name__)

#: CoSy's prompt; ``{}`` (or ``{label}``) is replaced by the label.
DEFAULT_PROMPT = "realistic photo of a close up of {}"
POOLS: tuple[str, ...] = ("mean", "max")
CACHE_MODES: tuple[str, ...] = ("auto", "always", "never")
#: CoSy's images per label, and the default for synthetic targets (see ``n_images``).
COSY_N_IMAGES = 50
SYNTHETIC_N_IMAGES = 10
#: Directory of the generated-image strips in a run directory (beside ``exemplars/``).
STRIPS_DIR = "generated"
#: Images generated (and run through the target) per batch, whole prompts at a time: bounds
#: the images held in memory (200 SDXL images are about 600 MB).
IMAGES_PER_BATCH = 200
#: Units per row block of the statistics: bounds the ``[units, control images]`` arrays.
ROWS_PER_BLOCK = 256
_DEFINITIONS = {
    "auc": "ROC-AUC of the unit's activations on images generated from the label (positives) "
    "against the control images (negatives); ties 1/2",
    "mad": "(mean activation on generated images - mean on control images) / std on control "
    "images (population std)",
    "p_value": "two-sided Mann-Whitney U test of generated against control activations (normal "
    "approximation, tie and continuity corrected)",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class GeneratedConfig:
    #: Images generated per label; ``None``: CoSy's 50, or :data:`SYNTHETIC_N_IMAGES` for the
    #: synthetic world (its renderer and forward passes would otherwise dominate ``make run``).
    n_images: int | None = None
    #: The prompt; ``{}`` or ``{label}`` stands for the label.
    prompt: str = DEFAULT_PROMPT
    #: ``text_to_image`` backend; ``None``: the run's (DnD's), else the default for the target.
    backend: str | None = None
    #: Stable Diffusion model (hub id or directory) instead of the backend's default.
    model: str | None = None
    #: CoSy's generator: SDXL base 1.0 (the SDXL pipeline with its own scheduler and guidance
    #: 5.0); needs the ``stable-diffusion`` backend.
    sdxl: bool = False
    #: Seed of the generated images; ``None``: the run's seed (what DnD uses).
    seed: int | None = None
    #: Cache generated images: "auto" (unless the backend says it is cheap, as DnD), "always",
    #: "never".
    component_cache: str = "auto"
    #: Pooling of a unit's map per image: ``mean`` (CoSy) or ``max``.
    pool: str = "mean"
    #: Control images: a probe set; ``None``: the run's probe (``synthetic`` for labels of a
    #: synthetic target scored without a run).
    probe: str | None = None
    probe_root: str | None = None
    #: Images of the synthetic probe when this suite loads it itself.
    control_images: int | None = None
    #: Generated images shown per unit and method on the leaderboard (0: no strips).
    strip_images: int = 4
    #: Layers to score; empty: every described layer.
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_images is not None and self.n_images < 2:
            raise ValueError(f"Expected n_images >= 2, got {self.n_images}")
        if "{}" not in self.prompt and "{label}" not in self.prompt:
            raise ValueError(
                f"Expected the prompt to contain '{{}}' or '{{label}}' where the label goes, got "
                f"{self.prompt!r}"
            )
        if self.pool not in POOLS:
            raise ValueError(f"Expected pool in {POOLS}, got {self.pool!r}")
        if self.component_cache not in CACHE_MODES:
            raise ValueError(
                f"Expected component_cache in {CACHE_MODES}, got {self.component_cache!r}"
            )
        if self.control_images is not None and self.control_images < 10:
            raise ValueError(f"Expected control_images >= 10, got {self.control_images}")
        if self.strip_images < 0:
            raise ValueError(f"Expected strip_images >= 0, got {self.strip_images}")
        layers = self.layers
        if isinstance(layers, str):
            object.__setattr__(self, "layers", tuple(x for x in layers.split(",") if x))

    def prompt_for(self, label: str) -> str:
        slot = "{label}" if "{label}" in self.prompt else "{}"
        return self.prompt.replace(slot, label)


class GeneratedSuite(Suite[GeneratedConfig]):
    """Each unit's activations on images generated from its label against control images."""

    name = "generated"
    version = "1"
    summary = "does the unit fire on images generated from its label (CoSy: AUC, MAD, p)"

    def applicable(self, target: TargetInfo) -> str | None:
        if target.spec is None:
            return "it is not a registered target, so it cannot be run on images"
        return None

    # --- pieces ---------------------------------------------------------------------------------

    def check(self, target: TargetInfo, run: Mapping[str, Any], options: ScoreOptions) -> None:
        """The text-to-image model is available (weights here or downloadable); nothing is
        loaded."""
        from bench.components.base import check_available

        super().check(target, run, options)
        from bench.environment import resolve_device

        comp, backend = self._build(run, target.synthetic, resolve_device(options.device))
        try:
            check_available(comp)
        except ComponentError as e:
            raise RequirementError(
                f"it generates images with the text_to_image backend '{backend}'. {e} Or choose "
                "another backend (--suite-option generated.backend=NAME, or the run's "
                "--component text_to_image=NAME)."
            ) from e

    def _component(self, ctx: SuiteContext) -> tuple[Any, dict[str, Any]]:
        """The tracked ``text_to_image`` component and what it is (for the settings)."""
        from bench.components import tracked
        from bench.components.cached import is_cheap

        comp, backend = self._build(ctx.run.config or {}, ctx.target.synthetic, ctx.device)
        mode = self.config.component_cache
        use_cache = mode == "always" or (mode == "auto" and not is_cheap(comp))
        info = {"backend": backend, "identity": comp.identity(), "cached": use_cache}
        return tracked("text_to_image", comp, ctx.cache if use_cache else None), info

    def _build(self, run: Mapping[str, Any], synthetic: bool, device: str) -> tuple[Any, str]:
        """The (untracked) ``text_to_image`` component for a run configured as ``run``, and its
        backend name: the run's own (DnD's) with its options, unless the config names another."""
        from bench.components import ALIASES, build_component, default_backends

        cfg = self.config
        run_backend = (run.get("components") or {}).get("text_to_image") or default_backends(
            ["text_to_image"], synthetic=synthetic
        )["text_to_image"]
        backend = cfg.backend or run_backend
        same = ALIASES.get(backend, backend) == ALIASES.get(run_backend, run_backend)
        options: dict[str, Any] = {}
        if same and not cfg.sdxl:
            options = dict((run.get("component_options") or {}).get("text_to_image") or {})
        if cfg.sdxl:
            if ALIASES.get(backend, backend) != "stable-diffusion":
                raise UsageError(
                    f"Suite 'generated': sdxl=true needs the stable-diffusion backend, got "
                    f"'{backend}'. Add generated.backend=stable-diffusion."
                )
            from bench.components.diffusion import DEFAULT_SDXL

            options.update(
                model=DEFAULT_SDXL, pipeline="sdxl", scheduler="default", guidance_scale=5.0
            )
        if cfg.model is not None:
            options["model"] = cfg.model
        return build_component("text_to_image", backend, options, device=device), backend

    def _control(self, ctx: SuiteContext, layers: list[str]) -> tuple[dict[str, Any], Any, str]:
        """layer -> float ``[N0, U]`` activations on the control images, the probe, and where
        the activations came from."""
        from bench.suites.faithfulness import _load_probe, _recorded_pooled, pooled_activations

        cfg = self.config
        run = ctx.run.config or {}
        run_probe = run.get("probe") or ctx.run.probe
        name = cfg.probe or run_probe
        if name is None:
            if not ctx.target.synthetic:
                raise UsageError(
                    "Suite 'generated' compares generated images with control images from a probe "
                    "set; these labels come without a run, so pass generated.probe=NAME (e.g. "
                    "broden)."
                )
            name = "synthetic"
        own = name == run_probe and cfg.control_images is None and cfg.probe_root is None
        root = ctx.probe_root if own else cfg.probe_root
        probe: ProbeSet = _load_probe(ctx, name, root, cfg.control_images)
        if own:
            found = _recorded_pooled(ctx, layers, cfg.pool)
            if found is not None:
                return found, probe, "the run's recorded evidence"
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
        return {la: acts[la][cfg.pool] for la in layers}, probe, "a forward pass over the probe"

    def _n_images(self, ctx: SuiteContext) -> int:
        n = self.config.n_images
        if n is not None:
            return n
        return SYNTHETIC_N_IMAGES if ctx.target.synthetic else COSY_N_IMAGES

    def _generate(
        self, ctx: SuiteContext, t2i: Any, prompts: list[str], layers: list[str], seed: int
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """prompt -> layer -> float ``[n, U]`` activations on its images, and prompt -> the
        first ``strip_images`` images (uint8 ``[k, H, W, 3]``)."""
        import numpy as np

        from bench.imaging import pooled_on_images
        from bench.progress import progress_bar

        cfg = self.config
        n = self._n_images(ctx)
        target = ctx.load_target()
        acts: dict[str, dict[str, np.ndarray]] = {}
        shown: dict[str, np.ndarray] = {}
        with progress_bar(
            total=len(prompts), desc="generated images", enabled=ctx.options.progress, unit="label"
        ) as bar:
            step = max(1, IMAGES_PER_BATCH // n)
            for start in range(0, len(prompts), step):
                batch = prompts[start : start + step]
                images = t2i.generate(batch, n, seed)
                flat: list[np.ndarray] = []
                for p, arr in zip(batch, images, strict=True):
                    arr = np.asarray(arr, dtype=np.uint8)
                    if arr.ndim != 4 or arr.shape[0] != n or arr.shape[-1] != 3:
                        raise UsageError(
                            f"Suite 'generated': the text-to-image component returned images of "
                            f"shape {arr.shape} for one prompt; expected [{n}, H, W, 3]."
                        )
                    flat.extend(arr)
                    if cfg.strip_images:
                        shown[p] = arr[: cfg.strip_images].copy()
                out = pooled_on_images(
                    target,
                    layers,
                    flat,
                    pool=cfg.pool,
                    device=ctx.device,
                    batch_size=ctx.options.batch_size,
                )
                for j, p in enumerate(batch):
                    rows = slice(j * n, (j + 1) * n)
                    acts[p] = {la: out[la][rows] for la in layers}
                bar.update(len(batch))
        return acts, shown

    # --- the suite ------------------------------------------------------------------------------

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        import numpy as np

        import metrics.faithfulness as mf

        cfg = self.config
        units = ctx.described_units(cfg.layers or None)
        if not units:
            raise UsageError(
                "Suite 'generated': no method described a unit"
                + (f" of layers {', '.join(cfg.layers)}" if cfg.layers else "")
                + "."
            )
        layers = list(dict.fromkeys(u.layer for u in units))
        # What fails offline fails first, before any forward pass: the text-to-image model,
        # the control probe, the target's weights.
        t2i, comp_info = self._component(ctx)
        control, probe, acts_from = self._control(ctx, layers)
        ctx.load_target().resolve_layers(layers)
        seed = cfg.seed if cfg.seed is not None else int(ctx.run.seed or 0)
        n_images = self._n_images(ctx)

        # Every method's label per unit; each distinct prompt is generated once.
        scored: dict[str, list[tuple[UnitRef, str]]] = {}
        empty: dict[str, int] = {}
        for mname, m in ctx.methods.items():
            rows = []
            for u in units:
                d = m.get(u)
                if d is None or not d.ok:
                    continue
                if not d.label.strip():
                    empty[mname] = empty.get(mname, 0) + 1
                    continue
                rows.append((u, cfg.prompt_for(d.label.strip())))
            scored[mname] = rows
        prompts = list(dict.fromkeys(p for rows in scored.values() for _, p in rows))
        gen_acts, shown = self._generate(ctx, t2i, prompts, layers, seed)

        metrics = {
            name: MetricValues(
                name=name,
                settings={
                    "metric": name,
                    "definition": _DEFINITIONS[name],
                    "n_images": n_images,
                    "prompt": cfg.prompt,
                    "pool": cfg.pool,
                },
                comparable_with_papers=False,
                note="control images are the run's probe set (CoSy: ImageNet validation)",
                higher_is_better=name != "p_value",
            )
            for name in ("auc", "mad", "p_value")
        }
        details: dict[UnitRef, dict[str, Any]] = {u: {"labels": {}} for u in units}
        for layer in layers:
            a0 = np.asarray(control[layer], dtype=np.float64)  # [N0, U]
            bad = [u for u in units if u.layer == layer and u.index >= a0.shape[1]]
            if bad:
                raise UsageError(
                    f"Suite 'generated': unit {bad[0].index} of '{layer}' is described, but the "
                    f"layer has {a0.shape[1]} units."
                )
            n0 = a0.shape[0]
            on = np.concatenate([np.ones(n_images), np.zeros(n0)])
            for mname, rows in scored.items():
                here = [(u, p) for u, p in rows if u.layer == layer]
                for start in range(0, len(here), ROWS_PER_BLOCK):
                    block = here[start : start + ROWS_PER_BLOCK]
                    idx = np.array([u.index for u, _ in block], dtype=np.int64)
                    a1 = np.stack([gen_acts[p][layer][:, u.index] for u, p in block])
                    a1 = a1.astype(np.float64)  # [M, n]
                    a0_rows = a0[:, idx].T  # [M, N0]
                    auc, u1, pval = mf.mann_whitney(a1, a0_rows)
                    mad = mf.mad(np.concatenate([a1, a0_rows], axis=1), on)
                    for j, (u, p) in enumerate(block):
                        for name, v in (("auc", auc[j]), ("mad", mad[j]), ("p_value", pval[j])):
                            if np.isfinite(v):
                                metrics[name].values.setdefault(mname, {})[u] = float(v)
                        details[u]["labels"][mname] = {
                            "prompt": p,
                            "u1": float(u1[j]),
                            "mean_generated": float(a1[j].mean()),
                        }
        strips = self._strips(ctx, scored, gen_acts, shown, details)
        entries = [UnitEntry(unit=u, details=details[u]) for u in units]
        settings = {
            "prompt": cfg.prompt,
            "n_images": n_images,
            "seed": seed,
            "pool": cfg.pool,
            "text_to_image": {
                **comp_info,
                "calls": t2i.stats.to_json() if hasattr(t2i, "stats") else None,
            },
            "prompts": len(prompts),
            "control": {
                "probe": probe.identity(),
                "images": int(next(iter(control.values())).shape[0]),
                "activations_from": acts_from,
            },
            "empty_labels": empty,
            "strips": strips,
        }
        notes = []
        if ctx.target.synthetic or "synthetic" in str(comp_info["backend"]):
            notes.append(
                "generated images: the synthetic world's phrase renderer stands in for Stable "
                "Diffusion"
            )
        return SuiteScores(
            units=entries,
            metrics=list(metrics.values()),
            settings=settings,
            offline_notes=notes,
        )

    def _strips(
        self,
        ctx: SuiteContext,
        scored: dict[str, list[tuple[UnitRef, str]]],
        gen_acts: dict[str, dict[str, np.ndarray]],
        shown: dict[str, np.ndarray],
        details: dict[UnitRef, dict[str, Any]],
    ) -> int:
        """Write one strip of the first ``strip_images`` generated images per prompt (runs
        only; ``generated/<content hash>.png``, shared by every unit and method with that
        label) and record, per unit and method, its relative path and the unit's activation on
        each of its images (shown under them on the leaderboard). Returns the strips written."""
        import hashlib

        from bench.schema import atomic_write
        from bench.suites.strips import images_strip_png

        k = self.config.strip_images
        if ctx.run_dir is None or not ctx.options.exemplars or k == 0:
            return 0
        out_dir = ctx.run_dir / STRIPS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, str] = {}
        for prompt, images in shown.items():
            data = images_strip_png(list(images))
            name = f"{hashlib.sha256(data).hexdigest()[:24]}.png"
            dest = out_dir / name
            if not dest.is_file():
                atomic_write(dest, data, fsync=False)
            paths[prompt] = f"../{STRIPS_DIR}/{name}"
        for mname, rows in scored.items():
            for u, p in rows:
                entry = details[u]["labels"].get(mname)
                if entry is None or p not in paths:
                    continue
                values = gen_acts[p][u.layer][: len(shown[p]), u.index]
                entry["strip"] = paths[p]
                entry["strip_activations"] = [float(v) for v in values]
        return len(paths)
