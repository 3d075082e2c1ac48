"""The component protocols (DESIGN section 4) and what their backends share.

A component is a heavy model behind a small protocol, injected into methods (and metrics). Each
reports an :meth:`identity` (``{"name": ..., "revision": ...}`` plus the options that change its
output) that goes into cache keys and results. Images cross the protocols as RGB ``uint8
[H, W, 3]`` numpy arrays (PIL images are accepted as inputs too); texts as ``str``.

- ``Captioner.caption(images) -> list[str]``: one caption per image.
- ``LanguageModel.complete(prompts) -> list[str]``: one answer per prompt; a prompt is a text (one
  user turn) or a chat, a sequence of ``{"role": "system"|"user"|"assistant", "content": str}``.
- ``TextToImage.generate(prompts, n, seed) -> list[ndarray]``: per prompt ``uint8 [n, H, W, 3]``.
  The images of a prompt depend only on (prompt, n, seed, the model), never on the other prompts
  of the batch (:func:`prompt_seed`), so they can be cached one prompt at a time.
- ``ImageEncoder.encode(images) -> Tensor``: ``float32 [N, D]``, rows L2-normalised.
- ``TextEncoder.encode(texts) -> Tensor``: ``float32 [N, D]``, rows L2-normalised.
- ``ImageTextEncoder.encode_images(images)``, ``.encode_texts(texts) -> Tensor``: one joint
  embedding space (CLIP), ``float32 [N, D]``, rows L2-normalised, so that the cosine of an image
  and a text is the dot product of their rows (CLIP-Dissect's image-concept matrix). A separate
  kind from ``image_encoder``/``text_encoder`` because those two need not share a space (the
  synthetic image encoder is a target's features), while this one must.

Every call takes a whole batch: callers gather the work of many units into one call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

from bench.errors import BenchError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

#: One chat turn.
Message = Mapping[str, str]
#: A prompt: one user turn as text, or a whole chat.
Prompt = Union[str, Sequence[Message]]  # noqa: UP007 - a runtime alias
#: An image as callers may pass it.
ImageInput = Union["np.ndarray", "Image.Image"]  # noqa: UP007 - forward references

#: The component kinds (``bench.method.COMPONENT_KINDS``).
KINDS: tuple[str, ...] = (
    "captioner",
    "language_model",
    "text_to_image",
    "image_encoder",
    "text_encoder",
    "image_text_encoder",
)


class ComponentError(BenchError):
    """A component could not be loaded or failed to answer (model missing, server down, ...)."""


@runtime_checkable
class Captioner(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def caption(self, images: Sequence[ImageInput]) -> list[str]: ...


@runtime_checkable
class LanguageModel(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def complete(self, prompts: Sequence[Prompt]) -> list[str]: ...


@runtime_checkable
class TextToImage(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[np.ndarray]: ...


@runtime_checkable
class ImageEncoder(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def encode(self, images: Sequence[ImageInput]) -> torch.Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class ImageTextEncoder(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


PROTOCOLS: dict[str, type] = {
    "captioner": Captioner,
    "language_model": LanguageModel,
    "text_to_image": TextToImage,
    "image_encoder": ImageEncoder,
    "text_encoder": TextEncoder,
    "image_text_encoder": ImageTextEncoder,
}


# --- prompts ------------------------------------------------------------------------------------


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as a list of chat turns (a text becomes one user turn); checks the roles."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = []
    for m in prompt:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ComponentError(
                "Expected chat turns like {'role': 'user'|'assistant'|'system', 'content': str}, "
                f"got {dict(m)!r}."
            )
        out.append({"role": str(role), "content": content})
    if not out:
        raise ComponentError("Expected a prompt with at least one chat turn, got an empty one.")
    return out


def render_chat(messages: Sequence[Message]) -> str:
    """A chat as plain text, for language models without a chat template."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{names[m['role']]}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


# --- images -------------------------------------------------------------------------------------


def to_array(image: ImageInput) -> np.ndarray:
    """An image as a C-contiguous RGB ``uint8 [H, W, 3]`` array."""
    import numpy as np

    if isinstance(image, np.ndarray):
        arr = image
    else:
        arr = np.asarray(image.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ComponentError(f"Expected an RGB image [H, W, 3], got shape {tuple(arr.shape)}.")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(arr * 255.0), 0, 255)
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def to_pil(image: ImageInput) -> Image.Image:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(to_array(image))


