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


class OpenClipImageEncoder:
    """``encode(images)``: L2-normalised CLIP image embeddings, in batches of ``batch_size``."""

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
                    f"(pretrained={self.pretrained!r}): {e}. Pass a weights file "
                    "(image_encoder.pretrained=PATH) or a local directory "
                    "(image_encoder.model=local-dir:PATH)."
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


class OpenClipImageTextEncoder(OpenClipImageEncoder):
    """Both towers of one open_clip model: ``encode_images`` and ``encode_texts`` in its joint
    space (L2-normalised ``float32 [N, D]``), as CLIP-Dissect embeds probe images and concepts.

    Texts are embedded as given (the original embeds each concept line without a prompt
    template), ``text_batch_size`` at a time.
    """

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
