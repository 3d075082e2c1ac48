"""Stable Diffusion text-to-image through diffusers.

Defaults follow the original DnD code (``shared/reference/methods.md`` 4.2):
``CompVis/stable-diffusion-v1-4``, float16 on CUDA, the ``DPMSolverMultistepScheduler``, no
safety checker, 50 inference steps, the pipeline's guidance scale (7.5). ``model`` may be any
``StableDiffusionPipeline`` hub id or a local directory written by ``save_pretrained``.

Seeds: every image has its own generator seeded with ``prompt_seed(seed, prompt) + j``
(``bench.components.base.prompt_seed``), so a prompt's images do not depend on the other prompts
of a batch and can be cached per prompt. (The original shares one generator across concepts, so
a concept's images depend on the concepts generated before it.)
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from bench.components.base import (
    ComponentError,
    is_local,
    model_revision,
    prompt_seed,
    require_hub_weights,
    torch_dtype,
)
from bench.environment import resolve_device

log = logging.getLogger(__name__)

DEFAULT_SD = "CompVis/stable-diffusion-v1-4"
#: CoSy's generator (``pipeline="sdxl"``): SDXL base 1.0, in float16 on CUDA.
DEFAULT_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SCHEDULERS = ("dpm-multistep", "default")
#: ``sd``: ``StableDiffusionPipeline`` (DnD); ``sdxl``: ``StableDiffusionXLPipeline`` (CoSy).
PIPELINES = ("sd", "sdxl")


class StableDiffusion:
    """``generate(prompts, n, seed)``: ``n`` images per prompt, ``uint8 [n, H, W, 3]`` each."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_SD,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        steps: int = 50,
        guidance_scale: float = 7.5,
        size: int | None = None,
        batch_size: int = 16,
        scheduler: str = "dpm-multistep",
        pipeline: str = "sd",
        progress: bool = False,
    ):
        if scheduler not in SCHEDULERS:
            raise ComponentError(f"Expected scheduler in {SCHEDULERS}, got {scheduler!r}.")
        if pipeline not in PIPELINES:
            raise ComponentError(f"Expected pipeline in {PIPELINES}, got {pipeline!r}.")
        self.pipeline = pipeline
        self.model_id = str(model)
        self.revision = revision
        self.device = resolve_device(device)
        self.dtype = dtype
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.size = size
        self.batch_size = max(1, int(batch_size))
        self.scheduler = scheduler
        self.progress = progress
        self._pipe: Any = None
        self._revision: str | None = None

    def check(self) -> None:
        """Offline, the weights must be in the local cache (or ``model`` a local directory)."""
        if not is_local(self.model_id):
            require_hub_weights(self.model_id, self.revision, "text_to_image.model")

    def identity(self) -> dict[str, Any]:
        if self._revision is None:
            self._revision = model_revision(self.model_id, self.revision)
        # "pipeline" only when not the default: the cache keys of SD 1.x images stay as they were.
        extra = {"pipeline": self.pipeline} if self.pipeline != "sd" else {}
        return {
            "name": f"stable-diffusion:{self.model_id}",
            "revision": self._revision,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "size": self.size,
            "scheduler": self.scheduler,
            "dtype": str(torch_dtype(self.dtype, self.device)).removeprefix("torch."),
            **extra,
        }

    def _load(self) -> Any:
        if self._pipe is None:
            from diffusers import (
                DPMSolverMultistepScheduler,
                StableDiffusionPipeline,
                StableDiffusionXLPipeline,
            )

            name = self.model_id
            if is_local(name):
                from pathlib import Path

                name = str(Path(name).expanduser())
            extra: dict[str, Any] = {}
            if importlib.util.find_spec("accelerate") is None:
                extra["low_cpu_mem_usage"] = False  # what diffusers falls back to, unasked
            if self.pipeline == "sd":
                extra["safety_checker"] = None
                extra["requires_safety_checker"] = False
            cls: Any = StableDiffusionPipeline
            if self.pipeline == "sdxl":
                cls = StableDiffusionXLPipeline
            try:
                pipe = cls.from_pretrained(
                    name,
                    revision=self.revision,
                    dtype=torch_dtype(self.dtype, self.device),
                    **extra,
                )
            except (OSError, ValueError) as e:
                raise ComponentError(
                    f"Could not load the Stable Diffusion pipeline '{self.model_id}': {e}. Pass "
                    "a local directory (text_to_image.model=PATH) or download it where there is "
                    f"a network (`huggingface-cli download {self.model_id}`)."
                ) from e
            if self.scheduler == "dpm-multistep":
                pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=not self.progress)
            self._pipe = pipe.to(self.device)
        return self._pipe

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[Any]:
        import numpy as np
        import torch

        pipe = self._load()
        n = int(n)
        if n < 1:
            raise ComponentError(f"Expected n >= 1 images per prompt, got {n}.")
        per_call = max(1, self.batch_size // n)
        size_kw = {"height": self.size, "width": self.size} if self.size else {}
        gen_device = "cuda" if self.device.startswith("cuda") else "cpu"
        out: list[Any] = []
        for start in range(0, len(prompts), per_call):
            batch = list(prompts[start : start + per_call])
            gens = [
                torch.Generator(gen_device).manual_seed((prompt_seed(seed, p) + j) % (2**63))
                for p in batch
                for j in range(n)
            ]
            with torch.inference_mode():
                res = pipe(
                    prompt=batch,
                    num_images_per_prompt=n,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    generator=gens,
                    output_type="np",
                    **size_kw,
                )
            imgs = np.clip(np.rint(np.asarray(res.images, dtype=np.float32) * 255.0), 0, 255)
            imgs = imgs.astype(np.uint8)
            for k in range(len(batch)):
                out.append(imgs[k * n : (k + 1) * n])
        return out
