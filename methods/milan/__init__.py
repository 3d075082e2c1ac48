"""MILAN (Hernandez et al., ICLR 2022): a captioner of units' exemplars, decoded by weighted PMI.

The method reads each unit's exemplars (top-15 probe images by spatial max and the masks where
the upsampled activation exceeds the unit's 0.99 quantile, :mod:`bench.exemplars`), encodes each
exemplar with a frozen classifier's mask-pooled pyramid features (:mod:`.encoder`), and decodes a
description with beam search reranked by ``log p(d | E) - 0.2 log p(d)`` (:mod:`.decoding`).

The model comes from one of (``MilanConfig.model``):

- ``"train"`` (default): trained on MILANNOTATIONS keys (:mod:`bench.milannotations`), cached by
  the content hash of the training data and the training config. For a synthetic target the
  default keys are the other synthetic targets' simulated annotations (``not-<target>-synthetic``),
  so the described target is held out, as in the paper's leave-one-out split;
- a released key (``"base"``, ``"alexnet"``, ...): the authors' ``milan-<key>.pth``, fetched on
  request and loaded safely (:mod:`.checkpoint`);
- a path: a released ``.pth`` file, or a directory written by ``bench milan train``.

``milan`` decodes with wPMI (the paper's method); ``milan-captioning`` is the paper's no-PMI
baseline, decoded by ``p(d | E)`` alone: greedily by default, as the original's baseline
(``experiments/baselines.py``), or by beam search (``strategy="beam"``). Both share the trained
model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, RequirementError, UsageError
from bench.evidence import MILAN_QUANTILE
from bench.method import Method, MethodContext, Requirements, Resources
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bench.cache import Cache
    from bench.evidence import Evidence
    from bench.milannotations import Milannotations
    from methods.milan.encoder import PyramidEncoder
    from methods.milan.model import MilanModel

log = logging.getLogger(__name__)

MODEL_STAGE = "milan-model"
FEATURE_STAGE = "milan-features"
#: Bump when training changes what a cached model holds. 3: the attention is
#: ``min(hidden, features)`` wide (128 for the synthetic encoder), as in the original.
TRAIN_VERSION = 3
#: The synthetic world's encoder: a frozen synthetic classifier, as MILAN's is a frozen ImageNet
#: classifier. Its pyramid is conv1 and layer1-3 (16 + 16 + 32 + 64 = 128 values per exemplar).
SYNTHETIC_ENCODER = "synth.resnet"
SYNTHETIC_PYRAMID = ("conv1", "layer1", "layer2", "layer3")
#: The original training script's encoder (``scripts/train_milan.py --encoder``).
REAL_ENCODER = "resnet101"
#: Decoding strategies (:data:`methods.milan.decoding.STRATEGIES`, kept here so that the config
#: check does not import torch).
STRATEGIES = ("rerank", "beam", "greedy")


@dataclass(frozen=True, kw_only=True, slots=True)
class MilanConfig:
    """MILAN's settings; defaults are the paper's (reference/methods.md section 1)."""

    #: "rerank": beam search on log p(d|E), then the final beam reranked by weighted PMI;
    #: "beam": the beam's best by log p(d|E) alone; "greedy": the arg-max word at every step
    #: (the original's no-PMI baseline, milan-captioning's default).
    strategy: str = "rerank"
    beam_size: int = 50
    #: lambda of the weighted PMI, ``log p(d|E) - temperature * log p(d)``.
    temperature: float = 0.2
    #: Let a beam with no words win (the original code does; the empty description then
    #: becomes an error). False: the best beam that has a word (README, deviations).
    allow_empty: bool = False
    #: "train", a released key ("base", "cls", ...), or a path (released .pth or our directory).
    model: str = "train"
    #: MILANNOTATIONS keys or groupings to train on (comma-separated). "auto": for a synthetic
    #: target every other synthetic target (not-<target>-synthetic); for a real one, "base".
    train_keys: str = "auto"
    #: Directory holding the MILANNOTATIONS key directories (default: $MILAN_DATA_DIR, the
    #: cache's datasets/milannotations, or for synthetic keys the cached simulated export).
    annotations_root: str | None = None
    #: Download missing MILANNOTATIONS keys or released checkpoints (never done silently).
    download: bool = False
    #: Noise level of the simulated annotators (synthetic keys only).
    annotator_noise: float = 0.2
    #: The frozen encoder: "auto" (synthetic targets: the synthetic backbone; otherwise
    #: resnet101 with ImageNet weights), "synthetic", or a torchvision ResNet/AlexNet name.
    encoder: str = "auto"
    max_length: int = 15
    k: int = 15
    max_epochs: int = 100
    patience: int = 4
    hold_out: float = 0.1
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Expected strategy in {list(STRATEGIES)}, got {self.strategy!r}")
        for name in ("beam_size", "max_length", "k", "max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"Expected patience >= 0, got {self.patience}")
        if not 0.0 < self.hold_out < 1.0:
            raise ValueError(f"Expected 0 < hold_out < 1, got {self.hold_out}")
        if not 0.0 <= self.annotator_noise <= 1.0:
            raise ValueError(f"Expected 0 <= annotator_noise <= 1, got {self.annotator_noise}")


@dataclass(frozen=True, kw_only=True, slots=True)
class MilanCaptioningConfig(MilanConfig):
    """The paper's no-PMI baseline: decoded by ``p(d | E)``, no language model.

    The original decodes it greedily (``experiments/baselines.py``: ``strategy='greedy'``,
    ``mi=False``), the default here; ``strategy="beam"`` keeps the best of a beam search
    (``beam_size`` wide) instead. ``"rerank"`` would make it ``milan``.
    """

    strategy: str = "greedy"


# --- encoders -------------------------------------------------------------------------------------


def synthetic_encoder(name: str = SYNTHETIC_ENCODER) -> PyramidEncoder:
    """The synthetic world's frozen pyramid encoder (a shipped synthetic classifier)."""
    from bench.targets import load_target
    from methods.milan.encoder import PyramidEncoder

    target = load_target(name)
    pre = target.spec.preprocessing
    config = {
        "synthetic": name,
        "layers": list(SYNTHETIC_PYRAMID),
        "weights_sha256": target.weights_sha256,
    }
    return PyramidEncoder(
        target.model, SYNTHETIC_PYRAMID, normalize=(pre.mean, pre.std), config=config
    )


