"""Describe-and-Dissect (Bai, Oikarinen, et al., 2024): free-text unit descriptions from a
captioner, an LLM, a text-to-image model and an image encoder, without training.

Per unit (see README.md for the defaults, the prompts and the deviations):

1. **Attention crops** (``crops.py``): the unit's top ``num_images`` probe images by spatial-mean
   activation; each activation map, cast to bytes, resized bicubically and Otsu-thresholded
   as the original (maps outside [0, 1] scaled into it first), gives up to 4 boxes; the
   crops join the unit's images, and the top ``num_images`` of originals and crops by the unit's
   activation are its exemplars.
2. **Candidates** (``prompts.py``): the exemplars are captioned, each caption simplified by the
   LLM, and the simplified captions summarised ``num_summaries`` times in shuffled orders into
   candidate concepts.
3. **Selection** (``scoring.py``): ``images_per_concept`` images are generated per candidate
   ("One realistic image of {concept}"), run through the target, ranked by the unit's
   activation, and scored (TopK-squared combined with Image Products by default). The best
   candidate is the label; the top ``num_labels`` are kept in ``extras["labels"]``.

Every model call is batched across the units of a chunk; captions, LLM answers and generated
images are cached by content hash (``bench.components.cached``), so a rerun makes no new calls.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.method import Method, MethodContext, Requirements, Resources
from bench.schema import Description, UnitRef
from methods.dnd import prompts as P
from methods.dnd.crops import MAX_BOX_OVERLAP, MAX_CROPS, MAX_IMAGE_IOU
from methods.dnd.scoring import SCORINGS

if TYPE_CHECKING:
    from bench.evidence import Evidence
    from bench.targets import Target

log = logging.getLogger(__name__)

COMPONENTS = ("captioner", "language_model", "text_to_image", "image_encoder")
CACHE_MODES = ("auto", "always", "never")


@dataclass(frozen=True, kw_only=True, slots=True)
class DnDConfig:
    #: Top probe images per unit by spatial-mean activation, and exemplars kept after the crops
    #: join them (``num_images_to_check``).
    num_images: int = 10
    #: Crops per image at most, and the overlap limits of a kept box (``get_attention_crops``).
    crops_per_image: int = MAX_CROPS
    crop_max_overlap: float = MAX_BOX_OVERLAP
    crop_max_image_iou: float = MAX_IMAGE_IOU
    #: Cast every activation map to bytes as the original, unscaled (values above 1 wrap); the
    #: default scales a map outside [0, 1] into it first (``crops.py``).
    legacy_byte_cast: bool = False
    #: Summaries (candidate concepts before deduplication), each over a reshuffled caption list.
    num_summaries: int = 5
    #: Generated images per candidate, and the prompt they are generated from.
    images_per_concept: int = 10
    image_prompt: str = P.IMAGE_PROMPT
    #: Side generated images are resized to before the target and the encoder see them;
    #: ``None`` keeps them (the target resizes to its input). The original resizes to 32.
    generated_size: int | None = None
    #: mean | topk-squared | image-products | combined (the paper's default).
    scoring: str = "combined"
    #: K of TopK-squared, and the overall top generated images Image Products compares.
    topk: int = 5
    top_generated: int = 10
    #: Labels kept in ``extras["labels"]`` (the original writes three).
    num_labels: int = 3
    #: Cache captions, LLM answers and generated images: "auto" caches backends whose calls
    #: cost more than a cache lookup (all but the synthetic ones), "always", or "never".
    component_cache: str = "auto"
    #: Images per forward pass of the target on crops and generated images.
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("num_images", "num_summaries", "images_per_concept", "topk", "num_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crops_per_image < 0:
            raise ValueError(f"crops_per_image must be >= 0, got {self.crops_per_image}")
        if self.top_generated < 1 or self.batch_size < 1:
            raise ValueError("top_generated and batch_size must be >= 1")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.component_cache not in CACHE_MODES:
            raise ValueError(
                f"component_cache must be one of {CACHE_MODES}, got {self.component_cache!r}"
            )
        if "{}" not in self.image_prompt:
            raise ValueError(f"image_prompt must contain '{{}}', got {self.image_prompt!r}")
        if self.generated_size is not None and self.generated_size < 8:
            raise ValueError(f"generated_size must be >= 8 or None, got {self.generated_size}")


@dataclass
class _Unit:
    """Working state of one unit through the pipeline."""

    unit: UnitRef
    probe_idx: list[int]
    top_images: list[np.ndarray]
    top_sources: list[dict[str, Any]]
    n_crops: int = 0
    captions: list[str] | None = None
    simplified: list[str] | None = None
    summaries: list[str] | None = None
    candidates: list[str] | None = None
    error: str | None = None
    llm_prompts: int = 0


class DnD(Method[DnDConfig]):
    """Describe-and-Dissect: captions of a unit's exemplars summarised by an LLM into candidate
    concepts, the best chosen by generating images of each and running the target on them.

    The steps are described in the module docstring."""

    name = "dnd"
    version = "2"
    requires = Requirements(
        evidence=frozenset({"topk", "images", "target"}),
        topk_by=("mean",),
        k=10,
        components=frozenset(COMPONENTS),
        # A captioner, a diffusion model and an image encoder (and a local LLM with
        # language_model=hf) held for many shards: an actor with one 24 GiB GPU.
        resources=Resources(cpus=2, gpus=1, gpu_memory=24, actor=True),
    )
    #: Units per batched pass: bounds the generated images held in memory.
    chunk_size = 32

    def top_k(self) -> int:
        """The recording keeps at least ``num_images`` top images per unit."""
        return max(self.requires.k, self.config.num_images)

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        from bench.components import ComponentError

        config = self.config
        try:
            return _Run(config, evidence, ctx).describe(list(units))
        except ComponentError as e:
            # Every unit of the chunk depends on the failed model; retrying unit by unit
            # (Method.describe's isolation) would repeat the failure once per unit.
            log.warning("dnd: a component failed for %d units: %s", len(units), e)
            msg = f"ComponentError: {e}"
            return [Description(unit=u, label="", status="error", error=msg) for u in units]


class _Run:
    """One batched pass of the pipeline over a list of units."""

    def __init__(self, config: DnDConfig, evidence: Evidence, ctx: MethodContext):
        from bench.components import tracked
        from bench.components.cached import is_cheap

        self.cfg = config
        self.ev = evidence
        self.ctx = ctx
        if ctx.target is None:  # Method.describe checks this; _Run may be used on its own
            from bench.errors import RequirementError

            raise RequirementError("dnd needs the target in its context (ctx.target).")
        self.target: Target = ctx.target
        self.comps: dict[str, Any] = {}
        for kind in COMPONENTS:
            comp = ctx.components[kind]
            mode = config.component_cache
            use_cache = mode == "always" or (mode == "auto" and not is_cheap(comp))
            self.comps[kind] = tracked(kind, comp, ctx.cache if use_cache else None)
        self.stage_seconds: dict[str, float] = {}
        self._views: dict[int, np.ndarray] = {}

    # --- helpers --------------------------------------------------------------------------------

    def _timed(self, stage: str, t0: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - t0

    def _view(self, i: int) -> np.ndarray:
        if i not in self._views:
            from methods.dnd.pipeline import network_view

            probe = self.ev.probe
            self._views[i] = network_view(
                probe.load_image(i),
                self.target.preprocessing,
                fixed_geometry=bool(probe.fixed_geometry),
            )
        return self._views[i]

    def _rng(self, unit: UnitRef, round_: int) -> np.random.Generator:
        return np.random.default_rng(
            [int(self.ctx.seed), zlib.crc32(unit.layer.encode()), unit.index, round_]
        )

    # --- the pipeline ---------------------------------------------------------------------------

    def describe(self, units: list[UnitRef]) -> list[Description]:
        from bench.progress import progress_bar

        t_start = time.perf_counter()
        with progress_bar(
            total=4, desc=f"dnd ({len(units)} units)", enabled=self.ctx.progress, unit="stage"
        ) as bar:
            bar.set_postfix_str("crops")
            work = self._crops(units)
            bar.update(1)
            bar.set_postfix_str("captions")
            self._captions(work)
            bar.update(1)
            bar.set_postfix_str("candidates")
            self._candidates(work)
            bar.update(1)
            bar.set_postfix_str("selection")
            out = self._selection(work)
            bar.update(1)
        total = time.perf_counter() - t_start
        per_unit = total / len(units)
        calls = {k: c.stats.to_json() for k, c in self.comps.items()}
        batch = {
            "units": len(units),
            "seconds": round(total, 6),
            "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
            "calls": calls,
        }
        final = []
        for d in out:
            extras = dict(d.extras)
            if d.ok:
                extras["seconds"] = round(per_unit, 6)
                extras["batch"] = batch
            final.append(d.replace(seconds=per_unit, extras=extras))
        return final

    def _crops(self, units: Sequence[UnitRef]) -> list[_Unit]:
        """Step 1: top images, attention crops, and the unit's exemplars among both."""
        from methods.dnd.crops import attention_boxes
        from methods.dnd.pipeline import crop_image, layer_means

        t0 = time.perf_counter()
        cfg = self.cfg
        n = cfg.num_images
        work: list[_Unit] = []
        pending: dict[str, list[tuple[int, np.ndarray, dict[str, Any]]]] = {}
        for u in units:
            le = self.ev.layer(u.layer)
            top = le.top("mean")
            r = le.row(u.index)  # the row of the unit in the recorded arrays
            if n > top.indices.shape[1]:
                from bench.errors import RequirementError

                raise RequirementError(
                    f"dnd needs the top {n} images per unit, but the evidence of layer "
                    f"'{u.layer}' holds {top.indices.shape[1]}; record with k >= {n}."
                )
            idx = [int(i) for i in top.indices[r, :n]]
            vals = [float(v) for v in top.values[r, :n]]
            w = _Unit(unit=u, probe_idx=idx, top_images=[], top_sources=[])
            w.top_sources = [
                {"probe_index": i, "activation": v} for i, v in zip(idx, vals, strict=True)
            ]
            w.top_images = [self._view(i) for i in idx]
            for j, i in enumerate(idx):
                view = w.top_images[j]
                if cfg.crops_per_image == 0:
                    break
                boxes = attention_boxes(
                    top.maps[r, j],
                    view.shape[:2],
                    max_crops=cfg.crops_per_image,
                    max_overlap=cfg.crop_max_overlap,
                    max_image_iou=cfg.crop_max_image_iou,
                    legacy_byte_cast=cfg.legacy_byte_cast,
                )
                for b in boxes:
                    src = {"probe_index": i, "box": list(b)}
                    crop = crop_image(view, b, view.shape[0])
                    pending.setdefault(u.layer, []).append((len(work), crop, src))
            work.append(w)
        self._timed("crops", t0)
        t0 = time.perf_counter()
        for layer, items in pending.items():
            acts = layer_means(
                self.target,
                layer,
                [c for _, c, _ in items],
                device=self.ctx.device,
                batch_size=cfg.batch_size,
            )
            for row, (wi, crop, src) in enumerate(items):
                w = work[wi]
                w.top_images.append(crop)
                w.top_sources.append({**src, "activation": float(acts[row, w.unit.index])})
                w.n_crops += 1
        for w in work:  # exemplars: the best n of originals and crops (originals first on ties)
            acts = np.asarray([s["activation"] for s in w.top_sources])
            keep = np.argsort(-acts, kind="stable")[:n]
            w.top_images = [w.top_images[k] for k in keep]
            w.top_sources = [w.top_sources[k] for k in keep]
        self._timed("target", t0)
        return work

    def _captions(self, work: list[_Unit]) -> None:
        """Step 2a: caption every exemplar of every unit in one call."""
        t0 = time.perf_counter()
        images = [im for w in work for im in w.top_images]
        caps = self.comps["captioner"].caption(images)
        pos = 0
        for w in work:
            w.captions = [c.strip() for c in caps[pos : pos + len(w.top_images)]]
            pos += len(w.top_images)
        self._timed("caption", t0)

    def _candidates(self, work: list[_Unit]) -> None:
        """Step 2b: simplify every caption, summarise each unit's simplified captions
        ``num_summaries`` times in shuffled orders, re-summarise comma lists; post-process."""
        t0 = time.perf_counter()
        lm = self.comps["language_model"]
        caps = [c for w in work for c in (w.captions or [])]
        simple = lm.complete([P.simplify_prompt(c) for c in caps])
        pos = 0
        for w in work:
            k = len(w.captions or [])
            pairs = zip(simple[pos : pos + k], w.captions or [], strict=True)
            w.simplified = [s for s, _ in pairs]  # unchanged, as the original passes them
            w.llm_prompts += k
            pos += k
        chats, owners = [], []
        for wi, w in enumerate(work):
            descs = list(w.simplified or [])
            if not any(d.strip() for d in descs):
                w.error = f"every simplified caption was empty ({descs!r}); nothing to summarise"
                continue
            for r in range(self.cfg.num_summaries):
                order = self._rng(w.unit, r).permutation(len(descs))
                chats.append(P.summary_prompt([descs[i] for i in order]))
                owners.append(wi)
        answers = [P.after_colon(a) for a in lm.complete(chats)] if chats else []
        refeed = [i for i, a in enumerate(answers) if P.needs_refeed(a)]
        if refeed:
            again = lm.complete([P.refeed_prompt(P.refeed_items(answers[i])) for i in refeed])
            for i, a in zip(refeed, again, strict=True):
                answers[i] = P.after_colon(a)
        per_unit: dict[int, list[str]] = {}
        for wi, a in zip(owners, answers, strict=True):
            per_unit.setdefault(wi, []).append(a)
        refed = [owners[i] for i in refeed]
        for wi, w in enumerate(work):
            if w.error:
                continue
            w.summaries = per_unit.get(wi, [])
            w.llm_prompts += len(w.summaries) + refed.count(wi)
            try:
                w.candidates = P.candidates(w.summaries)
            except P.EmptyAnswerError as e:
                w.error = str(e)
        self._timed("llm", t0)

    def _selection(self, work: list[_Unit]) -> list[Description]:
        """Step 3: generate images per candidate, run them through the target, score."""
        from methods.dnd.pipeline import layer_means, resize_image
        from methods.dnd.scoring import image_positions, score_candidates

        cfg = self.cfg
        live = [w for w in work if not w.error]
        t0 = time.perf_counter()
        concepts: list[str] = []
        for w in live:
            for c in w.candidates or []:
                if c not in concepts:
                    concepts.append(c)
        prompts = [cfg.image_prompt.format(c) for c in concepts]
        generated: dict[str, np.ndarray] = {}
        if prompts:
            imgs = self.comps["text_to_image"].generate(
                prompts, cfg.images_per_concept, int(self.ctx.seed)
            )
            for c, arr in zip(concepts, imgs, strict=True):
                arr = np.asarray(arr, dtype=np.uint8)
                if cfg.generated_size is not None:
                    arr = np.stack([resize_image(a, cfg.generated_size) for a in arr])
                generated[c] = arr
        self._timed("generate", t0)

        # The target on every generated image, once per layer.
        t0 = time.perf_counter()
        acts: dict[tuple[str, str], np.ndarray] = {}
        for layer in sorted({w.unit.layer for w in live}):
            needed = [c for c in concepts if any(
                w.unit.layer == layer and c in (w.candidates or []) for w in live
            )]  # fmt: skip
            flat = [im for c in needed for im in generated[c]]
            means = layer_means(
                self.target, layer, flat, device=self.ctx.device, batch_size=cfg.batch_size
            )
            pos = 0
            for c in needed:
                acts[(layer, c)] = means[pos : pos + len(generated[c])]
                pos += len(generated[c])
        self._timed("target", t0)

        # Rank, then encode only what Image Products compares.
        t0 = time.perf_counter()
        need_emb = cfg.scoring in ("image-products", "combined")
        positions: dict[int, list[np.ndarray]] = {}
        to_encode: list[np.ndarray] = []
        slots: dict[tuple[int, str, int], int] = {}
        unit_slots: dict[int, list[int]] = {}
        for wi, w in enumerate(work):
            if w.error:
                continue
            cands = w.candidates or []
            unit_acts = [acts[(w.unit.layer, c)][:, w.unit.index] for c in cands]
            positions[wi] = image_positions(unit_acts)
            if not need_emb:
                continue
            unit_slots[wi] = []
            for im in w.top_images:
                unit_slots[wi].append(len(to_encode))
                to_encode.append(im)
            for c, pos_c in zip(cands, positions[wi], strict=True):
                for j in np.nonzero(pos_c < cfg.top_generated)[0].tolist():
                    slots[(wi, c, j)] = len(to_encode)
                    to_encode.append(generated[c][j])
        emb = None
        if to_encode:
            emb = self.comps["image_encoder"].encode(to_encode)
            emb = np.asarray(emb.detach().cpu().float().numpy() if hasattr(emb, "detach") else emb)
        self._timed("encode", t0)

        out = []
        for wi, w in enumerate(work):
            if w.error:
                out.append(
                    Description(unit=w.unit, label="", status="error", error=f"dnd: {w.error}")
                )
                continue
            cands = w.candidates or []
            unit_acts = [acts[(w.unit.layer, c)][:, w.unit.index] for c in cands]
            unit_emb = gen_embs = None
            if need_emb and emb is not None:
                unit_emb = emb[unit_slots[wi]]
                gen_embs = []
                for c in cands:
                    m = np.zeros((len(generated[c]), emb.shape[1]), dtype=np.float32)
                    for j in range(len(generated[c])):
                        if (wi, c, j) in slots:
                            m[j] = emb[slots[(wi, c, j)]]
                    gen_embs.append(m)
            scored = score_candidates(
                unit_acts,
                unit_emb,
                gen_embs,
                scoring=cfg.scoring,
                k=cfg.topk,
                top=cfg.top_generated,
            )
            out.append(self._description(w, scored))
        return out

    def _description(self, w: _Unit, scored: Any) -> Description:
        cfg = self.cfg
        cands = w.candidates or []
        labels = [cands[c] for c in scored.order[: cfg.num_labels]]
        best = scored.order[0]
        per_candidate = {
            c: {
                "mean_rank": scored.mean[i],
                "topk_squared": scored.topk_squared[i],
                "image_products": scored.image_products[i],
                "combined": scored.combined[i],
            }
            for i, c in enumerate(cands)
        }
        n_top = len(w.top_images)
        n_gen = len(cands) * cfg.images_per_concept
        extras = {
            "labels": labels,
            "candidates": cands,
            "scores": per_candidate,
            "scoring": cfg.scoring,
            "exemplars": w.top_sources,
            "captions": w.captions,
            "simplified": w.simplified,
            "summaries": w.summaries,
            "model_calls": {
                "captions": n_top,
                "llm_prompts": w.llm_prompts,
                "generated_images": n_gen,
                "target_images": w.n_crops + n_gen,
                "encoded_images": (n_top + min(n_gen, cfg.top_generated))
                if cfg.scoring in ("image-products", "combined")
                else 0,
            },
        }
        return Description(
            unit=w.unit,
            label=labels[0],
            score=float(scored.score(best)),
            score_name=f"dnd-{cfg.scoring}",
            extras=extras,
        )
