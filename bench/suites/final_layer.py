"""``final-layer``: final-layer units against the names of the classes they score.

A final-layer unit's ground truth is its class. DnD (Table 2, methods.md 4.3) and CLIP-Dissect
(Table 1, 5.3) score ResNet-50's 1000 fc units against the class's line of synonyms ("tench,
Tinca tinca"): CLIP ViT-B/16 text cosine and all-mpnet-base-v2 cosine of the raw strings, and
BERTScore F1 with ``evaluate``'s defaults (roberta-large, no idf, no rescaling: preset ``dnd``).

Class names (``class_names=``):

* ``target`` (default): the target's own, read without its weights: torchvision's names from
  the weights' metadata (offline), the Places365 category list (fetched on request), a
  synthetic target's card;
* ``synonyms``: the papers' ImageNet synonym lines, fetched on request (``download``) from a
  pinned commit of CLIP-Dissect's ``data/imagenet_labels.txt`` (the file DnD ships too) and
  checked against its SHA-256; only for 1000-class ImageNet targets;
* a path: a text file with one class name per line, in class-index order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, DataError, DownloadError, UsageError
from bench.schema import UnitRef
from bench.suites.base import Suite, SuiteContext, SuiteScores, TargetInfo, UnitEntry
from bench.suites.text import TextJob, bertscore_preset, text_metrics

if TYPE_CHECKING:
    from bench.cache import Cache

log = logging.getLogger(__name__)

#: The ImageNet synonym lines ("tench, Tinca tinca"), 1000 lines without a trailing newline:
#: CLIP-Dissect's data/imagenet_labels.txt at a pinned commit (DnD's copy is identical).
SYNONYMS_URL = (
    "https://raw.githubusercontent.com/Trustworthy-ML-Lab/CLIP-dissect/"
    "c1565e179fd68b3d5c03c61e827e836e14a6cab7/data/imagenet_labels.txt"
)
SYNONYMS_SHA256 = "8b243a5b56f530010b42d64d8ef33c2660224447aded823f4d9de2cb1902a70e"
SYNONYMS_FILE = "imagenet_labels.txt"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class FinalLayerConfig:
    #: ``target``, ``synonyms`` (the papers' ImageNet synonym lines) or a file of class names.
    class_names: str = "target"
    #: BERTScore preset; ``None``: ``offline`` with offline text models, else ``dnd``.
    bertscore: str | None = None


def synonyms_path(cache: Cache) -> Path:
    """Where the synonym lines are kept: ``<cache>/datasets/imagenet_labels.txt``."""
    return cache.datasets_dir() / SYNONYMS_FILE


def parse_class_lines(path: Path, expected: int | None = None) -> tuple[str, ...]:
    """One class name (or synonym line) per line, stripped; blank lines are errors."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Could not read class names from {path}: {e}.") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = [line.strip() for line in lines]
    for i, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path}: line {i}: expected a class name, got an empty line.")
    if expected is not None and len(names) != expected:
        raise DataError(
            f"{path}: expected {expected} class names (one per line, in class-index order), "
            f"got {len(names)}."
        )
    return tuple(names)


def fetch_synonyms(cache: Cache, *, download: bool, progress: bool = False) -> Path:
    """The synonym lines on disk, downloaded (checksum-checked) when missing and allowed."""
    from bench.download import ensure_file

    dest = synonyms_path(cache)
    try:
        path, _ = ensure_file(
            SYNONYMS_URL,
            dest,
            sha256=SYNONYMS_SHA256,
            what="the ImageNet synonym lines",
            download_missing=download,
            timeout=10.0,
            progress=progress,
        )
    except DownloadError as e:
        if not download and not dest.is_file():
            raise DownloadError(
                f"The ImageNet synonym lines (final-layer.class_names=synonyms) are not at "
                f"{dest}. Pass --download to fetch them from {SYNONYMS_URL} (sha256 "
                f"{SYNONYMS_SHA256[:12]}...), put that file there yourself, or score against "
                "the target's class names (the default)."
            ) from e
        raise
    return path


