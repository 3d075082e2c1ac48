"""Text similarity of labels to references, for the suites that score text against text.

One call per metric scores every method's labels (and the ceiling's pairs) together, so a model
loads once and BERTScore's idf (MILAN preset) is computed once over the suite's references.

Metrics, in display order (``metrics.text``):

* ``bertscore``: F1; the preset is ``offline`` with offline text models, otherwise the suite's
  paper preset (``milan`` for MILANNOTATIONS, ``dnd`` elsewhere) or the one a suite config names;
* ``sentence-cosine``: all-mpnet-base-v2 (papers) or all-MiniLM-L6-v2 (offline);
* ``clip-cosine``: CLIP ViT-B/16 text tower (papers); reported unavailable offline, never faked.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.suites.base import MetricValues, ScoreOptions

if TYPE_CHECKING:
    import numpy as np

    from metrics.result import MetricResult
    from metrics.text import TextEncoder

TEXT_METRICS: tuple[str, ...] = ("bertscore", "sentence-cosine", "clip-cosine")


@dataclass(frozen=True, slots=True)
class TextJob:
    """Score ``candidate`` against ``references`` for ``method`` on ``item``; ``method=None``
    marks a ceiling pair (several per item are averaged)."""

    method: str | None
    item: Hashable
    candidate: str
    references: tuple[str, ...]


def bertscore_preset(options: ScoreOptions, paper_default: str, override: str | None) -> str:
    """The BERTScore preset to use: ``override`` if given, else ``offline`` with offline text
    models, else the suite's paper preset."""
    from metrics.text import BERTSCORE_PRESETS

    if override is not None:
        if override not in BERTSCORE_PRESETS:
            raise ConfigError(
                f"Expected a BERTScore preset in {', '.join(BERTSCORE_PRESETS)}, got {override!r}."
            )
        return override
    return "offline" if options.offline else paper_default


def text_metric(
    name: str,
    candidates: list[str],
    references: list[list[str]],
    *,
    options: ScoreOptions,
    device: str,
    preset: str,
    idf_sentences: Sequence[str] | None,
) -> MetricResult:
    """One text metric of ``candidates`` against their ``references``, with the models and
    presets the suites use (``preset``: the BERTScore preset, :func:`bertscore_preset`)."""
    from metrics.text import bertscore, clip_text_cosine, sentence_cosine

    text = "offline" if options.offline else "papers"
    if name == "bertscore":
        return bertscore(
            candidates,
            references,
            preset=preset,
            idf_sentences=idf_sentences,
            device=device,
            progress=options.progress,
        )
    if name == "sentence-cosine":
        return sentence_cosine(
            candidates, references, preset=text, device=device, progress=options.progress
        )
    if name == "clip-cosine":
        return clip_text_cosine(
            candidates, references, preset=text, device=device, progress=options.progress
        )
    raise ConfigError(f"Expected a text metric in {', '.join(TEXT_METRICS)}, got {name!r}.")


def text_metrics(
    jobs: Sequence[TextJob],
    *,
    options: ScoreOptions,
    device: str,
    bertscore: str,
    idf_sentences: Sequence[str] | None = None,
    ceiling_note: str = "",
    metrics: Sequence[str] = TEXT_METRICS,
) -> list[MetricValues]:
    """Every text metric of every job, split by method (and the ceiling) and item."""
    candidates = [j.candidate for j in jobs]
    references = [list(j.references) for j in jobs]
    has_ceiling = any(j.method is None for j in jobs)
    out = []
    for name in metrics:
        result = text_metric(
            name,
            candidates,
            references,
            options=options,
            device=device,
            preset=bertscore,
            idf_sentences=idf_sentences,
        )
        mv = MetricValues.from_result(result, name=name)
        if not result.ok:
            out.append(mv)
            continue
        ceiling: dict[Hashable, list[float]] = {}
        for job, value in zip(jobs, result.values, strict=True):
            if not math.isfinite(value):
                continue
            if job.method is None:
                ceiling.setdefault(job.item, []).append(value)
            else:
                mv.values.setdefault(job.method, {})[job.item] = value
        if has_ceiling:
            mv.ceiling = {k: math.fsum(v) / len(v) for k, v in ceiling.items()}
            mv.ceiling_note = ceiling_note
        out.append(mv)
    return out


def encoder_for(options: ScoreOptions, device: str, *, kind: str) -> tuple[TextEncoder, str]:
    """A text encoder and a note: ``kind`` ``sentence`` (mpnet, or MiniLM offline) or ``clip``
    (ViT-B/16; offline there is none, and the offline sentence encoder stands in, said in the
    note)."""
    from metrics.text import load_clip_text_encoder, load_sentence_encoder

    if kind == "clip" and not options.offline:
        return load_clip_text_encoder(device), ""
    preset = "offline" if options.offline else "papers"
    enc = load_sentence_encoder(preset, device)
    note = ""
    if kind == "clip":
        note = "CLIP ViT-B/16 text encoder unavailable offline: all-MiniLM-L6-v2 stands in"
    return enc, note


def embed(encoder: TextEncoder, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    """L2-normalised ``float64 [N, D]`` embeddings of ``texts``."""
    import numpy as np

    from metrics.text import encode_texts

    emb = encode_texts(encoder, list(texts), progress=progress)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return emb / norms


def identity(encoder: TextEncoder) -> dict[str, Any]:
    try:
        return dict(encoder.identity())
    except Exception:  # an encoder without an identity still scores; results say so
        return {"name": type(encoder).__qualname__}
