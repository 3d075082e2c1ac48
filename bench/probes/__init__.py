"""Probe sets: Broden, ImageFolder (ImageNet val), CIFAR; others register themselves.

``bench.registry.PROBES`` maps a name to a factory
``factory(root: Path | None, *, download: bool = False, cache: Cache | None = None, **options)
-> ProbeSet`` (``cache``: where datasets live and exports go; a factory that stores nothing may
leave it out); :func:`register_builtin_probes` registers the built-in ones on the registry's first
lookup, and :func:`load_probe` builds one by name.

A factory may declare the options it takes from the command line (``--probe-option KEY=VALUE``)
in a ``probe_options`` attribute: option name -> parser ``(key, text) -> value``
(:func:`list_option`, :func:`int_option`, :func:`str_option`). :func:`parse_probe_options` checks
and parses them; a factory without the attribute gets its named keyword parameters as text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.cache import Cache
    from bench.probes.base import ProbeSet

_ROOT_OPTION = "--probe-root"
#: Parses one probe option: ``(key, text) -> value``.
OptionParser = Callable[[str, Any], Any]
#: NetDissect's default Broden categories (NetDissect-Lite ``settings.CATAGORIES``, compexp's
#: ``CATEGORIES``): material is left out unless asked for.
BRODEN_DEFAULT_CATEGORIES = ("object", "part", "scene", "texture", "color")
# Never probe options: the factory's own arguments, set by the harness.
_RESERVED = ("root", "download", "progress", "cache")


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


def declare_options(factory: Callable[..., ProbeSet], **parsers: OptionParser) -> None:
    """Declare the ``--probe-option`` keys ``factory`` takes and how each is parsed."""
    factory.probe_options = parsers  # type: ignore[attr-defined]


# --- factories ---------------------------------------------------------------------------------


def _datasets_dir(cache: Cache | None) -> Path:
    from bench.cache import Cache

    return (cache if cache is not None else Cache()).datasets_dir()


def broden_probe(
    root: str | Path | None,
    *,
    download: bool = False,
    progress: bool = False,
    cache: Cache | None = None,
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
        datasets = _datasets_dir(cache)
        found = _find_root(datasets / name)
        if found is None and not download:
            raise UsageError(
                f"The 'broden' probe set needs a Broden directory: pass {_ROOT_OPTION} DIR (the "
                f"folder holding index.csv), or --download to fetch {name} (~1 GB) into "
                f"{datasets} (or fetch it first: bench data fetch {name})."
            )
        root = found if found is not None else fetch_broden(name, datasets, progress=progress)
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


declare_options(
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


declare_options(imagenet_val_probe, max_images=int_option)


def _cifar_factory(name: str) -> Callable[..., ProbeSet]:
    def factory(
        root: str | Path | None,
        *,
        download: bool = False,
        cache: Cache | None = None,
        **options: Any,
    ) -> ProbeSet:
        from bench.probes.cifar import CifarProbe

        return CifarProbe(
            root if root is not None else _datasets_dir(cache),
            name=name,
            download=download,
            **options,
        )

    factory.__name__ = f"{name}_probe"
    display = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(name, name)
    factory.__doc__ = (
        f"{display} test images with labels (split='train' as an option); "
        "from the cache unless a root is given, fetched only on request."
    )
    declare_options(factory, split=str_option)
    return factory


def register_builtin_probes() -> None:
    """Register the built-in probe-set factories in ``bench.registry.PROBES`` (idempotent)."""
    from bench.registry import PROBES

    factories: dict[str, Callable[..., ProbeSet]] = {
        "broden": broden_probe,
        "imagenet-val": imagenet_val_probe,
        "cifar10": _cifar_factory("cifar10"),
        "cifar100": _cifar_factory("cifar100"),
    }
    for name, factory in factories.items():
        if name not in PROBES:
            PROBES.register(name, factory)


def load_probe(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    options: Mapping[str, Any] | None = None,
    cache: Cache | None = None,
) -> ProbeSet:
    """The probe set ``name``; ``options`` (``--probe-option``, as text) are checked against what
    its factory accepts, parsed, and passed to it as keyword arguments. ``cache`` goes to a
    factory that takes one (where datasets live and exports are written)."""
    from bench.registry import PROBES

    factory = PROBES.get(name)
    kwargs = parse_probe_options(name, options or {})
    if cache is not None and _takes_cache(factory):
        kwargs["cache"] = cache
    path = Path(root).expanduser() if root is not None else None
    probe: ProbeSet = factory(path, download=download, **kwargs)
    return probe


def _takes_cache(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "cache" in params