def target_class_names(
    target: TargetInfo, *, download: bool = False, progress: bool = False
) -> tuple[tuple[str, ...], str]:
    """The target's class names, read without its weights, and where they came from."""
    spec = target.require_spec("final-layer")
    names: tuple[str, ...] | None = None
    if spec.family == "torchvision":
        from bench.targets import torchvision_class_names

        names = torchvision_class_names(spec)
    elif spec.family == "places365":
        from bench.targets import places365_class_names

        names = places365_class_names(download=download, progress=progress)
        if names is None:
            raise DownloadError(
                f"The Places365 class names of '{spec.name}' are not available offline; pass "
                "--download to fetch the category list, or final-layer.class_names=FILE."
            )
    elif spec.family == "synthetic":
        from bench.synth.recipes import recipe
        from bench.synth.targets import load_card

        try:
            names = tuple(load_card(spec.name)["class_names"])
        except (BenchError, KeyError):  # no card: the recipe's names
            names = recipe(spec.name).class_names
    else:
        raw = spec.options.get("class_names")
        names = tuple(raw) if raw else None
    if not names:
        raise UsageError(
            f"Target '{spec.name}' has no class names ({spec.class_names_source or 'none'}); "
            "pass final-layer.class_names=FILE (one class name per line)."
        )
    return tuple(names), spec.class_names_source or spec.family


class FinalLayerSuite(Suite[FinalLayerConfig]):
    """Final-layer units against their class names."""

    name = "final-layer"
    version = "1"
    text_models = ("bertscore", "sentence", "clip")
    summary = "final-layer units against the names of their classes"

    def applicable(self, target: TargetInfo) -> str | None:
        if target.spec is None:
            return "it is not a registered target, so its final layer and classes are unknown"
        if target.layers and target.final_layer not in target.layers:
            return (
                f"its final layer '{target.final_layer}' was not described (layers: "
                f"{', '.join(target.layers)})"
            )
        return None

    def class_names(self, ctx: SuiteContext) -> tuple[tuple[str, ...], dict[str, Any]]:
        spec = ctx.target.require_spec(self.name)
        choice = self.config.class_names
        if choice == "target":
            names, source = target_class_names(
                ctx.target, download=ctx.options.download, progress=ctx.options.progress
            )
            return names, {"kind": "target", "source": source}
        if choice == "synonyms":
            if spec.num_classes != IMAGENET_CLASSES or spec.family not in ("torchvision",):
                raise UsageError(
                    f"final-layer.class_names=synonyms are the ImageNet synonym lines; target "
                    f"'{spec.name}' is not an ImageNet-1k classifier ({spec.num_classes} "
                    "classes). Use its own class names (the default) or a file."
                )
            path = fetch_synonyms(
                ctx.cache, download=ctx.options.download, progress=ctx.options.progress
            )
            names = parse_class_lines(path, IMAGENET_CLASSES)
            return names, {"kind": "synonyms", "url": SYNONYMS_URL, "sha256": SYNONYMS_SHA256}
        path = Path(choice).expanduser()
        if not path.is_file():
            raise UsageError(
                f"Expected final-layer.class_names to be 'target', 'synonyms' or a file of class "
                f"names; no file at {path}."
            )
        from bench.cache import sha256_file

        names = parse_class_lines(path, spec.num_classes)
        return names, {"kind": "file", "file": path.name, "sha256": sha256_file(path)}

    def _score(self, ctx: SuiteContext) -> SuiteScores:
        spec = ctx.target.require_spec(self.name)
        final = spec.final_layer
        names, source = self.class_names(ctx)
        described = ctx.described_units([final])
        if not described:
            # Only constant labels (or nothing described): every class.
            units = [UnitRef(layer=final, index=i) for i in range(len(names))]
        else:
            outside = [u for u in described if u.index >= len(names)]
            if outside:
                raise DataError(
                    f"Suite 'final-layer': labels describe unit {outside[0].index} of '{final}', "
                    f"but '{spec.name}' has {len(names)} classes (0-based units 0-"
                    f"{len(names) - 1}). Are the labels of another target, or 1-based?"
                )
            units = described
        preset = bertscore_preset(ctx.options, "dnd", self.config.bertscore)
        jobs = [
            TextJob(name, u, label, (names[u.index],))
            for name, m in ctx.methods.items()
            for u in units
            if (label := m.label(u)) is not None
        ]
        metrics = text_metrics(jobs, options=ctx.options, device=ctx.device, bertscore=preset)
        from bench.suites.identification import identification_metrics

        metrics += identification_metrics(
            ctx.methods,
            units,
            {u: (names[u.index],) for u in units},
            options=ctx.options,
            device=ctx.device,
        )
        entries = [UnitEntry(unit=u, references={"class_name": (names[u.index],)}) for u in units]
        settings = {
            "layer": final,
            "class_names": source,
            "classes": len(names),
            "units": len(units),
            "bertscore_preset": preset,
            "reference": "each final-layer unit's label against its class name",
        }
        return SuiteScores(units=entries, metrics=metrics, settings=settings)
