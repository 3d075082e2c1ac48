"""Probe sets: Broden, ImageFolder (ImageNet val), CIFAR, and the synthetic world.

``bench.registry.PROBES`` maps a name to a factory
``factory(root: Path | None, *, download: bool = False, **options) -> ProbeSet``;
:func:`register_builtin_probes` registers the built-in ones on the registry's first lookup.

A factory may declare the options it takes from the command line (``--probe-option KEY=VALUE``)
in a ``probe_options`` attribute: option name -> parser ``(key, text) -> value``
(:func:`list_option`, :func:`int_option`, :func:`str_option`). :func:`parse_probe_options` checks
and parses them; a factory without the attribute gets its named keyword parameters as text.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.probes.base import ProbeSet

_ROOT_OPTION = "--probe-root"
#: Parses one probe option: ``(key, text) -> value``.
OptionParser = Callable[[str, Any], Any]
#: NetDissect's default Broden categories (NetDissect-Lite ``settings.CATAGORIES``, compexp's
#: ``CATEGORIES``): material is left out unless asked for.
BRODEN_DEFAULT_CATEGORIES = ("object", "part", "scene", "texture", "color")
# Never probe options: the factory's own arguments, set by the harness.
_RESERVED = ("root", "download", "progress")


# --- probe options -----------------------------------------------------------------------------


def list_option(key: str, value: Any) -> tuple[str, ...]:
    """``"object,part"`` -> ``("object", "part")``."""
    if not isinstance(value, str):
        return tuple(value)
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise UsageError(
            f"Expected a comma-separated list for probe option '{key}', got {value!r}."
        )
    return items


def int_option(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise UsageError(f"Expected an integer for probe option '{key}', got {value!r}.") from None


def str_option(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"Expected a non-empty text for probe option '{key}', got {value!r}.")
    return value.strip()


def probe_option_parsers(factory: Callable[..., Any]) -> dict[str, OptionParser] | None:
    """Option name -> parser of ``factory``; None when it takes any keyword (``**options``)
    without declaring which."""
    declared = getattr(factory, "probe_options", None)
    if declared is not None:
        return dict(declared)
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name: (lambda key, value: value)
        for p in params[1:]
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.name not in _RESERVED
    }


def parse_probe_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` (``--probe-option KEY=VALUE`` as text) against what the probe set
    ``name`` accepts and parse the values; UsageError naming the accepted keys otherwise."""
    from bench.registry import PROBES

    if not options:
        return {}
    parsers = probe_option_parsers(PROBES.get(name))
    if parsers is None:
        return dict(options)
    unknown = sorted(k for k in options if k not in parsers)
    if unknown:
        accepted = ", ".join(sorted(parsers)) or "(none)"
        raise UsageError(
            f"Unknown probe option(s) {', '.join(unknown)} for the probe set '{name}'; "
            f"it accepts: {accepted}."
        )
    return {key: parsers[key](key, value) for key, value in options.items()}


def _declare(factory: Callable[..., ProbeSet], **parsers: OptionParser) -> None:
    factory.probe_options = parsers  # type: ignore[attr-defined]


# --- factories ---------------------------------------------------------------------------------


def _datasets_dir() -> Path:
    from bench.cache import default_cache_dir

    return default_cache_dir() / "datasets"


def broden_probe(
    root: str | Path | None,
    *,
    download: bool = False,
    progress: bool = False,
    name: str = "broden1_224",
    categories: Sequence[str] | None = None,
    **options: Any,
) -> ProbeSet:
    """Broden (NetDissect's probe set) in a directory, or the cached copy (fetched on request).

    Without ``root`` the cache's ``datasets/<name>`` is used; with ``download`` it is fetched there.
    ``categories`` defaults to NetDissect's object, part, scene, texture, color (those the index
    has); name any columns, material included, to choose others.
    """
    from bench.probes.broden import (
        BRODEN_NAMES,
        BrodenProbe,
        _find_root,
        fetch_broden,
        index_columns,
    )

    if root is None:
        if name not in BRODEN_NAMES:
            raise UsageError(f"Expected a Broden name in {', '.join(BRODEN_NAMES)}, got {name!r}.")
        found = _find_root(_datasets_dir() / name)
        if found is None and not download:
            raise UsageError(
                f"The 'broden' probe set needs a Broden directory: pass {_ROOT_OPTION} DIR (the "
                f"folder holding index.csv), or --download to fetch {name} (~1 GB) into "
                f"{_datasets_dir()} (or fetch it first: bench data fetch {name})."
            )
        root = (
            found if found is not None else fetch_broden(name, _datasets_dir(), progress=progress)
        )
    if categories is None and Path(root).expanduser().is_dir():  # else BrodenProbe says why
        present = index_columns(root, options.get("index_file", "index.csv"))
        categories = [c for c in BRODEN_DEFAULT_CATEGORIES if c in present]
        if not categories:
            raise UsageError(
                f"The Broden index in {root} has none of NetDissect's default categories "
                f"({', '.join(BRODEN_DEFAULT_CATEGORIES)}); it has {', '.join(present) or 'none'}. "
                "Choose some with --probe-option categories=A,B."
            )
    return BrodenProbe(root, categories=categories, **options)


_declare(
    broden_probe,
    categories=list_option,
    index_file=str_option,
    max_images=int_option,
    name=str_option,
)


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


_declare(imagenet_val_probe, max_images=int_option)


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
    _declare(factory, split=str_option)
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

    synthetic = _lazy_factory(
        "bench.probes.synthetic",
        "synthetic_probe",
        "The synthetic world's probe images with concept masks",
    )
    _declare(
        synthetic,
        n_images=int_option,
        seed=int_option,
        size=int_option,
        categories=list_option,
        max_images=int_option,
    )
    heldout = _lazy_factory(
        "bench.probes.synthetic",
        "synthetic_heldout_probe",
        "The synthetic world's held-out labelled classes",
    )
    _declare(heldout, n_images=int_option, seed=int_option, size=int_option)
    factories: dict[str, Callable[..., ProbeSet]] = {
        "broden": broden_probe,
        "imagenet-val": imagenet_val_probe,
        "cifar10": _cifar_factory("cifar10"),
        "cifar100": _cifar_factory("cifar100"),
        "synthetic": synthetic,
        "synthetic-heldout": heldout,
    }
    for name, factory in factories.items():
        if name not in PROBES:
            PROBES.register(name, factory)