def build_encoder(
    config: dict[str, Any], *, download: bool = False, cache: Cache | None = None
) -> PyramidEncoder:
    """Rebuild the encoder a model was trained with, from its saved encoder config."""
    from methods.milan.encoder import encoder_from_config

    if "synthetic" in config:
        enc = synthetic_encoder(config["synthetic"])
        want = config.get("weights_sha256")
        if want and enc.config.get("weights_sha256") != want:
            raise ConfigError(
                f"This MILAN model was trained with features of {config['synthetic']} whose "
                f"weights had sha256 {want[:12]}; the installed ones differ "
                f"({str(enc.config.get('weights_sha256'))[:12]}). Retrain it (--config "
                "milan.model=train)."
            )
        return enc
    return encoder_from_config(config, download=download, cache=cache)


def make_encoder(
    config: MilanConfig, *, synthetic: bool, cache: Cache | None = None
) -> PyramidEncoder:
    """The frozen encoder ``config.encoder`` names; "auto" is the synthetic backbone for the
    synthetic world and ResNet-101 (ImageNet weights) otherwise."""
    from methods.milan.encoder import torchvision_pyramid

    name = config.encoder
    if name == "auto":
        name = "synthetic" if synthetic else REAL_ENCODER
    if name == "synthetic":
        return synthetic_encoder()
    return torchvision_pyramid(name, "imagenet", download=config.download, cache=cache)


def encode_units(
    encoder: PyramidEncoder,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """float32 [U, k, F] features of U units' exemplars (uint8 images [U,k,3,H,W], masks
    [U,k,1,H,W])."""
    import numpy as np
    import torch

    return encoder.encode(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.ascontiguousarray(masks)),
        batch_size=batch_size,
        progress=progress,
    )


# --- training data ------------------------------------------------------------------------------


def default_train_keys(target_name: str | None, target_family: str | None) -> str:
    if target_family == "synthetic":
        from bench.milannotations import synthetic_keys

        if target_name is not None and f"{target_name}/synthetic" in synthetic_keys():
            return f"not-{target_name}-synthetic"
        return "synthetic"
    return "base"


