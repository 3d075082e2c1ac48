"""``milannotations``: agreement of each label with the unit's human annotations.

MILAN (Hernandez et al. 2022, Table 2) scores a description against the three MILANNOTATIONS
of its unit; DnD (Bai, Oikarinen et al. 2024, Table 9) showed that the constant label
"depiction" beats every method there, and that annotators agree with each other about as well.
So this suite reports, per metric (BERTScore, sentence cosine, CLIP text cosine):

* every method's label against each of the unit's annotations (per the BERTScore preset:
  averaged for ``dnd``/``offline``, the best reference for ``milan``, as bert-score does for
  MILAN's multi-reference call), per layer and overall, the ``depictions`` baseline included;
* the **inter-annotator ceiling** beside them: each annotation against the unit's other ones,
  averaged over the annotations;
* **identification** (:mod:`bench.suites.identification`): top-1 accuracy and reciprocal rank of
  each unit's own annotations among every scored unit's annotations under the sentence cosine
  (the label's mean cosine with a unit's annotations), with its inter-annotator ceiling (each
  annotation as the label, its unit's other annotations as the own references);
* with ``protocol="dnd"``, only the units DnD counts as *reliable* (methods.md 4.3: some pair of
  the unit's three annotations has CLIP ViT-B/16 text cosine above 0.81). Offline there is no
  CLIP: the offline sentence encoder stands in, and its cosines are on another scale (at 0.81 it
  keeps 3 of DnD's 200 ResNet-152 units), so by default the threshold is calibrated to it: the
  quantile of the units' best annotator-pair cosine that keeps the share CLIP's 0.81 keeps in
  DnD's notebook, 103 of 200 (``reliable_threshold=`` overrides; the result states the threshold
  and how it was chosen). Significance groups are withheld below :data:`MIN_GROUP_UNITS` units
  shared by every method, and the result says so.

What the papers' numbers rest on (DnD, Bai, Oikarinen et al. 2024, Table 9): on the
103 reliable ResNet-152 units, CLIP cos MILAN 0.7698, CLIP-Dissect 0.7390, DnD 0.7766, constant
"depiction" 0.7864, annotators 0.7884; mpnet cos 0.1391, 0.1970, 0.1089, **0.2496**, 0.1215;
BERTScore 0.8472, 0.8368, 0.8489, 0.8541, 0.8482. The mpnet column is not an agreement with the
annotations. DnD's notebook (``experiments/table9_milannotations_rn152.ipynb`` in
Trustworthy-ML-Lab/Describe-and-Dissect) calls ``utils.get_cos_similarity(label, annotation,
...)`` with one label string and one annotation string; that helper (``utils.py``) embeds
``gt`` for mpnet as ``mpnet_model.encode([gt_x for gt_x in gt])``, which for a string is the list
of its *characters*, while ``mpnet_model.encode(preds)`` of one string is one vector; the
broadcast ``np.sum(pred_embeds * gt_embeds, axis=1)`` then averages the label's cosine with each
single character of the annotation. So the mpnet numbers, and the constant label's lead in that
column (0.2496 against at most 0.1970), measure closeness to single letters. The CLIP column
(``clip.tokenize`` of the whole string), the BERTScore column (``bertscore.compute`` on
one-element lists) and the reliability filter (CLIP) use whole strings; those comparisons stand.
This suite embeds whole annotations in every metric, so its sentence cosine is not comparable
with DnD's mpnet column.

Where the annotations come from, in this order:

1. ``annotations=`` a bare ``annotations.csv`` (``layer,unit,summary``; any target): scoring needs
   only this text, so labels imported from elsewhere are scored without weights or images;
2. ``key=`` a MILANNOTATIONS key, or the target's own: ``alexnet`` (``alexnet/imagenet``),
   ``alexnet.places365``, ``resnet152`` (``resnet152/imagenet``), ``resnet152.places365``,
   ``biggan.imagenet``/``biggan.places365`` and ``dino_vits8``; real MILANNOTATIONS covers
   only these, and asking for another real target is an error; AlexNet's ``conv1..conv5`` are
   torchvision's ``features.0/3/6/8/10``;
3. synthetic targets: their simulated annotations (``<target>/synthetic``), at the noise MILAN's
   training uses by default (``noise=0.2``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, DataError, UsageError
from bench.schema import UnitRef
from bench.suites.base import (
    Suite,
    SuiteContext,
    SuiteScores,
    TargetInfo,
    UnitEntry,
)
from bench.suites.text import TextJob, bertscore_preset, text_metrics

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("all", "dnd")
#: DnD's reliability threshold on CLIP text cosine between two annotations (methods.md 4.3).
RELIABLE_THRESHOLD = 0.81
#: What DnD's 0.81 keeps with CLIP ViT-B/16 on the units DnD labelled (ResNet-152 ImageNet,
#: 50 units in each of layer1..layer4): 22 + 22 + 31 + 28 = 103 of 200 units, as printed by
#: ``experiments/table9_milannotations_rn152.ipynb``. Another encoder's cosines are on another
#: scale (the offline MiniLM's 0.81 keeps 3 of those 200), so its threshold is the quantile of
#: the units' best-pair cosine that keeps the same share.
CLIP_RELIABLE_KEPT = 103
CLIP_RELIABLE_OF = 200
#: Below this many units shared by every method, significance groups are not reported.
MIN_GROUP_UNITS = 20
#: Simulated annotators' default noise, as MILAN trains on (bench.synth.annotators.DEFAULT_NOISE).
DEFAULT_NOISE = 0.2
CEILING_NOTE = "each annotation against the unit's other annotations"

#: Registered target (or model name) -> its MILANNOTATIONS key.
TARGET_KEYS: dict[str, str] = {
    "alexnet": "alexnet/imagenet",
    "alexnet.places365": "alexnet/places365",
    "resnet152": "resnet152/imagenet",
    "resnet152.places365": "resnet152/places365",
    "biggan.imagenet": "biggan/imagenet",
    "biggan.places365": "biggan/places365",
    "dino_vits8": "dino_vits8/imagenet",
}
_ALEXNET = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
}
#: MILANNOTATIONS layer names -> the harness's (torchvision) layer names, per key.
LAYER_ALIASES: dict[str, dict[str, str]] = {
    "alexnet/imagenet": _ALEXNET,
    "alexnet/places365": _ALEXNET,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MilannotationsConfig:
    #: ``all``: every annotated unit (MILAN, Table 2); ``dnd``: only reliable units (DnD, Table 9).
    protocol: str = "all"
    #: BERTScore preset; ``None``: ``offline`` with offline text models, else ``milan``
    #: (``dnd`` under the DnD protocol).
    bertscore: str | None = None
    #: A bare ``annotations.csv`` (``layer,unit,summary``) to score against instead.
    annotations: str | None = None
    #: A MILANNOTATIONS key (``resnet152/imagenet``); ``None``: the target's.
    key: str | None = None
    #: Directory holding the MILANNOTATIONS keys; ``None``: ``$MILAN_DATA_DIR`` or the cache's.
    root: str | None = None
    #: Noise and seed of the simulated annotators (synthetic targets).
    noise: float = DEFAULT_NOISE
    annotation_seed: int = 0
    #: DnD protocol: reliable when some pair of annotations has text cosine above this.
    #: ``None``: DnD's 0.81 with CLIP ViT-B/16; with another encoder (offline), calibrated to it:
    #: the quantile of the units' best-pair cosine that keeps the share CLIP's 0.81 keeps in
    #: DnD's notebook (:data:`CLIP_RELIABLE_KEPT` of :data:`CLIP_RELIABLE_OF`). A number is used
    #: as given, on whatever encoder is in use.
    reliable_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Expected protocol in {PROTOCOLS}, got {self.protocol!r}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"Expected noise in [0, 1], got {self.noise!r}")
        if self.reliable_threshold is not None and not -1.0 <= self.reliable_threshold <= 1.0:
            raise ValueError(
                f"Expected reliable_threshold in [-1, 1], got {self.reliable_threshold!r}"
            )


def milannotations_key(target: TargetInfo, key: str | None = None) -> str | None:
    """The MILANNOTATIONS key of ``target`` (or ``key`` validated), ``None`` when it has none."""
    from bench.milannotations import resolve_keys, synthetic_keys

    if key is not None:
        keys = resolve_keys(key)
        if len(keys) != 1:
            raise ConfigError(
                f"Expected one MILANNOTATIONS key for milannotations.key, got the grouping "
                f"'{key}' ({', '.join(keys)})."
            )
        return keys[0]
    if target.synthetic:
        synth = f"{target.name}/synthetic"
        return synth if synth in synthetic_keys() else None
    return TARGET_KEYS.get(target.name)


def leave_one_out(texts: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The inter-annotator ceiling's pairs of one unit: each annotation held out as the label,
    against the unit's other annotations (none for a unit with fewer than two)."""
    if len(texts) < 2:
        return []
    return [(t, texts[:i] + texts[i + 1 :]) for i, t in enumerate(texts)]


