"""MILAN checkpoints: the authors' released ``milan-<key>.pth`` files, and our safe format.

**Released files** (``reference/milan-checkpoint.md``) are a ``torch.save`` of a nested dict of
properties plus a ``state_dict``. Unpickling them needs one foreign class,
``confection._config.Config`` (spaCy's config dict, inside the tokenizer's properties), which
``torch.load(weights_only=True)`` refuses. :func:`load_released` allows exactly that name and
maps it to a stand-in that rebuilds the object as a plain ``OrderedDict`` (its keys and its two
attributes); nothing is ever loaded with ``weights_only=False``, so a file cannot run code.

**Our format** (:func:`save` / :func:`load`): a directory with ``model.safetensors`` (the
decoder's parameters under the released names, the language model's under ``lm.``) and
``milan.json`` (vocabulary, sizes, decoding defaults, encoder config).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.errors import DataError, UnknownNameError
from methods.milan.model import (
    Decoder,
    DecoderConfig,
    DecodingDefaults,
    LanguageModel,
    LanguageModelConfig,
    MilanModel,
    token_map,
)
from methods.milan.tokenizer import Vocab

log = logging.getLogger(__name__)

#: Keys of the released models (``milan-<key>.pth``): the MILANNOTATIONS groupings trained on.
RELEASED_KEYS = ("base", "cls", "gen", "imagenet", "places365", "alexnet", "resnet152", "biggan")
RELEASED_BASE_URL = "http://milan.csail.mit.edu/models"
FORMAT = "neuron-bench/milan"
#: 2: ``decoder.attention_hidden_size`` None means ``min(hidden_size, feature_size)`` (the
#: original's rule). Version 1 files, written when None meant ``hidden_size``, still load.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "milan.json"

#: Where spaCy's config class lived when the released files were pickled. The reference names
#: ``confection._config.Config``; the same class was ``thinc.config.Config`` and
#: ``confection.Config`` in other spaCy releases. All map to the same harmless stand-in.
CONFIG_CLASS_NAMES = ("confection._config.Config", "confection.Config", "thinc.config.Config")


class CheckpointError(DataError):
    """A MILAN checkpoint is missing, corrupt, unsafe, or not in the expected structure."""


class _ConfigStandIn:
    """Unpickles spaCy's ``Config`` (a ``dict`` subclass) as a plain ``OrderedDict``.

    torch's weights-only unpickler only fills (``SETITEMS``) objects whose type is exactly
    ``dict``/``OrderedDict``, and only sets attributes (``BUILD``) on ``OrderedDict`` or
    allow-listed types, so a ``dict`` subclass stand-in would be refused half-way. ``__new__``
    therefore returns an ``OrderedDict``: the pickle's items land in it and its attributes
    (``is_interpolated``, ``section_order``) are set on it. No code of the file runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        return OrderedDict()


# --- the released format ----------------------------------------------------------------------


def released_url(key: str, *, base_url: str = RELEASED_BASE_URL) -> str:
    if key not in RELEASED_KEYS:
        raise UnknownNameError("released MILAN model", key, RELEASED_KEYS)
    return f"{base_url.rstrip('/')}/milan-{key}.pth"


def fetch_released(
    key: str,
    root: str | os.PathLike[str],
    *,
    download: bool = True,
    timeout: float = 30.0,
    progress: bool = False,
    base_url: str = RELEASED_BASE_URL,
) -> Path:
    """``<root>/milan-<key>.pth``, downloaded first when missing (and ``download``).

    The authors publish no checksums: the file's sha256 is pinned at the first download and
    checked on every later use (:func:`bench.download.ensure_file`).
    """
    from bench.download import ensure_file

    url = released_url(key, base_url=base_url)
    dest = Path(root).expanduser() / f"milan-{key}.pth"
    path, _ = ensure_file(
        url,
        dest,
        what=f"the released MILAN model '{key}'",
        download_missing=download,
        timeout=timeout,
        progress=progress,
    )
    return path