def image_digest(image: ImageInput) -> str:
    """SHA-256 of an image's shape and pixels (the content key of captions)."""
    arr = to_array(image)
    h = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def prompt_seed(seed: int, prompt: str) -> int:
    """The seed of one prompt's images: a function of the run's seed and the prompt only, so a
    prompt gets the same images whatever else is in its batch (and can be cached alone)."""
    h = hashlib.sha256(f"{int(seed)}\x00{prompt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


# --- revisions ----------------------------------------------------------------------------------


def local_revision(path: str | os.PathLike[str]) -> str:
    """A content revision of a local model (a file or a directory of files).

    SHA-256 over every file's relative path, size, and its first and last MiB: cheap on
    multi-gigabyte checkpoints, and it changes whenever a file is replaced by another model's.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    block = 1 << 20
    for f in files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\x00{size}\x00".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(block))
            if size > 2 * block:
                fh.seek(-block, os.SEEK_END)
                h.update(fh.read(block))
    return "local-" + h.hexdigest()[:16]


def hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit a Hugging Face hub id resolves to (from the local cache when offline).

    Only small metadata files are fetched. Failures become a :class:`ComponentError` that says
    how to make the model available.
    """
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(
            repo_id, revision=revision, allow_patterns=["*.json", "*.txt", "*.model"]
        )
    except Exception as e:  # hub errors come in many classes (offline, 404, gated, timeout)
        raise ComponentError(
            f"Could not resolve the Hugging Face model '{repo_id}' (revision "
            f"{revision or 'main'}): {type(e).__name__}: {e}. Download it where there is a "
            f"network (`huggingface-cli download {repo_id}`), then run offline with "
            "HF_HUB_OFFLINE=1, or pass a local directory instead of the id."
        ) from e
    return Path(snap).name


def hub_offline() -> bool:
    """Whether Hugging Face downloads are switched off (``HF_HUB_OFFLINE``), read now rather than
    when ``huggingface_hub`` was imported."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


#: Weight files of a transformers / diffusers model (what ``from_pretrained`` loads).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".msgpack", ".h5")


def hub_weights_problem(repo_id: str, revision: str | None = None) -> str | None:
    """Why the local Hugging Face cache lacks the weights of ``repo_id`` (no snapshot, or one
    with its configuration only), else ``None``. Reads the cache only."""
    try:
        from huggingface_hub import snapshot_download

        snap = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=[f"*{s}" for s in WEIGHT_SUFFIXES],
                local_files_only=True,
            )
        )
    except Exception as e:  # hub errors come in many classes
        return f"{type(e).__name__}: {e}"
    if not any(p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) for p in snap.rglob("*")):
        return f"the local snapshot {snap} has no weights"
    return None


def require_hub_weights(repo_id: str, revision: str | None, option: str) -> None:
    """Offline (``HF_HUB_OFFLINE``), the local snapshot of ``repo_id`` must hold weight files,
    not only the configuration :func:`hub_revision` fetched; online, ``from_pretrained``
    downloads what is missing, so nothing is checked. ``option`` (``captioner.model``) is the
    component option that names a local directory instead."""
    if not hub_offline():
        return
    why = hub_weights_problem(repo_id, revision)
    if why is not None:
        raise ComponentError(_hub_missing(repo_id, revision, option, why))


def _hub_missing(repo_id: str, revision: str | None, option: str, why: str) -> str:
    return (
        f"The weights of the Hugging Face model '{repo_id}' (revision {revision or 'main'}) are "
        f"not in the local cache and downloads are off (HF_HUB_OFFLINE=1): {why.rstrip('.')}. "
        "Download it "
        f"where there is a network (`huggingface-cli download {repo_id}`) and copy the cache "
        f"($HF_HOME), or pass a local directory (--component-option {option}=DIR), or allow "
        "the download (unset HF_HUB_OFFLINE, with a network)."
    )


def check_available(component: Any) -> None:
    """The component's cheap availability check, when it has one (``check()``: raises a
    :class:`ComponentError` saying what is missing and how to supply it; it loads no model), then
    its :meth:`identity` (which resolves model revisions, and fails when they cannot be).
    Backends of one's own need no ``check``."""
    check = getattr(component, "check", None)
    if callable(check):
        check()
    ident = getattr(component, "identity", None)
    if callable(ident):
        ident()


def model_revision(model: str, revision: str | None) -> str:
    """The revision of a model given as a local path or a hub id."""
    if is_local(model):
        return local_revision(Path(model).expanduser())
    return hub_revision(model, revision)


def is_local(model: str) -> bool:
    """Whether ``model`` names an existing local file or directory (else: a hub id)."""
    return Path(model).expanduser().exists()


def torch_dtype(dtype: str, device: str) -> Any:
    """``"auto"``: float16 on CUDA, float32 elsewhere; otherwise a torch dtype name."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ComponentError(f"Expected a torch dtype name such as float16, got {dtype!r}.")
    return value