def canonical_layer(key: str | None, layer: str) -> str:
    """``layer`` as the harness names it (AlexNet ``conv3`` -> ``features.6``)."""
    if key is None:
        return layer
    return LAYER_ALIASES.get(key, {}).get(layer, layer)


class MilannotationsSuite(Suite[MilannotationsConfig]):
    """Labels against each unit's annotations, with the inter-annotator ceiling."""

    name = "milannotations"
    version = "1"
    text_models = ("bertscore", "sentence", "clip")
    summary = "labels against the units' MILANNOTATIONS, with the inter-annotator ceiling"

    def applicable(self, target: TargetInfo) -> str | None:
        if self.config.annotations is not None:
            return None
        if milannotations_key(target, self.config.key) is not None:
            return None
        covered = ", ".join(sorted(TARGET_KEYS))
        return (
            f"MILANNOTATIONS covers AlexNet, ResNet-152, BigGAN and DINO only (targets {covered}; "
            "synthetic targets use their simulated annotations). Score against your own "
            "annotations with milannotations.annotations=FILE (an annotations.csv with columns "
            "layer,unit,summary), or name a key with milannotations.key=MODEL/DATASET."
        )

    # --- annotations ----------------------------------------------------------------------------

    def annotations(self, ctx: SuiteContext) -> tuple[dict[UnitRef, tuple[str, ...]], dict]:
        """Every annotated unit's annotations, and where they came from (see the module
        docstring for the order in which sources are tried)."""
        from bench.milannotations import read_annotations_csv

        cfg = self.config
        if cfg.annotations is not None:
            from bench.cache import sha256_file

            path = Path(cfg.annotations).expanduser()
            raw = read_annotations_csv(path)
            source: dict[str, Any] = {
                "kind": "annotations.csv",
                "file": path.name,
                "sha256": sha256_file(path),
            }
            # Layer names as the target's key spells them (AlexNet conv1..conv5) are mapped.
            key = milannotations_key(ctx.target, cfg.key)
        else:
            key = milannotations_key(ctx.target, cfg.key)
            assert key is not None  # applicable() checked it
            if key.endswith("/synthetic"):
                raw, source = self._synthetic(ctx, key)
            else:
                from bench.milannotations import load

                data = load(
                    key,
                    cfg.root,
                    download=ctx.options.download,
                    images=False,
                    cache=ctx.cache,
                    progress=ctx.options.progress,
                )
                raw = {(u.layer, u.unit): texts for u, texts in data.texts().items()}
                source = {"kind": "MILANNOTATIONS", "key": key}
        out: dict[UnitRef, tuple[str, ...]] = {}
        for (layer, unit), texts in raw.items():
            u = UnitRef(layer=canonical_layer(key, layer), index=int(unit))
            out[u] = tuple(texts)
        return out, source

    def _synthetic(
        self, ctx: SuiteContext, key: str
    ) -> tuple[dict[tuple[str, int], tuple[str, ...]], dict[str, Any]]:
        from bench.milannotations import ANNOTATIONS_FILE, read_annotations_csv
        from bench.synth.annotators import key_dirname, synthetic_milannotations

        cfg = self.config
        root = synthetic_milannotations(
            ctx.cache,
            noise=cfg.noise,
            seed=cfg.annotation_seed,
            targets=[ctx.target.name],
            progress=ctx.options.progress,
        )
        path = root / key_dirname(key) / ANNOTATIONS_FILE
        raw = read_annotations_csv(path, annotation_count=3)
        source = {
            "kind": "simulated annotators",
            "key": key,
            "noise": cfg.noise,
            "seed": cfg.annotation_seed,
        }
        return raw, source

    # --- the DnD protocol -----------------------------------------------------------------------

    def _reliability(
        self, ctx: SuiteContext, annotations: dict[UnitRef, tuple[str, ...]], units: list[UnitRef]
    ) -> tuple[dict[UnitRef, float], dict[str, Any], str]:
        """Each unit's largest pairwise text cosine among its annotations."""
        import numpy as np

        from bench.suites.text import embed, encoder_for, identity

        encoder, note = encoder_for(ctx.options, ctx.device, kind="clip")
        texts = [t for u in units for t in annotations[u]]
        emb = embed(encoder, texts, progress=ctx.options.progress)
        out: dict[UnitRef, float] = {}
        start = 0
        for u in units:
            n = len(annotations[u])
            e = emb[start : start + n]
            start += n
            if n < 2:
                out[u] = float("-inf")
                continue
            sims = np.clip(e @ e.T, -1.0, 1.0)  # identical annotations: 1, not 1.0000001
            out[u] = float(max(sims[i, j] for i in range(n) for j in range(i + 1, n)))
        threshold, calibration = self._threshold(out, clip=not note)
        settings = {
            "reliable": "some pair of the unit's annotations has text cosine above the threshold",
            "reliable_threshold": threshold,
            "reliable_calibration": calibration,
            "reliable_encoder": identity(encoder),
        }
        return out, settings, note

    def _threshold(self, best: dict[UnitRef, float], *, clip: bool) -> tuple[float, str]:
        """The reliability threshold for the encoder in use, and how it was chosen."""
        import numpy as np

        given = self.config.reliable_threshold
        if given is not None:
            return float(given), "given (milannotations.reliable_threshold)"
        if clip:
            return RELIABLE_THRESHOLD, "DnD's threshold for CLIP ViT-B/16 text cosine"
        share = CLIP_RELIABLE_KEPT / CLIP_RELIABLE_OF
        values = np.array([v for v in best.values() if np.isfinite(v)], dtype=np.float64)
        if values.size == 0:
            return RELIABLE_THRESHOLD, "no unit has two annotations; DnD's CLIP threshold"
        # "above the threshold" keeps the units strictly above the (1 - share) quantile.
        q = float(np.quantile(values, 1.0 - share, method="lower"))
        return q, (
            f"calibrated to this encoder: the {1.0 - share:.3f} quantile of the units' best "
            f"annotator-pair cosine, keeping the share ({CLIP_RELIABLE_KEPT}/"
            f"{CLIP_RELIABLE_OF}) that CLIP's {RELIABLE_THRESHOLD} keeps on ResNet-152 in DnD's "
            "notebook"
        )

    # --- scoring --------------------------------------------------------------------------------

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        cfg = self.config
        annotations, source = self.annotations(ctx)
        if not annotations:
            raise DataError(f"Suite 'milannotations': the annotations ({source}) hold no units.")
        described = ctx.described_units()
        if described:
            units = [u for u in described if u in annotations]
        else:  # only constant labels: every annotated unit
            order = {layer: i for i, layer in enumerate(ctx.target.layers)}
            units = sorted(annotations, key=lambda u: (order.get(u.layer, len(order)), u.index))
        if described and not units:
            labelled = sorted({u.layer for u in described})
            annotated = sorted({u.layer for u in annotations})
            raise UsageError(
                "Suite 'milannotations': no labelled unit has annotations. Labels cover layers "
                f"{', '.join(labelled)}; the annotations cover {', '.join(annotated)}."
            )
        settings: dict[str, Any] = {
            "protocol": cfg.protocol,
            "annotations": source,
            "units_annotated": len(annotations),
            "reference": "each label against each of its unit's annotations",
        }
        notes: list[str] = []
        details: dict[UnitRef, dict[str, Any]] = {u: {} for u in units}
        if cfg.protocol == "dnd":
            settings["units_labelled"] = len(units)
            best, rel_settings, note = self._reliability(ctx, annotations, units)
            settings.update(rel_settings)
            threshold = rel_settings["reliable_threshold"]
            if note:
                notes.append(
                    f"DnD reliable units: {note}, at threshold {threshold:.4f} "
                    f"({rel_settings['reliable_calibration']})"
                )
            kept = [u for u in units if best[u] > threshold]
            for u in kept:
                details[u] = {"reliable": True, "max_pair_cosine": best[u]}
            settings["units_reliable"] = len(kept)
            if not kept:
                raise UsageError(
                    f"Suite 'milannotations' (DnD protocol): none of {len(units)} units is "
                    f"reliable (no pair of annotations above {threshold}); lower "
                    "milannotations.reliable_threshold or use protocol=all."
                )
            units = kept
        preset = bertscore_preset(
            ctx.options, "dnd" if cfg.protocol == "dnd" else "milan", cfg.bertscore
        )
        settings["bertscore_preset"] = preset
        jobs: list[TextJob] = []
        for name, m in ctx.methods.items():
            for u in units:
                label = m.label(u)
                if label is not None:
                    jobs.append(TextJob(name, u, label, annotations[u]))
        for u in units:
            for t, others in leave_one_out(annotations[u]):
                jobs.append(TextJob(None, u, t, others))
        refs = [t for u in units for t in annotations[u]]
        metrics = text_metrics(
            jobs,
            options=ctx.options,
            device=ctx.device,
            bertscore=preset,
            idf_sentences=refs,
            ceiling_note=CEILING_NOTE,
        )
        from bench.suites.identification import identification_metrics

        metrics += identification_metrics(
            ctx.methods,
            units,
            {u: annotations[u] for u in units},
            options=ctx.options,
            device=ctx.device,
            ceiling=True,
        )
        entries = [
            UnitEntry(
                unit=u, references={"annotations": annotations[u]}, details=details.get(u, {})
            )
            for u in units
        ]
        settings["units"] = len(units)
        return SuiteScores(
            units=entries,
            metrics=metrics,
            settings=settings,
            offline_notes=notes,
            groups_min_units=MIN_GROUP_UNITS if cfg.protocol == "dnd" else 0,
        )