def _safe_torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"No MILAN checkpoint at {path}. Download one of the released models "
            f"({', '.join(RELEASED_KEYS)}) with fetch_released, or train one."
        )
    allowed: list[Any] = [(_ConfigStandIn, name) for name in CONFIG_CLASS_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects that are not allowed in a MILAN checkpoint ({e}). Only "
            "tensors, plain containers and spaCy's config class are accepted, so that loading "
            "cannot run code; use the files published at "
            f"{RELEASED_BASE_URL}/milan-<key>.pth."
        ) from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e}). The file is "
            "probably truncated or corrupt: delete it and download it again."
        ) from e


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        got = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"Expected key '{key}' in {where} of a released MILAN checkpoint, got {got}."
        )
    return obj[key]


def _properties(obj: Any, where: str) -> Mapping[str, Any]:
    props = _field(obj, "properties", where)
    if not isinstance(props, Mapping):
        raise CheckpointError(f"Expected {where}.properties to be a dict, got {type(props)}.")
    return props


def _released_vocab(indexer: Any, where: str) -> Vocab:
    props = _properties(indexer, where)
    tokens = _field(_properties(_field(props, "vocab", where), f"{where}.vocab"), "tokens", where)
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"Expected {where}.vocab tokens to be strings.")
    tok = _properties(_field(props, "tokenize", where), f"{where}.tokenize")
    expected = {"lemmatize": False, "ignore_stop": False, "ignore_punct": False}
    wrong = {k: tok.get(k) for k, v in expected.items() if tok.get(k, v) != v}
    if wrong:
        raise CheckpointError(
            f"The checkpoint's tokenizer uses {wrong}; only the released setting "
            f"{expected} (plain lower-cased spaCy tokens) is supported."
        )
    flags = {k: props.get(k, True) for k in ("start", "stop", "pad", "unk")}
    if not all(flags.values()):
        raise CheckpointError(
            f"Expected an indexer with <start>, <stop>, <pad> and <unk> ids, got {flags}."
        )
    return Vocab(tuple(tokens), lowercase=bool(tok.get("lowercase", True)))


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"The {what} weights do not fit its documented structure: {e}") from e


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def load_released(path: str | os.PathLike[str]) -> MilanModel:
    """A released ``milan-<key>.pth`` as a :class:`MilanModel` (decoder, LM, vocabulary).

    Raises :class:`CheckpointError` for a missing, corrupt or unsafe file, or one whose
    structure differs from the documented one.
    """
    path = Path(path)
    obj = _safe_torch_load(path)
    where = str(path.name)
    props = _properties(obj, where)
    state = _field(obj, "state_dict", where)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"Expected {where}'s state_dict to map names to tensors.")
    vocab = _released_vocab(_field(props, "indexer", where), f"{where}.indexer")
    if "init_h.0.weight" not in state:
        raise CheckpointError(f"Expected decoder weights ('init_h.0.weight', ...) in {where}.")
    dec_config = DecoderConfig(
        vocab_size=len(vocab),
        feature_size=int(state["init_h.0.weight"].shape[1]),
        embedding_size=int(props.get("embedding_size", 128)),
        hidden_size=int(props.get("hidden_size", 512)),
        # None (the released files' value): the original's min(hidden_size, feature_size).
        attention_hidden_size=_optional_int(props.get("attention_hidden_size")),
        dropout=float(props.get("dropout", 0.5)),
        length=int(props.get("length", 15)),
    )
    decoder = Decoder(dec_config)
    dec_state = {k: v for k, v in state.items() if not k.startswith(("lm.", "encoder."))}
    if "embedding.weight" in dec_state and dec_state["embedding.weight"].shape[0] != len(vocab):
        raise CheckpointError(
            f"{where}: the vocabulary has {len(vocab)} ids but the decoder's embedding has "
            f"{dec_state['embedding.weight'].shape[0]} rows."
        )
    _load_strict(decoder, dec_state, "decoder")
    skipped = [k for k in state if k.startswith("encoder.")]
    if skipped:
        log.info("%s: ignoring %d encoder.* tensors (the encoder is rebuilt)", where, len(skipped))

    lm = lm_vocab = None
    lm_entry = props.get("lm")
    lm_state = {k[3:]: v for k, v in state.items() if k.startswith("lm.")}
    if lm_entry is not None:
        lm_props = _properties(lm_entry, f"{where}.lm")
        lm_vocab = _released_vocab(_field(lm_props, "indexer", f"{where}.lm"), f"{where}.lm")
        lm = LanguageModel(
            LanguageModelConfig(
                vocab_size=len(lm_vocab),
                pad_index=lm_vocab.pad,
                embedding_size=int(lm_props.get("embedding_size", 128)),
                hidden_size=int(lm_props.get("hidden_size", 512)),
                layers=int(lm_props.get("layers", 2)),
                dropout=float(lm_props.get("dropout", 0.5)),
            )
        )
        _load_strict(lm, lm_state, "language model")
    elif lm_state:
        raise CheckpointError(f"{where} has lm.* weights but no 'lm' properties.")
    strategy = str(props.get("strategy", "rerank" if lm is not None else "beam"))
    decoding = DecodingDefaults(
        strategy=strategy,
        temperature=float(props.get("temperature", 0.2)),
        beam_size=int(props.get("beam_size", 50)),
    )
    encoder_props = props.get("encoder")
    encoder_config: dict[str, Any] = {}
    if isinstance(encoder_props, Mapping):
        encoder_config = _jsonable(_properties(encoder_props, f"{where}.encoder"))
        children = obj.get("children") if isinstance(obj, Mapping) else None
        if isinstance(children, Mapping) and isinstance(children.get("encoder"), str):
            encoder_config["class"] = children["encoder"]
    return MilanModel(
        vocab=vocab,
        decoder=decoder.eval(),
        lm=lm.eval() if lm is not None else None,
        decoding=decoding,
        encoder_config=encoder_config,
        lm_vocab=None if lm_vocab == vocab else lm_vocab,
        lm_token_map=token_map(vocab, lm_vocab) if lm_vocab is not None else None,
        source=str(path),
    )


