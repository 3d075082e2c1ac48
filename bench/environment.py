"""The one place that asks about the machine: which device to use, and what software ran.

* :func:`resolve_device`: ``"auto"`` (or ``None``) -> ``"cuda"`` when available, else ``"cpu"``;
  an explicit device is checked (CUDA asked for but absent is a usage error, not a crash later).
* :func:`provenance`: Python, platform and the versions of the packages that change results,
  written into every run and suite result.
* :func:`tune_allocator`: keep large CPU tensors' memory for reuse (glibc), so that a forward
  pass on the CPU does not page-fault every activation afresh.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from bench.errors import UsageError

__all__ = ["PROVENANCE_PACKAGES", "provenance", "resolve_device", "tune_allocator"]

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


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap and are reused, not mapped afresh per allocation.
ALLOCATOR_MMAP_THRESHOLD = 1 << 30
_allocator_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep large CPU tensors' memory in the process heap for reuse (glibc only; once per process).

    By default glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so each batch of a forward pass on the CPU (resnet50 at 224 x
    224, batch 32: about 4 GB of activations) touches every page anew: about a million minor
    page faults and seconds of system time per batch. Raising the mmap and trim thresholds lets
    freed blocks be reused: the same batch then takes a few thousand faults. The price is peak
    memory: freed blocks stay in the heap, fragmented, until the process ends (resnet50 layer4,
    2,000 images, batch 64, ``python -m perf.realtarget_perf --images 2000 --compare-untuned``:
    78 million minor faults -> 0.55 million, forward pass 465 s -> 293 s, peak RSS 1.6 -> 2.3 GiB
    for the forward pass and 1.8 -> 2.9 GiB for recording plus NetDissect). Left alone when
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set (the user chose), when
    ``BENCH_TUNE_ALLOCATOR=0``, or off glibc. Returns whether the allocator is tuned.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    import os

    _allocator_tuned = False
    if os.environ.get("BENCH_TUNE_ALLOCATOR", "1") == "0" or any(
        v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_MMAP_THRESHOLD))
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * ALLOCATOR_MMAP_THRESHOLD)) and ok
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok
