"""Probe sets: Broden, ImageFolder (ImageNet val), CIFAR, and the synthetic world.

``bench.registry.PROBES`` maps a name to a factory
``factory(root: Path | None, *, download: bool = False, **options) -> ProbeSet``;
:func:`register_builtin_probes` registers the built-in ones on the registry's first lookup.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.probes.base import ProbeSet

_ROOT_OPTION = "--probe-root"


def _datasets_dir() -> Path:
    from bench.cache import default_cache_dir

    return default_cache_dir() / "datasets"


def broden_probe(
    root: str | Path | None,
    *,
    download: bool = False,
    progress: bool = False,
    name: str = "broden1_224",
    **options: Any,
) -> ProbeSet:
    """Broden (NetDissect's probe set) in a directory, or the cached copy (fetched on request).

    Without ``root`` the cache's ``datasets/<name>`` is used; with ``download`` it is fetched there.
    """
    from bench.probes.broden import BrodenProbe, _find_root, fetch_broden

    if root is None:
        found = _find_root(_datasets_dir() / name)
        if found is None and not download:
            raise UsageError(
                f"The 'broden' probe set needs a Broden directory: pass {_ROOT_OPTION} DIR (the "
                f"folder holding index.csv), or --download to fetch {name} (~1 GB) into "
                f"{_datasets_dir()}."
            )
        root = (
            found if found is not None else fetch_broden(name, _datasets_dir(), progress=progress)
        )
    return BrodenProbe(root, **options)


def imagenet_val_probe(
    root: str | Path | None, *, download: bool = False, **options: Any
) -> ProbeSet:
    """ImageNet validation images in class folders, <root>/<wnid>/<image> (never downloaded)."""
    from bench.probes.imagefolder import ImageFolderProbe

    if root is None:
        raise UsageError(
            f"The 'imagenet-val' probe set needs its images: pass {_ROOT_OPTION} DIR, a folder "
            "with one sub-folder per class (ImageNet cannot be downloaded automatically)."
        )
    return ImageFolderProbe(root, **options)


def _cifar_factory(name: str) -> Callable[..., ProbeSet]:
    def factory(root: str | Path | None, *, download: bool = False, **options: Any) -> ProbeSet:
        from bench.probes.cifar import CifarProbe

        return CifarProbe(
            root if root is not None else _datasets_dir(), name=name, download=download, **options
        )

    factory.__name__ = f"{name}_probe"
    display = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(name, name)
    factory.__doc__ = (
        f"{display} test images with labels (split='train' as an option); "
        "from the cache unless a root is given, fetched only on request."
    )
    return factory


def _lazy_factory(module: str, attr: str, doc: str) -> Callable[..., ProbeSet]:
    """A factory that imports ``module:attr`` when first called, so a missing module only
    fails when that probe set is used."""

    def factory(root: str | Path | None, *, download: bool = False, **options: Any) -> ProbeSet:
        try:
            real = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"Probe set factory {module}:{attr} is not available ({e}).") from e
        return real(root, download=download, **options)

    factory.__name__ = attr
    factory.__doc__ = f"{doc} ({module}, imported when first used)."
    return factory


def register_builtin_probes() -> None:
    """Register the built-in probe-set factories in ``bench.registry.PROBES`` (idempotent)."""
    from bench.registry import PROBES

    factories: dict[str, Callable[..., ProbeSet]] = {
        "broden": broden_probe,
        "imagenet-val": imagenet_val_probe,
        "cifar10": _cifar_factory("cifar10"),
        "cifar100": _cifar_factory("cifar100"),
        "synthetic": _lazy_factory(
            "bench.probes.synthetic",
            "synthetic_probe",
            "The synthetic world's probe images with concept masks",
        ),
        "synthetic-heldout": _lazy_factory(
            "bench.probes.synthetic",
            "synthetic_heldout_probe",
            "The synthetic world's held-out labelled classes",
        ),
    }
    for name, factory in factories.items():
        if name not in PROBES:
            PROBES.register(name, factory)