@contextmanager
def _importable_config_class() -> Iterator[type]:
    """A ``dict`` subclass that pickle records as ``confection._config.Config``.

    pickle stores a class by reference (module + name) and checks, when writing, that importing
    that name gives the very same class. To write a file with the released structure without
    depending on spaCy, a tiny module ``confection._config`` holding this class is put in
    ``sys.modules`` for the duration of the write only, and the previous entries are restored.
    """
    names = ("confection", "confection._config")
    saved = {n: sys.modules.get(n) for n in names}
    package = types.ModuleType("confection")
    module = types.ModuleType("confection._config")

    class Config(dict):  # type: ignore[type-arg]
        pass

    Config.__module__ = "confection._config"
    Config.__qualname__ = "Config"
    module.Config = Config  # type: ignore[attr-defined]
    package._config = module  # type: ignore[attr-defined]
    package.Config = Config  # type: ignore[attr-defined]
    sys.modules["confection"] = package
    sys.modules["confection._config"] = module
    try:
        yield Config
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _released_indexer(vocab: Vocab, nlp: tuple[Any, bytes]) -> dict[str, Any]:
    return {
        "properties": {
            "vocab": {"properties": {"tokens": tuple(vocab.tokens)}, "children": {}},
            "tokenize": {
                "properties": {
                    "nlp": nlp,
                    "lemmatize": False,
                    "lowercase": vocab.lowercase,
                    "ignore_stop": False,
                    "ignore_punct": False,
                },
                "children": {},
            },
            "start": True,
            "stop": True,
            "pad": True,
            "unk": True,
            "length": None,
        },
        "children": {},
    }


