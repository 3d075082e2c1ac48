"""Call counting, in-batch deduplication and content-addressed caching around components.

:func:`tracked` wraps a component so that every call

- sends each distinct input once (a caption is asked once per distinct image, an answer once per
  distinct prompt, images once per distinct prompt),
- with a :class:`~bench.cache.Cache`, serves inputs seen before from it and stores new answers
  (stages ``component-caption``, ``component-llm``, ``component-t2i``; the key is the SHA-256 of
  the component's identity and the input), so a rerun makes no new model calls,
- counts backend calls, items sent and cache hits in :attr:`stats`.

Image encoders are counted and deduplicated but never cached (embeddings are cheap next to the
rest and are recomputed with the images they belong to). Whole embedding matrices that are
expensive (CLIP-Dissect's probe set and concept set in a joint space) go through
:func:`cached_embeddings` instead: one entry per (component identity, content digest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.components.base import (
    ComponentError,
    ImageInput,
    Prompt,
    as_messages,
    image_digest,
    to_array,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bench.cache import Cache

log = logging.getLogger(__name__)

T = TypeVar("T")

CAPTION_STAGE = "component-caption"
LLM_STAGE = "component-llm"
T2I_STAGE = "component-t2i"
EMBED_STAGE = "component-embed"


@dataclass
class CallStats:
    """``calls``: invocations of the wrapped backend; ``items``: inputs sent to it; ``hits``:
    inputs answered from the cache; ``deduplicated``: repeated inputs of a batch not re-sent."""

    calls: int = 0
    items: int = 0
    hits: int = 0
    deduplicated: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "items": self.items,
            "hits": self.hits,
            "deduplicated": self.deduplicated,
        }


class _Tracked:
    stage = ""

    def __init__(self, inner: Any, cache: Cache | None = None):
        self.inner = inner
        self.cache = cache
        self.stats = CallStats()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def _map(
        self,
        keys: Sequence[Hashable],
        parts: Callable[[int], dict[str, Any]],
        compute: Callable[[list[int]], list[T]],
        load: Callable[[Path], T],
        store: Callable[[Path, T], None],
    ) -> list[T]:
        """``out[i]`` for every input ``i``: from an earlier input with the same key, the cache,
        or one ``compute(first indices of the missing keys)`` call."""
        first: dict[Hashable, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        self.stats.deduplicated += len(keys) - len(first)
        got: dict[Hashable, T] = {}
        cache_keys: dict[Hashable, str] = {}
        if self.cache is not None:
            for k, i in first.items():
                ck = self.cache.key(self.stage, parts(i))
                cache_keys[k] = ck
                path = self.cache.load(self.stage, ck)
                if path is None:
                    continue
                try:
                    got[k] = load(path)
                except Exception as e:  # a readable manifest over unreadable content
                    log.warning("Ignoring unreadable %s entry %s: %s", self.stage, ck[:12], e)
                    continue
                self.stats.hits += 1
        missing = [k for k in first if k not in got]
        if missing:
            idx = [first[k] for k in missing]
            values = compute(idx)
            if len(values) != len(idx):
                raise ComponentError(
                    f"{self.identity().get('name')} returned {len(values)} results for "
                    f"{len(idx)} inputs."
                )
            self.stats.calls += 1
            self.stats.items += len(idx)
            for k, i, v in zip(missing, idx, values, strict=True):
                got[k] = v
                if self.cache is not None:
                    self.cache.store(self.stage, cache_keys[k], parts(i), _writer(store, v))
        return [got[k] for k in keys]


def _writer(store: Callable[[Path, T], None], value: T) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        store(directory, value)

    return write


def _write_text(directory: Path, text: str) -> None:
    from bench.schema import write_json

    write_json(directory / "answer.json", {"text": text})


def _read_text(directory: Path) -> str:
    from bench.schema import read_json

    text = read_json(directory / "answer.json")["text"]
    if not isinstance(text, str):
        raise ValueError("answer is not a text")
    return text


class TrackedCaptioner(_Tracked):
    stage = CAPTION_STAGE

    def caption(self, images: Sequence[ImageInput]) -> list[str]:
        arrays = [to_array(im) for im in images]
        keys = [image_digest(a) for a in arrays]
        ident = self.identity()
        return self._map(
            keys,
            lambda i: {"component": ident, "image_sha256": keys[i]},
            lambda idx: list(self.inner.caption([arrays[i] for i in idx])),
            _read_text,
            _write_text,
        )


class TrackedLanguageModel(_Tracked):
    stage = LLM_STAGE

    def complete(self, prompts: Sequence[Prompt]) -> list[str]:
        from bench.schema import dumps

        chats = [as_messages(p) for p in prompts]
        keys = [dumps(c) for c in chats]
        ident = self.identity()
        return self._map(
            keys,
            lambda i: {"component": ident, "messages": chats[i]},
            lambda idx: list(self.inner.complete([prompts[i] for i in idx])),
            _read_text,
            _write_text,
        )


class TrackedTextToImage(_Tracked):
    stage = T2I_STAGE

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[np.ndarray]:
        import numpy as np

        from bench.cache import load_arrays, save_arrays

        ident = self.identity()

        def compute(idx: list[int]) -> list[np.ndarray]:
            out = self.inner.generate([prompts[i] for i in idx], n, seed)
            return [np.ascontiguousarray(np.asarray(a, dtype=np.uint8)) for a in out]

        def load(d: Path) -> np.ndarray:
            arr = load_arrays(d / "images.safetensors")["images"]
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n:
                raise ValueError(f"images of shape {arr.shape} and dtype {arr.dtype}")
            return arr

        return self._map(
            list(prompts),
            lambda i: {"component": ident, "prompt": prompts[i], "n": int(n), "seed": int(seed)},
            compute,
            load,
            lambda d, v: save_arrays(d / "images.safetensors", {"images": v}),
        )


class TrackedImageEncoder(_Tracked):
    def encode(self, images: Sequence[ImageInput]) -> torch.Tensor:
        import torch

        arrays = [to_array(im) for im in images]
        keys = [image_digest(a) for a in arrays]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        self.stats.deduplicated += len(keys) - len(first)
        if not first:
            return torch.zeros((0, 0), dtype=torch.float32)
        order = list(first.values())
        emb = self.inner.encode([arrays[i] for i in order])
        self.stats.calls += 1
        self.stats.items += len(order)
        row = {k: j for j, k in enumerate(first)}
        return emb[[row[k] for k in keys]]


_WRAPPERS: dict[str, type[_Tracked]] = {
    "captioner": TrackedCaptioner,
    "language_model": TrackedLanguageModel,
    "text_to_image": TrackedTextToImage,
    "image_encoder": TrackedImageEncoder,
}


def tracked(kind: str, component: Any, cache: Cache | None = None) -> Any:
    """``component`` wrapped for counting, deduplication and (with ``cache``) caching.

    Kinds without a wrapper (``text_encoder``) are returned as they are.
    """
    cls = _WRAPPERS.get(kind)
    if cls is None:
        return component
    if kind == "image_encoder":
        cache = None
    return cls(component, cache)


def is_cheap(component: Any) -> bool:
    """Whether a component says its calls cost less than a cache lookup (the synthetic ones)."""
    return bool(getattr(component, "cheap", False))


def cached_embeddings(
    cache: Cache | None,
    component: Any,
    what: str,
    content: dict[str, Any],
    compute: Callable[[], Any],
) -> np.ndarray:
    """``float32 [N, D]`` embeddings of a whole set (a probe set's images, a concept list),
    from ``cache`` (stage ``component-embed``) or ``compute()``.

    The key is the component's identity, ``what`` ("images", "texts") and ``content``, a
    JSON-able digest of the inputs (a probe set's identity, the SHA-256 of a concept list) that
    changes whenever any input may; without a cache, ``compute()`` is called every time.
    """
    import numpy as np

    from bench.cache import load_arrays, save_arrays

    def as_array(x: Any) -> np.ndarray:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        return np.ascontiguousarray(arr, dtype=np.float32)

    if cache is None:
        return as_array(compute())
    parts = {"component": component.identity(), "what": what, "content": content}
    key = cache.key(EMBED_STAGE, parts)
    path = cache.load(EMBED_STAGE, key)
    if path is not None:
        try:
            return load_arrays(path / "embeddings.safetensors")["embeddings"]
        except Exception as e:  # a readable manifest over unreadable content
            log.warning("Ignoring unreadable %s entry %s: %s", EMBED_STAGE, key[:12], e)
    arr = as_array(compute())
    cache.store(
        EMBED_STAGE,
        key,
        parts,
        lambda d: save_arrays(d / "embeddings.safetensors", {"embeddings": arr}),
    )
    return arr
