"""CLIP image embeddings through open_clip (the encoder of DnD's "Image Products" score).

Default ``ViT-B-16`` with the ``openai`` weights (the OpenAI CLIP ViT-B/16 the original uses,
with its QuickGELU activations). ``model`` may also be ``local-dir:PATH`` (a directory with
``open_clip_config.json`` and weights) or ``hf-hub:ORG/REPO``; ``pretrained`` may be a tag or a
weights file. Embeddings are L2-normalised, ``float32 [N, D]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.components.base import (
    ComponentError,
    ImageInput,
    local_revision,
    to_pil,
)
from bench.environment import resolve_device

DEFAULT_CLIP = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
#: open_clip's weight file names in a hub repository (open_clip.constants).
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"


class OpenClipImageEncoder:
    """``encode(images)``: L2-normalised CLIP image embeddings, in batches of ``batch_size``."""

    #: The component kind, in messages (``image_encoder.model=...``).
    kind = "image_encoder"

    def __init__(
        self,
        *,
        model: str = DEFAULT_CLIP,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | None = None,
        precision: str = "auto",
        batch_size: int = 64,
    ):
        self.model_name = str(model)
        self.pretrained = pretrained
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.precision = precision
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._preprocess: Any = None
        self._revision: str | None = None

    @property
    def _schema(self) -> bool:
        return self.model_name.startswith(("local-dir:", "hf-hub:"))

    def identity(self) -> dict[str, Any]:
        if self._revision is None:
            if self.model_name.startswith("local-dir:"):
                self._revision = local_revision(Path(self.model_name[len("local-dir:") :]))
            elif self.pretrained and Path(self.pretrained).expanduser().is_file():
                self._revision = local_revision(Path(self.pretrained).expanduser())
            else:
                import open_clip

                self._revision = f"{self.pretrained or 'random'}@open_clip-{open_clip.__version__}"
        return {
            "name": f"open-clip:{self.model_name}",
            "revision": self._revision,
            "precision": self.precision,
        }

    def check(self) -> None:
        """Whether open_clip will find the weights it would load (module docstring of
        :mod:`open_clip.factory`: a ``local-dir:`` directory, an ``hf-hub:`` repository, or a
        built-in model with a weights file or a pretrained tag), here or by a download that is
        allowed; nothing is loaded. A weights file that is missing on the way would make
        open_clip build random weights (``local-dir:``, ``hf-hub:``) or fail once the units are
        being described."""
        import open_clip

        name = self.model_name
        if name.startswith("local-dir:"):
            d = Path(name[len("local-dir:") :]).expanduser()
            if not (d / "open_clip_config.json").is_file():
                self._missing(f"{d} has no open_clip_config.json")
            if not any(any(d.glob(f"*{s}")) for s in (".safetensors", ".bin", ".pth")):
                self._missing(f"{d} has no weights (*.safetensors, *.bin or *.pth)")
            return
        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:") :]
            self._hub_file(repo, ["open_clip_config.json"])
            self._hub_file(repo, [_HF_SAFE_WEIGHTS, _HF_WEIGHTS])
            return
        cleaned = name.replace("/", "-")
        if open_clip.get_model_config(cleaned) is None:
            raise ComponentError(
                f"Unknown open_clip model '{name}' ({self.kind}.model); known: "
                f"{', '.join(open_clip.list_models())}, or local-dir:DIR, or hf-hub:ORG/REPO."
            )
        if not self.pretrained:
            return  # random weights, asked for
        if Path(self.pretrained).expanduser().is_file():
            return
        cfg = open_clip.get_pretrained_cfg(cleaned, self.pretrained)
        if not cfg:
            if any(sep in self.pretrained for sep in ("/", "\\", ".")):
                self._missing(f"the weights file {self.pretrained} does not exist")
            raise ComponentError(
                f"'{self.pretrained}' is neither a pretrained tag of the open_clip model "
                f"'{name}' (tags: {', '.join(open_clip.list_pretrained_tags_by_model(cleaned))}) "
                f"nor a weights file ({self.kind}.pretrained)."
            )
        if cfg.get("file"):
            if not Path(cfg["file"]).is_file():
                self._missing(f"the weights file {cfg['file']} does not exist")
            return
        from open_clip.pretrained import has_hf_hub

        if cfg.get("hf_hub") and has_hf_hub():  # what open_clip prefers
            repo, filename = str(cfg["hf_hub"]).rsplit("/", 1)
            filename = filename or _HF_WEIGHTS
            safe = []
            if filename == _HF_WEIGHTS:
                safe = [_HF_SAFE_WEIGHTS]
            elif filename.endswith((".bin", ".pth")):
                safe = [filename[:-4] + ".safetensors"]
            self._hub_file(repo, [*safe, filename])
        elif cfg.get("url"):
            self._url_file(str(cfg["url"]))

    def _options(self) -> str:
        return (
            f"pass a weights file (--component-option {self.kind}.pretrained=PATH) or a local "
            f"directory with open_clip_config.json and the weights (--component-option "
            f"{self.kind}.model=local-dir:DIR)"
        )

    def _missing(self, why: str, fix: str = "") -> None:
        raise ComponentError(
            f"The open_clip model '{self.model_name}' (pretrained={self.pretrained!r}) is not "
            f"available: {why}. To supply it offline, {fix}{self._options()}."
        )

    def _hub_file(self, repo: str, names: list[str]) -> None:
        """One of ``names`` (in open_clip's order of preference) of the hub repository ``repo``
        is in the local Hugging Face cache, or can be downloaded."""
        from huggingface_hub import try_to_load_from_cache

        from bench.components.base import hub_offline

        for n in names:
            if isinstance(try_to_load_from_cache(repo, n), str):
                return
        fetch = f"`huggingface-cli download {repo} {names[-1]}`"
        if hub_offline():
            self._missing(
                f"{' or '.join(names)} of {repo} is not in the Hugging Face cache "
                f"({_hub_cache()}) and downloads are off (HF_HUB_OFFLINE=1; unset it, with a "
                "network, to allow the download)",
                f"download it where there is a network ({fetch}) and copy the cache, or ",
            )
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        errors = []
        for n in names:
            try:
                get_hf_file_metadata(hf_hub_url(repo, n), timeout=10)
                return  # reachable: open_clip downloads it when the model is built
            except Exception as e:  # hub errors come in many classes (offline, 404, timeout)
                errors.append(f"{n}: {type(e).__name__}: {e}")
        self._missing(
            f"{' or '.join(names)} of {repo} is not in the Hugging Face cache "
            f"({_hub_cache()}) and could not be reached for download ({'; '.join(errors)})",
            f"download it where there is a network ({fetch}) and copy the cache, or ",
        )

    def _url_file(self, url: str) -> None:
        """open_clip's download folder (``~/.cache/clip``) holds the file of ``url``, or the
        URL answers."""
        import os
        import urllib.request

        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return
        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=10):
                return
        except OSError as e:
            self._missing(
                f"{target} does not exist and {url} could not be reached for download ({e})",
                "put the file there, or ",
            )

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import open_clip

            kwargs: dict[str, Any] = {"device": self.device, "precision": self.precision}
            if not self._schema:
                kwargs["pretrained"] = self.pretrained
                # OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain
                # ViT-B-16 config uses GELU, so the flag must follow the weights.
                if self.pretrained == "openai":
                    kwargs["force_quick_gelu"] = True
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, **kwargs
                )
            except (OSError, RuntimeError, ValueError) as e:
                raise ComponentError(
                    f"Could not load the open_clip model '{self.model_name}' "
                    f"(pretrained={self.pretrained!r}): {e}. To supply it, {self._options()}."
                ) from e
            self._model, self._preprocess = model.eval(), preprocess
        return self._model, self._preprocess

    def encode(self, images: Sequence[ImageInput]) -> Any:
        import torch

        model, preprocess = self._load()
        dtype = next(model.parameters()).dtype
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [preprocess(to_pil(im)) for im in images[start : start + self.batch_size]]
            x = torch.stack(batch).to(self.device, dtype=dtype)
            with torch.inference_mode():
                out.append(model.encode_image(x, normalize=True).float().cpu())
        if not out:
            return torch.zeros((0, 0), dtype=torch.float32)
        return torch.cat(out)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


class OpenClipImageTextEncoder(OpenClipImageEncoder):
    """Both towers of one open_clip model: ``encode_images`` and ``encode_texts`` in its joint
    space (L2-normalised ``float32 [N, D]``), as CLIP-Dissect embeds probe images and concepts.

    Texts are embedded as given (the original embeds each concept line without a prompt
    template), ``text_batch_size`` at a time.
    """

    kind = "image_text_encoder"

    def __init__(
        self,
        *,
        model: str = DEFAULT_CLIP,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | None = None,
        precision: str = "auto",
        batch_size: int = 64,
        text_batch_size: int = 256,
    ):
        super().__init__(
            model=model,
            pretrained=pretrained,
            device=device,
            precision=precision,
            batch_size=batch_size,
        )
        self.text_batch_size = int(text_batch_size)
        self._tokenizer: Any = None

    def encode_images(self, images: Sequence[ImageInput]) -> Any:
        return self.encode(images)

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch

        model, _ = self._load()
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.text_batch_size]))
            with torch.inference_mode():
                emb = model.encode_text(tokens.to(self.device), normalize=True)
            out.append(emb.float().cpu())
        if not out:
            return torch.zeros((0, 0), dtype=torch.float32)
        return torch.cat(out)