def training_data(
    keys: str | Sequence[str],
    cache: Cache,
    *,
    root: str | None = None,
    noise: float = 0.2,
    seed: int = 0,
    download: bool = False,
    progress: bool = False,
) -> Milannotations:
    """The annotated units of ``keys``: synthetic keys from the simulated annotators' export."""
    from bench import milannotations as M

    resolved = M.resolve_keys(keys if isinstance(keys, str) else list(keys))
    synthetic = [k for k in resolved if M.key_info(k).synthetic]
    if synthetic and len(synthetic) != len(resolved):
        raise UsageError(
            f"Expected MILANNOTATIONS keys that are all real or all synthetic, got {resolved}."
        )
    if synthetic and root is None:
        from bench.synth.annotators import synthetic_milannotations

        root = str(synthetic_milannotations(cache, noise=noise, seed=seed, progress=progress))
    return M.load(list(resolved), root, download=download, cache=cache, progress=progress)


def data_hash(data: Milannotations) -> str:
    """SHA-256 of the training data's content: every unit's id, annotations, images, masks."""
    import numpy as np

    h = hashlib.sha256()
    for unit in data:
        h.update(f"{unit.key}\0{unit.layer}\0{unit.unit}\0".encode())
        h.update("\0".join(unit.annotations).encode() + b"\1")
        for arr in (unit.images, unit.masks):
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def train_model(
    data: Milannotations,
    encoder: PyramidEncoder,
    config: MilanConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[MilanModel, dict[str, Any]]:
    """Train decoder and language model on ``data`` (MILAN's training settings)."""
    import numpy as np

    from methods.milan.model import DecodingDefaults
    from methods.milan.train import DecoderTrainingConfig, LMTrainingConfig, train_milan

    if len(data) < 2:
        raise UsageError(
            f"Expected at least 2 annotated units to train MILAN on, got {len(data)} "
            f"(keys {', '.join(data.keys)})."
        )
    images = np.stack([u.images for u in data])
    masks = np.stack([u.masks for u in data])
    features = encode_units(encoder, images, masks, progress=progress)
    captions = [list(u.annotations) for u in data]
    dec = DecoderTrainingConfig(
        length=config.max_length,
        batch_size=config.batch_size,
        max_epochs=config.max_epochs,
        patience=config.patience,
        hold_out=config.hold_out,
        seed=seed,
    )
    lm = LMTrainingConfig(
        length=config.max_length, max_epochs=config.max_epochs, patience=config.patience, seed=seed
    )
    model, report = train_milan(
        features,
        captions,
        decoder_config=dec,
        lm_config=lm,
        decoding=DecodingDefaults(
            strategy="rerank", temperature=config.temperature, beam_size=config.beam_size
        ),
        encoder_config=encoder.config,
        device=device,
        progress=progress,
    )
    return model, {"units": len(data), "keys": list(data.keys), "report": report.to_json()}


def training_parts(config: MilanConfig, encoder: PyramidEncoder, digest: str, seed: int) -> dict:
    """What a trained model's cache key holds: the data's content hash, the encoder and every
    setting that changes training (decoding settings do not)."""
    return {
        "version": TRAIN_VERSION,
        "data_sha256": digest,
        "encoder": encoder.config,
        "max_length": config.max_length,
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "hold_out": config.hold_out,
        "batch_size": config.batch_size,
        "seed": seed,
    }


def train_cached(
    data: Milannotations,
    encoder: PyramidEncoder,
    config: MilanConfig,
    cache: Cache,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[MilanModel, Path, bool]:
    """``(model, entry, hit)``: the model trained on ``data``, from the cache when it exists."""
    from bench.schema import write_json
    from methods.milan import checkpoint

    parts = training_parts(config, encoder, data_hash(data), seed)

    def write(directory: Path) -> None:
        model, info = train_model(
            data, encoder, config, seed=seed, device=device, progress=progress
        )
        checkpoint.save(model, directory)
        write_json(directory / "training.json", {"parts": parts, **info})

    entry, hit = cache.get_or_create(MODEL_STAGE, parts, write)
    return checkpoint.load(entry), entry, hit


def _missing_weights(arch: str, ctx: MethodContext, allow: str) -> list[str]:
    """A problem line when the ImageNet weights of the encoder ``arch`` are not on disk."""
    from bench.registry import TARGETS
    from bench.targets import _download_dest

    try:
        spec = TARGETS.get(arch)
    except UsageError:
        return []  # an unknown encoder is reported by make_encoder with the choices
    if not spec.weights_url:
        return []
    dest = _download_dest(spec.weights_url, ctx.cache)
    if dest.is_file():
        return []
    return [
        f"the ImageNet weights of its frozen encoder {arch} ({spec.weights_url}), not at {dest}: "
        f"put the file there, or allow the download with {allow} (--weights applies to the "
        "target, not to MILAN's encoder)"
    ]


# --- the methods --------------------------------------------------------------------------------


class Milan(Method[MilanConfig]):
    """MILAN with weighted-PMI decoding (the paper's method)."""

    name = "milan"
    #: 2: the attention width of trained models follows the original (TRAIN_VERSION 3), and
    #: milan-captioning decodes greedily by default.
    version = "2"
    requires = Requirements(
        evidence=frozenset({"topk", "thresholds", "images"}),
        topk_by=("max",),
        k=15,
        quantiles=(MILAN_QUANTILE,),
        # The trained captioning model, loaded once per worker that takes many shards.
        resources=Resources(gpus=1, gpu_memory=8, actor=True),
    )
    chunk_size = 512

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._model: MilanModel | None = None
        self._encoder: PyramidEncoder | None = None
        self._source: dict[str, Any] = {}

    def check(self, ctx: MethodContext) -> None:
        """What MILAN needs offline, before anything is recorded: a released model file (or its
        download allowed), or MILANNOTATIONS for training plus the encoder's weights."""
        from methods.milan import checkpoint

        super().check(ctx)
        cfg = self.config
        if cfg.download:
            return  # missing files are fetched in fit (a failed download then says why)
        family = ctx.target.spec.family if ctx.target is not None else None
        target_name = ctx.target.name if ctx.target is not None else None
        allow = "--config milan.download=true (downloads when first needed)"
        problems: list[str] = []
        if cfg.model == "train":
            from bench import milannotations as M

            keys = (
                default_train_keys(target_name, family)
                if cfg.train_keys == "auto"
                else cfg.train_keys
            )
            resolved = M.resolve_keys([k.strip() for k in keys.split(",") if k.strip()])
            real = [k for k in resolved if not M.key_info(k).synthetic]
            if real:
                missing = [
                    k for k in real if M.locate(k, cfg.annotations_root, cache=ctx.cache) is None
                ]
                if missing:
                    root = (
                        Path(cfg.annotations_root).expanduser()
                        if cfg.annotations_root
                        else M.default_root(ctx.cache)
                    )
                    problems.append(
                        f"MILANNOTATIONS keys {', '.join(missing)} to train on (train_keys="
                        f"{keys!r}), not found under {root}: put their directories there (or "
                        "point --config milan.annotations_root=DIR or $MILAN_DATA_DIR at them; "
                        "`bench milan train --download` fetches them), or allow the download with "
                        f"{allow}"
                    )
            encoder = cfg.encoder
            if encoder == "auto":
                encoder = "synthetic" if family == "synthetic" else REAL_ENCODER
            if encoder != "synthetic":
                problems += _missing_weights(encoder, ctx, allow)
        elif cfg.model in checkpoint.RELEASED_KEYS and not Path(cfg.model).expanduser().exists():
            dest = ctx.cache.datasets_dir() / "milan-models" / f"milan-{cfg.model}.pth"
            if not dest.is_file():
                problems.append(
                    f"the released MILAN model '{cfg.model}' "
                    f"({checkpoint.released_url(cfg.model)}), not at {dest}: put the file "
                    "there (or pass --config milan.model=PATH to a "
                    f"local milan-{cfg.model}.pth), or allow the download with {allow}"
                )
            problems += _missing_weights(REAL_ENCODER, ctx, allow)
        if problems:
            raise RequirementError(
                "Method 'milan' cannot run offline as configured; it needs "
                + "; and ".join(problems)
                + "."
                + (
                    " Alternatively use a released model (--config milan.model=base, with "
                    "milan-base.pth in the cache or a path), or leave milan out (--methods ...)."
                    if cfg.model == "train"
                    else ""
                )
            )

    def fit(self, ctx: MethodContext) -> None:
        """Load or train the model (cached), and build its encoder."""
        if self._model is not None:
            return
        cfg = self.config
        family = ctx.target.spec.family if ctx.target is not None else None
        target_name = ctx.target.name if ctx.target is not None else None
        if cfg.model == "train":
            keys = (
                default_train_keys(target_name, family)
                if cfg.train_keys == "auto"
                else cfg.train_keys
            )
            encoder = make_encoder(cfg, synthetic=family == "synthetic", cache=ctx.cache)
            data = training_data(
                [k.strip() for k in keys.split(",") if k.strip()],
                ctx.cache,
                root=cfg.annotations_root,
                noise=cfg.annotator_noise,
                seed=ctx.seed,
                download=cfg.download,
                progress=ctx.progress,
            )
            if target_name is not None and f"{target_name}/synthetic" in data.keys:
                log.warning(
                    "milan: training on the described target's own annotations (%s); its "
                    "descriptions are not held out.",
                    target_name,
                )
            model, entry, hit = train_cached(
                data, encoder, cfg, ctx.cache, seed=ctx.seed, device=ctx.device,
                progress=ctx.progress,
            )  # fmt: skip
            self._source = {
                "model": "trained",
                "train_keys": list(data.keys),
                "units": len(data),
                "cache_entry": entry.name,
                "cached": hit,
            }
        else:
            model = self._load_given(cfg.model, ctx.cache)
            encoder = build_encoder(model.encoder_config, download=cfg.download, cache=ctx.cache)
            self._source = {"model": cfg.model}
        self._model = model
        self._encoder = encoder

    def _load_given(self, spec: str, cache: Cache) -> MilanModel:
        from methods.milan import checkpoint

        path = Path(spec).expanduser()
        if spec in checkpoint.RELEASED_KEYS and not path.exists():
            root = cache.datasets_dir() / "milan-models"
            return checkpoint.load_released(
                checkpoint.fetch_released(spec, root, download=self.config.download)
            )
        if path.is_dir():
            return checkpoint.load(path)
        if path.is_file():
            return checkpoint.load_released(path)
        raise ConfigError(
            f"Expected milan.model to be 'train', a released key "
            f"({', '.join(checkpoint.RELEASED_KEYS)}), a milan-<key>.pth file or a directory "
            f"written by 'bench milan train'; got {spec!r}, which is none of them."
        )

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        from bench.exemplars import ProbeViews, compute_exemplars

        self.fit(ctx)
        assert self._model is not None and self._encoder is not None
        cfg = self.config
        out: dict[UnitRef, Description] = {}
        if evidence.target is None:
            raise RequirementError(
                "MILAN crops exemplars with the target's preprocessing; expected evidence "
                "recorded from a target, got evidence without one."
            )
        views = ProbeViews(evidence.probe, evidence.target.preprocessing)
        by_layer: dict[str, list[int]] = {}
        for u in units:
            by_layer.setdefault(u.layer, []).append(u.index)
        for layer, indices in by_layer.items():
            ex = compute_exemplars(
                evidence, layer, indices, k=cfg.k, views=views, progress=ctx.progress
            )
            features = encode_units(self._encoder, ex.images, ex.masks, progress=ctx.progress)
            decoded = self._model.describe(
                features,
                strategy=cfg.strategy,
                beam_size=cfg.beam_size,
                temperature=cfg.temperature,
                allow_empty=cfg.allow_empty,
                progress=ctx.progress,
            )
            for index, d in zip(indices, decoded, strict=True):
                unit = UnitRef(layer=layer, index=index)
                if not d.text.strip():
                    out[unit] = Description(
                        unit=unit, label="", status="error", error="the decoder emitted no words"
                    )
                    continue
                out[unit] = Description(
                    unit=unit,
                    label=d.text,
                    score=float(d.score),
                    score_name="wpmi" if cfg.strategy == "rerank" else "log p(d|E)",
                    extras={
                        "strategy": cfg.strategy,
                        "logp": float(d.logp),
                        "lm_logp": None if d.lm_logp is None else float(d.lm_logp),
                        "exemplars": [int(i) for i in ex.ids[indices.index(index)]],
                        **self._source,
                    },
                )
        return [out[u] for u in units]


class MilanCaptioning(Milan):
    """The paper's no-PMI baseline: the most probable description under ``p(d | E)`` alone,
    found greedily (the original's choice) or by beam search (``strategy="beam"``)."""

    name = "milan-captioning"
    Config = MilanCaptioningConfig


# --- `bench milan train` and the generalisation experiments -------------------------------------


def train_on_keys(
    keys: str,
    out: str | Path | None,
    *,
    cache: Cache,
    config: MilanConfig | None = None,
    hold_out_keys: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train MILAN on ``keys`` minus ``hold_out_keys`` (cached); copy the model to ``out``.

    Returns the model directory (``out``, or the cache entry) and what was trained on.
    """
    import shutil

    from bench import milannotations as M

    config = config or MilanConfig()
    wanted = M.resolve_keys([k.strip() for k in keys.split(",") if k.strip()])
    held = (
        set(M.resolve_keys([k.strip() for k in hold_out_keys.split(",") if k.strip()]))
        if hold_out_keys
        else set()
    )
    train_keys = [k for k in wanted if k not in held]
    if not train_keys:
        raise UsageError(
            f"Every key of {list(wanted)} is held out ({sorted(held)}); "
            "nothing is left to train on."
        )
    synthetic = M.key_info(train_keys[0]).synthetic
    encoder = make_encoder(config, synthetic=synthetic)
    data = training_data(
        train_keys,
        cache,
        root=config.annotations_root,
        noise=config.annotator_noise,
        seed=seed,
        download=config.download,
        progress=progress,
    )
    _, entry, hit = train_cached(
        data, encoder, config, cache, seed=seed, device=device, progress=progress
    )
    info = {"train_keys": train_keys, "held_out": sorted(held), "units": len(data), "cached": hit}
    if out is None:
        return entry, info
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"Expected a new or empty directory for the model, got {dest}.")
    dest.mkdir(parents=True, exist_ok=True)
    for f in entry.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    return dest, info


def evaluate_split(
    split: Any,
    *,
    cache: Cache,
    config: MilanConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Train on a :class:`methods.milan.splits.Split`'s train units, describe its test units from
    their MILANNOTATIONS exemplars, and score corpus BLEU against their annotations with each
    decoding strategy (``bleu_rerank``: wPMI, as MILAN's ``experiments/generalization.py``;
    ``bleu_greedy``: the original's no-PMI baseline; ``bleu_beam``: p(d|E) by beam search)."""
    import numpy as np

    from bench import milannotations as M
    from methods.milan.train import corpus_bleu

    config = config or MilanConfig()
    synthetic = M.key_info(split.train_keys[0]).synthetic
    encoder = make_encoder(config, synthetic=synthetic, cache=cache)
    root = config.annotations_root
    if synthetic and root is None:
        from bench.synth.annotators import synthetic_milannotations

        root = str(
            synthetic_milannotations(
                cache, noise=config.annotator_noise, seed=seed, progress=progress
            )
        )
    from methods.milan.splits import load_split

    train, test = load_split(split, root, download=config.download, cache=cache, progress=progress)
    model, _, _ = train_cached(
        train, encoder, config, cache, seed=seed, device=device, progress=progress
    )
    features = encode_units(
        encoder,
        np.stack([u.images for u in test]),
        np.stack([u.masks for u in test]),
        progress=progress,
    )
    references = [list(u.annotations) for u in test]
    out: dict[str, Any] = {
        "experiment": split.experiment,
        "name": split.name,
        "train_keys": list(split.train_keys),
        "test_keys": list(split.test_keys),
        "train_units": len(train),
        "test_units": len(test),
    }
    for strategy in STRATEGIES:
        decoded = model.describe(
            features,
            strategy=strategy,
            beam_size=config.beam_size,
            temperature=config.temperature,
            progress=progress,
        )
        out[f"bleu_{strategy}"] = round(corpus_bleu([d.text for d in decoded], references), 4)
    return out