def write_released_format(
    path: str | os.PathLike[str],
    decoder: Decoder,
    lm: LanguageModel | None,
    vocab: Vocab,
    encoder_config: Mapping[str, Any],
    *,
    lm_vocab: Vocab | None = None,
    decoding: DecodingDefaults | None = None,
    nlp_bytes: bytes = b"spaCy pipeline bytes stand-in",
    extra_state: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint in the released structure (for tests: the real files cannot be
    downloaded here). The tokenizer's ``nlp`` entry is ``(Config, bytes)`` with a
    ``confection._config.Config`` instance carrying items and attributes, as spaCy's does."""
    decoding = decoding or DecodingDefaults()
    with _importable_config_class() as config_cls:
        nlp_config = config_cls(
            {"nlp": {"lang": "en", "pipeline": ["tok2vec", "tagger"]}, "components": {}}
        )
        nlp_config.is_interpolated = True  # type: ignore[attr-defined]
        nlp_config.section_order = ["paths", "nlp", "components"]  # type: ignore[attr-defined]
        nlp = (nlp_config, bytes(nlp_bytes))
        lm_props = None
        if lm is not None:
            lm_props = {
                "properties": {
                    "indexer": _released_indexer(lm_vocab or vocab, nlp),
                    "embedding_size": lm.config.embedding_size,
                    "hidden_size": lm.config.hidden_size,
                    "layers": lm.config.layers,
                    "dropout": lm.config.dropout,
                },
                "children": {},
            }
        c = decoder.config
        state: OrderedDict[str, torch.Tensor] = OrderedDict(
            (k, v.detach().cpu()) for k, v in decoder.state_dict().items()
        )
        if lm is not None:
            state.update((f"lm.{k}", v.detach().cpu()) for k, v in lm.state_dict().items())
        state.update(extra_state or {})
        obj = {
            "properties": {
                "indexer": _released_indexer(vocab, nlp),
                "encoder": {"properties": dict(encoder_config), "children": {}},
                "lm": lm_props,
                "embedding_size": c.embedding_size,
                "hidden_size": c.hidden_size,
                "attention_hidden_size": c.attention_hidden_size,
                "dropout": c.dropout,
                "length": c.length,
                "strategy": decoding.strategy,
                "temperature": decoding.temperature,
                "beam_size": decoding.beam_size,
            },
            "children": {"encoder": "PyramidConvEncoder"},
            "state_dict": state,
        }
        torch.save(obj, Path(path))


# --- our format -------------------------------------------------------------------------------


def save(model: MilanModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``directory`` (``model.safetensors`` + ``milan.json``), atomically
    per file, the JSON last so that a directory with a JSON has its weights."""
    from safetensors.torch import save_file

    from bench.schema import atomic_path, atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.decoder.state_dict().items()}
    if model.lm is not None:
        tensors.update(
            {f"lm.{k}": v.detach().cpu().contiguous() for k, v in model.lm.state_dict().items()}
        )
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vocab": model.vocab.to_json(),
        "lm_vocab": model.lm_vocab.to_json() if model.lm_vocab is not None else None,
        "decoder": model.decoder.config.to_json(),
        "lm": model.lm.config.to_json() if model.lm is not None else None,
        "decoding": model.decoding.to_json(),
        "encoder": _jsonable(model.encoder_config),
        "source": model.source,
    }
    atomic_write(directory / CONFIG_FILE, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return directory


def load(directory: str | os.PathLike[str]) -> MilanModel:
    """A model written by :func:`save`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"Expected a saved MILAN model in {directory} ({CONFIG_FILE} and {WEIGHTS_FILE}); "
            "train one or convert a released checkpoint with load_released + save."
        )
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"Could not read {config_path}: {e}. Delete the model and retrain."
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a {FORMAT} file.")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{config_path} has format version {version}; this code reads versions "
            f"{list(READABLE_VERSIONS)}. Retrain or re-save the model."
        )
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file ({e}). Delete the model and "
            "retrain or re-save it."
        ) from e
    try:
        vocab = Vocab.from_json(meta["vocab"])
        lm_vocab = Vocab.from_json(meta["lm_vocab"]) if meta.get("lm_vocab") else None
        dec_meta = dict(meta["decoder"])
        if version == 1 and dec_meta.get("attention_hidden_size") is None:
            # Version 1's default attention width was the LSTM's hidden size.
            dec_meta["attention_hidden_size"] = dec_meta["hidden_size"]
        decoder = Decoder(DecoderConfig(**dec_meta))
        lm = LanguageModel(LanguageModelConfig(**meta["lm"])) if meta.get("lm") else None
        decoding = DecodingDefaults(**meta["decoding"])
    except (KeyError, TypeError, DataError) as e:
        raise CheckpointError(f"{config_path} is missing or has malformed fields: {e}") from e
    _load_strict(decoder, {k: v for k, v in tensors.items() if not k.startswith("lm.")}, "decoder")
    if lm is not None:
        lm_state = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
        _load_strict(lm, lm_state, "language model")
    return MilanModel(
        vocab=vocab,
        decoder=decoder.eval(),
        lm=lm.eval() if lm is not None else None,
        decoding=decoding,
        encoder_config=dict(meta.get("encoder") or {}),
        lm_vocab=lm_vocab,
        lm_token_map=token_map(vocab, lm_vocab) if lm_vocab is not None else None,
        source=str(meta.get("source", "")),
    )
