"""CLIP-Dissect (Oikarinen & Weng, ICLR 2023): a unit's label is the concept whose image-text
similarity in a joint space (CLIP) best matches the unit's activations over the probe set.

1. The probe images and a concept set are embedded by a joint image-text model (component
   ``image_text_encoder``: open_clip ViT-B/16 by default, the synthetic world's recogniser
   offline); ``P = images @ concepts.T`` is the cosine, ``float32 [N, C]``.
2. Each unit's activation on each probe image, spatially pooled (mean by default, the original's
   ``pool_mode avg``): ``float32 [N, U]`` from the recorded evidence.
3. A similarity function between units and concepts (:mod:`methods.clip_dissect.similarity`,
   ``soft_wpmi`` by default with the original's constants), all units of the layer against all
   concepts in chunks; the label is the best concept, the score its similarity, the runners-up
   go into ``extras``.

The PMI functions subtract a prior over units (``log p(c)``, the mean over units of
``p(c | E_k)``), so a unit's label depends on which other units are dissected with it. By default
the prior is the whole recorded layer, whatever subset is described (``prior="layer"``), so that
describing units 0-9 gives them the labels they get in a full run; ``prior="described"`` takes it
over the units of one ``describe`` call, as the original does over the units it is given.
See README.md for defaults and deviations.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, DataError, RequirementError
from bench.method import Method, MethodContext, Requirements, Resources
from bench.schema import Description, UnitRef
from methods.clip_dissect.similarity import SIMILARITY_FUNCTIONS

if TYPE_CHECKING:
    import numpy as np

    from bench.evidence import Evidence

log = logging.getLogger(__name__)

#: The original's 20,000-word concept list (``data/20k.txt``), at the commit the reference
#: describes. Its SHA-256 could not be read where this was written, so the first download is
#: pinned (``bench.download.ensure_file``) and checked on every later use; pass
#: ``concepts_sha256`` to pin it yourself. See README.md.
CONCEPTS_20K_URL = (
    "https://raw.githubusercontent.com/Trustworthy-ML-Lab/CLIP-dissect/21e7697f/data/20k.txt"
)
#: Size in bytes of the original's ``data/20k.txt`` (reference/methods.md 5.4).
CONCEPTS_20K_BYTES = 155_418
CONCEPT_SOURCES = ("probe", "classes", "20k")
POOLS = ("mean", "max")
PRIORS = ("layer", "described")
#: The PMI functions look at each unit's top images only: the rows of ``P`` they need.
_TOP_K = {"soft_wpmi": 100, "wpmi": 28}


@dataclass(frozen=True, kw_only=True, slots=True)
class ClipDissectConfig:
    #: Similarity function between a unit and a concept: soft_wpmi (the paper's default), wpmi,
    #: cos, cos_cubed or rank_reorder, each with the original's constants.
    similarity: str = "soft_wpmi"
    #: The concept set: "probe" (the probe's own concept names, Broden ``label.csv``), "classes"
    #: (the target's class names), "20k" (the original's 20,000-word list, fetched only with
    #: ``download=True``) or the path of a text file, one concept a line (empty lines dropped).
    #: The original's default is its 20k list; ours is the probe's labels, so that a run
    #: downloads nothing it was not asked to (README "Deviations").
    concepts: str = "probe"
    #: Spatial pooling of a unit's activation map: "mean" (the original's pool_mode avg) or
    #: "max".
    pool: str = "mean"
    #: Units the PMI prior is taken over: "layer" (every unit of the recorded layer, whatever
    #: is described) or "described" (the units of one call, as the original).
    prior: str = "layer"
    #: Concepts after the best one listed in ``extras["runners_up"]``.
    runners_up: int = 4
    #: Allow fetching the 20k list (``concepts="20k"``) into the cache's datasets folder.
    download: bool = False
    #: Expected SHA-256 of the concept file or of the 20k list; ``None``: not checked (a
    #: downloaded 20k list is pinned on first download instead).
    concepts_sha256: str | None = None
    #: Probe images per call of the image-text encoder.
    image_batch: int = 256

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITY_FUNCTIONS:
            raise ValueError(
                f"similarity must be one of {sorted(SIMILARITY_FUNCTIONS)}, got {self.similarity!r}"
            )
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if not self.concepts.strip():
            raise ValueError(
                f"concepts must be one of {CONCEPT_SOURCES} or a file path, got {self.concepts!r}"
            )
        if self.runners_up < 0:
            raise ValueError(f"runners_up must be >= 0, got {self.runners_up}")
        if self.image_batch < 1:
            raise ValueError(f"image_batch must be >= 1, got {self.image_batch}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ConceptSet:
    """Concept texts in order, where they came from, and the SHA-256 of the list."""

    names: tuple[str, ...]
    source: str
    sha256: str


def read_concept_file(path: Path, *, expected_sha256: str | None = None) -> tuple[str, ...]:
    """Concepts of a text file, one a line: stripped, empty lines dropped, duplicates kept once
    (first occurrence)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"Expected a readable concept file (one concept a line) at {path}, got: {e}. "
            f"Pass concepts=one of {CONCEPT_SOURCES} or an existing file."
        ) from e
    if expected_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected_sha256.lower():
            raise DataError(
                f"Concept file {path} has SHA-256 {got}, expected {expected_sha256}; "
                "replace the file or fix concepts_sha256."
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"Expected a UTF-8 concept file at {path}: {e}.") from e
    names = tuple(dict.fromkeys(s for s in (line.strip() for line in text.splitlines()) if s))
    if not names:
        raise DataError(f"Concept file {path} has no concepts (every line is empty).")
    return names


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


