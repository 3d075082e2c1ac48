"""The one place that asks about the machine: which device to use, and what software ran.

* :func:`resolve_device`: ``"auto"`` (or ``None``) -> ``"cuda"`` when available, else ``"cpu"``;
  an explicit device is checked (CUDA asked for but absent is a usage error, not a crash later).
* :func:`provenance`: Python, platform and the versions of the packages that change results,
  written into every run and suite result.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from bench.errors import UsageError

__all__ = ["PROVENANCE_PACKAGES", "provenance", "resolve_device"]

#: Packages whose versions can change a number in a result.
PROVENANCE_PACKAGES = (
    "neuron-bench",
    "torch",
    "torchvision",
    "numpy",
    "safetensors",
    "transformers",
    "diffusers",
    "open_clip_torch",
    "sentence-transformers",
    "bert-score",
)


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"``: CUDA when available, else the CPU. ``"cpu"``, ``"mps"``, ``"cuda"``
    and ``"cuda:N"`` are accepted as given (CUDA only when available)."""
    if device is None or device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device == "cuda" or device.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                f"Device '{device}' was requested but CUDA is not available; use --device cpu."
            )
        return device
    if device not in ("cpu", "mps"):
        raise UsageError(f"Expected --device auto, cpu, cuda, cuda:N or mps; got '{device}'.")
    return device


def provenance() -> dict[str, Any]:
    """Python version, platform and package versions (``None`` for a package not installed)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in PROVENANCE_PACKAGES:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions}
