"""BLIP image captioning through transformers (the captioner Describe-and-Dissect uses).

Default model ``Salesforce/blip-image-captioning-base`` (DnD's effective weights, see
``shared/reference/methods.md`` 4.2), unconditional captions decoded greedily with
``max_new_tokens=32, min_length=5`` as the original. ``model`` may be a hub id or a local
directory written by ``save_pretrained`` (model and processor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.components.base import (
    ComponentError,
    ImageInput,
    is_local,
    model_revision,
    require_hub_weights,
    to_pil,
    torch_dtype,
)
from bench.environment import resolve_device

log = logging.getLogger(__name__)

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


class BlipCaptioner:
    """``caption(images)``: one BLIP caption per image, in batches of ``batch_size``."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_BLIP,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 32,
        min_length: int = 5,
        num_beams: int = 1,
    ):
        self.model_id = str(model)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.generate_kwargs = {
            "max_new_tokens": int(max_new_tokens),
            "min_length": int(min_length),
            "num_beams": int(num_beams),
            "do_sample": False,
        }
        self._model: Any = None
        self._processor: Any = None
        self._revision: str | None = None

    def check(self) -> None:
        """Offline, the weights must be in the local cache (or ``model`` a local directory)."""
        if not is_local(self.model_id):
            require_hub_weights(self.model_id, self.revision, "captioner.model")

    def identity(self) -> dict[str, Any]:
        if self._revision is None:
            self._revision = model_revision(self.model_id, self.revision)
        return {
            "name": f"blip:{self.model_id}",
            "revision": self._revision,
            "generate": dict(self.generate_kwargs),
        }

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import BlipForConditionalGeneration, BlipProcessor

            dtype = torch_dtype(self.dtype, self.device)
            source = str(Path(self.model_id).expanduser()) if is_local(self.model_id) else None
            name = source or self.model_id
            try:
                revision = self.revision or "main"
                self._processor = BlipProcessor.from_pretrained(name, revision=revision)
                self._model = BlipForConditionalGeneration.from_pretrained(
                    name, revision=revision, dtype=dtype
                )
            except (OSError, ValueError) as e:
                raise ComponentError(
                    f"Could not load the BLIP captioner '{self.model_id}': {e}. Pass a local "
                    "directory (captioner.model=PATH) or download the model where there is a "
                    f"network (`huggingface-cli download {self.model_id}`)."
                ) from e
            self._model.to(self.device).eval()
            self._dtype = next(self._model.parameters()).dtype
        return self._model, self._processor

    def caption(self, images: Sequence[ImageInput]) -> list[str]:
        import torch

        model, processor = self._load()
        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [to_pil(im) for im in images[start : start + self.batch_size]]
            inputs = processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=self._dtype)
            with torch.inference_mode():
                ids = model.generate(pixel_values=pixels, **self.generate_kwargs)
            out.extend(t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True))
        return out