class ClipDissect(Method[ClipDissectConfig]):
    """The concept whose CLIP similarity over the probe set best matches a unit (soft-WPMI).

    Module docstring: joint embeddings, pooled activations, similarity, prior."""

    name = "clip-dissect"
    version = "1"
    requires = Requirements(
        evidence=frozenset({"pooled", "images"}),
        components=frozenset({"image_text_encoder"}),
        resources=Resources(gpus=1, gpu_memory=8),
    )
    # The whole layer in one call: the prior is over the layer anyway, and one call computes it
    # once (the runner checkpoints between calls).
    chunk_size = 1 << 16

    def __init__(self, config: ClipDissectConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        # (evidence key, layer) -> (sorted unit indices the prior covered, best, runners-up)
        self._memo: dict[tuple[Any, ...], Any] = {}

    # --- concepts -------------------------------------------------------------------------------

    def needs_whole_layers(self) -> bool:
        """With the prior over the layer, a unit's label depends on every unit of it."""
        return self.config.prior == "layer"

    def check(self, ctx: MethodContext) -> None:
        """The concept set is there before anything is recorded: the probe's labels, the
        target's classes, the 20k list (in the cache, or its download allowed) or the file."""
        super().check(ctx)
        cfg = self.config
        if cfg.concepts == "probe":
            if ctx.probe is not None:
                self._probe_concepts(ctx.probe)
        elif cfg.concepts == "classes":
            if ctx.target is not None:
                self._class_concepts(ctx.target)
        elif cfg.concepts == "20k":
            dest = self._20k_path(ctx)
            if dest.is_file():
                self._check_20k_size(dest)
            elif not cfg.download:
                raise self._no_20k(dest)
        else:
            read_concept_file(Path(cfg.concepts).expanduser(), expected_sha256=cfg.concepts_sha256)

    def _probe_concepts(self, probe: Any) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(c.name for c in probe.concepts() if c.name))
        if not names:
            raise RequirementError(
                f"Method '{self.name}' was asked for the probe's concepts, but probe set "
                f"'{probe.name}' has no concept labels. Use --config {self.name}.concepts=classes, "
                f"concepts=20k (with {self.name}.download=true) or concepts=PATH to a text file."
            )
        return names

    def _class_concepts(self, target: Any) -> tuple[str, ...]:
        classes = getattr(target, "class_names", None)
        if not classes:
            raise RequirementError(
                f"Method '{self.name}' was asked for the target's class names, but the "
                f"target has none. Use --config {self.name}.concepts=probe or concepts=PATH to a "
                "text file."
            )
        return tuple(dict.fromkeys(str(c).strip() for c in classes if str(c).strip()))

    def _20k_path(self, ctx: MethodContext) -> Path:
        return ctx.cache.datasets_dir() / "clip-dissect" / "20k.txt"

    def _no_20k(self, dest: Path) -> RequirementError:
        return RequirementError(
            f"The original CLIP-Dissect 20k concept list is not at {dest}. Fetch it with "
            f"--config {self.name}.download=true (from {CONCEPTS_20K_URL}), or download it "
            f"yourself and pass --config {self.name}.concepts=PATH."
        )

    def concept_set(self, evidence: Evidence, ctx: MethodContext) -> ConceptSet:
        cfg = self.config
        if cfg.concepts == "probe":
            names = self._probe_concepts(evidence.probe)
        elif cfg.concepts == "classes":
            target = evidence.target if evidence.target is not None else ctx.target
            names = self._class_concepts(target)
        elif cfg.concepts == "20k":
            names = read_concept_file(self._fetch_20k(ctx), expected_sha256=cfg.concepts_sha256)
        else:
            names = read_concept_file(
                Path(cfg.concepts).expanduser(), expected_sha256=cfg.concepts_sha256
            )
        return ConceptSet(names=names, source=cfg.concepts, sha256=_digest(names))

    def _fetch_20k(self, ctx: MethodContext) -> Path:
        from bench.download import ensure_file

        dest = self._20k_path(ctx)
        if not dest.is_file() and not self.config.download:
            raise self._no_20k(dest)
        # The size is checked before ensure_file pins a file's checksum (on first use), so a
        # wrong file is never pinned: deleting it and fetching again then just works.
        record = dest.with_name(dest.name + ".sha256.json")
        had_record = record.is_file()
        if dest.is_file():
            self._check_20k_size(dest)
        path, _ = ensure_file(
            CONCEPTS_20K_URL,
            dest,
            sha256=self.config.concepts_sha256,
            what="CLIP-Dissect 20k concept list",
            download_missing=self.config.download,
            progress=ctx.progress,
        )
        try:
            self._check_20k_size(path)
        except DataError:
            if not had_record:  # the pin this download just wrote is of a wrong file
                record.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _check_20k_size(path: Path) -> None:
        size = path.stat().st_size
        if size != CONCEPTS_20K_BYTES:
            raise DataError(
                f"{path} has {size} bytes; the original's data/20k.txt has "
                f"{CONCEPTS_20K_BYTES}. Delete it and fetch it again, or pass concepts=PATH."
            )

    # --- embeddings -----------------------------------------------------------------------------

    def image_concept(
        self, evidence: Evidence, concepts: ConceptSet, ctx: MethodContext
    ) -> np.ndarray:
        """``P``: float32 [N, C], cosine of every probe image with every concept."""
        import numpy as np

        from bench.components.cached import cached_embeddings

        enc = ctx.components["image_text_encoder"]
        probe = evidence.probe
        n = len(probe)
        batch = self.config.image_batch

        def images() -> Any:
            import torch

            parts = []
            for start in range(0, n, batch):
                ims = [probe.load_image(i) for i in range(start, min(n, start + batch))]
                parts.append(torch.as_tensor(enc.encode_images(ims)).float())
            return torch.cat(parts) if parts else torch.zeros((0, 0))

        img = cached_embeddings(
            ctx.cache, enc, "images", {"probe": probe.identity(), "n": n}, images
        )
        txt = cached_embeddings(
            ctx.cache,
            enc,
            "texts",
            {"sha256": concepts.sha256, "n": len(concepts.names)},
            lambda: enc.encode_texts(list(concepts.names)),
        )
        if img.shape[0] != n or txt.shape[0] != len(concepts.names):
            raise DataError(
                f"Expected {n} image and {len(concepts.names)} concept embeddings from the "
                f"image-text encoder, got {img.shape[0]} and {txt.shape[0]}."
            )
        if img.shape[1] != txt.shape[1]:
            raise RequirementError(
                f"The image-text encoder {enc.identity().get('name')} gave image embeddings of "
                f"dimension {img.shape[1]} and text embeddings of dimension {txt.shape[1]}; "
                "CLIP-Dissect needs one joint space."
            )
        # The original normalises both sides itself before the product.
        img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        return (img @ txt.T).astype(np.float32)

    # --- describe -------------------------------------------------------------------------------

    def similarities(self, image_concept: np.ndarray, activations: np.ndarray, device: str) -> Any:
        """``float32 [U, C]``: the configured similarity of every unit (columns of
        ``activations``, [N, U]) with every concept (columns of ``image_concept``, [N, C])."""
        import numpy as np
        import torch

        from methods.clip_dissect.similarity import similarity

        name = self.config.similarity
        kw: dict[str, Any] = {}
        rows = None
        n = activations.shape[0]
        if name in _TOP_K:
            top_k = min(_TOP_K[name], n)
            if top_k < _TOP_K[name]:
                log.warning(
                    "%s: the probe set has %d images, fewer than %s's top %d; using all of them.",
                    self.name,
                    n,
                    name,
                    _TOP_K[name],
                )
            kw["top_k"] = top_k
            # Only the rows of P at some unit's top images enter the PMI functions: restrict to
            # them (same values, a fraction of the memory for large probe sets).
            top = np.argpartition(-activations, top_k - 1, axis=0)[:top_k] if top_k < n else None
            if top is not None:
                rows = np.unique(top)
        p = image_concept if rows is None else image_concept[rows]
        a = activations if rows is None else activations[rows]
        pt = torch.as_tensor(np.ascontiguousarray(p), device=device)
        at = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)
        return similarity(name, pt, at, **kw)

    def _layer_result(
        self,
        layer: str,
        wanted: list[int],
        evidence: Evidence,
        ctx: MethodContext,
        concepts: ConceptSet,
        image_concept: np.ndarray,
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """``(prior units, order [U', 1 + runners_up], values, best)`` for the layer's units in
        the prior, computed once per layer when the prior is the layer."""
        import numpy as np
        import torch

        le = evidence.layer(layer)
        prior_units = list(range(le.num_units)) if self.config.prior == "layer" else sorted(wanted)
        memo_key = (evidence.key, id(evidence), layer, concepts.sha256, tuple(prior_units))
        if memo_key in self._memo:
            return self._memo[memo_key]
        pooled = le.pooled_mean if self.config.pool == "mean" else le.pooled_max
        acts = np.asarray(pooled, dtype=np.float32)[:, le.rows(prior_units)]
        sim = self.similarities(image_concept, acts, ctx.device).float().cpu()
        if not bool(torch.isfinite(sim).all()):
            bad = sorted({prior_units[i] for i in torch.nonzero(~torch.isfinite(sim))[:, 0]})
            raise DataError(
                f"{self.config.similarity} gave non-finite similarities for units {bad[:5]} of "
                f"layer '{layer}' (constant activations?)."
            )
        k = min(sim.shape[1], 1 + self.config.runners_up)
        vals, idx = torch.topk(sim, k=k, dim=1)
        vals_np, idx_np = vals.numpy(), idx.numpy()
        # Ties go to the concept listed first: argmax of the first occurrence, and the kept
        # candidates ordered by (-similarity, concept index).
        best = sim.numpy().argmax(axis=1)
        order = np.lexsort((idx_np, -vals_np), axis=1)
        idx_np = np.take_along_axis(idx_np, order, 1)
        vals_np = np.take_along_axis(vals_np, order, 1)
        result = (prior_units, idx_np, vals_np, best)
        self._memo = {memo_key: result}
        return result

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        concepts = self.concept_set(evidence, ctx)
        image_concept = self.image_concept(evidence, concepts, ctx)
        out: dict[UnitRef, Description] = {}
        for layer in dict.fromkeys(u.layer for u in units):
            wanted = [u.index for u in units if u.layer == layer]
            prior_units, idx, vals, best = self._layer_result(
                layer, wanted, evidence, ctx, concepts, image_concept
            )
            row_of = {unit: r for r, unit in enumerate(prior_units)}
            for u in (u for u in units if u.layer == layer):
                r = row_of[u.index]
                b = int(best[r])
                score = float(vals[r][idx[r] == b][0]) if (idx[r] == b).any() else None
                if score is None:  # a tie beyond the kept candidates: same value as the first
                    score = float(vals[r][0])
                runners = [
                    {"concept": concepts.names[int(c)], "similarity": float(v)}
                    for c, v in zip(idx[r], vals[r], strict=True)
                    if int(c) != b
                ][: self.config.runners_up]
                out[u] = Description(
                    unit=u,
                    label=concepts.names[b],
                    score=score,
                    score_name=self.config.similarity,
                    extras={
                        "runners_up": runners,
                        "concept_set": concepts.source,
                        "concepts": len(concepts.names),
                        "concepts_sha256": concepts.sha256,
                        "prior_units": len(prior_units),
                        "pool": self.config.pool,
                    },
                )
        return [out[u] for u in units]
