"""Datasets the harness fetches on request: ``bench data list`` and ``bench data fetch NAME``.

Each is downloaded and unpacked into the cache's ``datasets`` directory (or a chosen one) by the
probe set's own code: Broden by :func:`bench.probes.broden.fetch_broden` (checksum pinned on
first download, resumed from ``.part``, safe extraction), CIFAR by
:class:`bench.probes.cifar.CifarProbe` (published md5). Nothing is fetched unless asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import UnknownNameError

if TYPE_CHECKING:
    from bench.cache import Cache


@dataclass(frozen=True, kw_only=True, slots=True)
class Dataset:
    """A fetchable dataset. ``locate(dest_dir)`` and ``fetch(dest_dir, progress)`` return the
    directory to pass as ``--probe-root`` (``locate``: None when it is not there)."""

    name: str
    use: str  # the `bench run` options that read it from the default place
    size: str  # download size, for people
    description: str
    locate: Callable[[Path], Path | None]
    fetch: Callable[[Path, bool], Path]


def _broden(name: str) -> Dataset:
    def locate(dest: Path) -> Path | None:
        from bench.probes.broden import _find_root

        return _find_root(dest / name)

    def fetch(dest: Path, progress: bool) -> Path:
        from bench.probes.broden import fetch_broden

        return fetch_broden(name, dest, progress=progress)

    use = "--probe broden" + ("" if name == "broden1_224" else f" --probe-option name={name}")
    return Dataset(
        name=name,
        use=use,
        size="~1 GB",
        description=f"Broden, NetDissect's probe set, images at {name.split('_')[-1]} px",
        locate=locate,
        fetch=fetch,
    )


def _cifar(name: str, size: str, description: str) -> Dataset:
    def locate(dest: Path) -> Path | None:
        from bench.probes.cifar import CIFAR

        return dest if (dest / CIFAR[name].folder).is_dir() else None

    def fetch(dest: Path, progress: bool) -> Path:
        from bench.probes.cifar import CifarProbe

        CifarProbe(dest, name=name, download=True, progress=progress)  # fetches and checks
        return dest

    return Dataset(
        name=name,
        use=f"--probe {name}",
        size=size,
        description=description,
        locate=locate,
        fetch=fetch,
    )


def _milannotations(key: str) -> Dataset:
    """One MILANNOTATIONS key (``alexnet/imagenet`` -> dataset ``milannotations-alexnet-imagenet``),
    unpacked under ``<dest>/milannotations`` (pass that as ``--config milan.annotations_root``)."""

    def locate(dest: Path) -> Path | None:
        from bench import milannotations as M

        return dest / "milannotations" if M.locate(key, dest / "milannotations") else None

    def fetch(dest: Path, progress: bool) -> Path:
        from bench import milannotations as M

        M.fetch(key, dest / "milannotations", progress=progress)
        return dest / "milannotations"

    return Dataset(
        name="milannotations-" + key.replace("/", "-"),
        use="--methods milan, found there by default",
        size="unknown (1-10 GB)",
        description=f"MILANNOTATIONS {key}: annotations, exemplar masks (and images)",
        locate=locate,
        fetch=fetch,
    )


def _milannotations_keys() -> tuple[str, ...]:
    from bench.milannotations import REAL_KEYS

    return REAL_KEYS


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        _broden("broden1_224"),
        _broden("broden1_227"),
        _cifar("cifar10", "170 MB", "CIFAR-10, python version"),
        _cifar("cifar100", "169 MB", "CIFAR-100, python version"),
        *(_milannotations(k) for k in _milannotations_keys()),
    )
}


def default_dest(cache: Cache | None = None) -> Path:
    """The cache's ``datasets`` directory, where the probe sets look without ``--probe-root``."""
    from bench.cache import Cache

    return (cache if cache is not None else Cache()).datasets_dir()


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(
            "dataset", name, DATASETS, note="See them with 'bench data list'."
        ) from None


def fetch_dataset(
    name: str,
    dest: str | Path | None = None,
    *,
    progress: bool = False,
    cache: Cache | None = None,
) -> Path:
    """Download and unpack ``name`` into ``dest`` (default: :func:`default_dest` of ``cache``)
    unless it is there already; return the directory to pass as ``--probe-root``."""
    dataset = get_dataset(name)
    root = Path(dest).expanduser() if dest is not None else default_dest(cache)
    return dataset.fetch(root, progress)
