"""MILANNOTATIONS: human (or simulated) descriptions of units with their exemplars.

Layout of one key (reference/formats.md; the real zips and the synthetic export alike)::

    <key dir>/annotations.csv      layer,unit,summary   one row per description, 0-based units
    <key dir>/<layer>/ids.csv      one row per unit: its k probe-image indices (no header)
    <key dir>/<layer>/masks.npy    uint8 0/1 [units, k, 1, H, W]; row i is unit i
    <key dir>/<layer>/images.npy   uint8 [units, k, 3, H, W]     (not in the ImageNet zips)
    <key dir>/<layer>/units.npy    optional int [units]: the unit of each row

Keys are ``<model>/<dataset>``: the seven real ones (:data:`REAL_KEYS`), downloaded on request
from ``http://milan.csail.mit.edu/data/<model>-<dataset>.zip``, and generated keys from
registered sources (:class:`KeySource`; the synthetic world's ``<target>/synthetic``). A key's
directory is named with ``/`` replaced by ``-`` (``alexnet-imagenet``); the original's nested
``alexnet/imagenet`` is found too. Groupings (:func:`groupings`) name sets of keys as the paper
does (``base``, ``cls``, ``gen``, ``imagenet``, ``places365``, ``alexnet``, ``resnet152``,
``biggan``, ``not-<model>-<dataset>``) plus, per source, its dataset (``synthetic``) and
``not-<model>-<dataset>``.

Where the data lives: ``root`` when given, else ``$MILAN_DATA_DIR``, else the cache's
``datasets/milannotations``. Synthetic keys without a ``root`` come from the cached synthetic
export at its default noise and seed.

ImageNet keys (``alexnet/imagenet``, ``resnet152/imagenet``, ``dino_vits8/imagenet``) ship no
``images.npy``: the exemplar images are rebuilt from a local ImageNet validation folder
(``imagenet_root``, else ``$MILAN_DATA_DIR/imagenet/val``, else ``<root>/imagenet/val``), laid out
as an ImageFolder (class sub-folders; ``ids.csv`` indexes its sorted sample order), with
``Resize(256)`` and ``CenterCrop(224)``: the transform the exemplars and masks were computed with
(reference 1.2). The original's merge step squashes the whole photo with ``Resize((224, 224))``
instead, which misaligns images and masks for every non-square photo (reference 1.3); we
deliberately do not reproduce that. The rebuilt array is cached as ``images.npy`` beside the
masks, with ``images.json`` saying how it was made.

Loading keeps units with at least ``annotation_count`` (3) descriptions and truncates extras,
as the original does; arrays are memory-mapped, so a unit's images are read when it is used.

Keys that are generated rather than downloaded come from a :class:`KeySource` registered in
``bench.registry.MILANNOTATIONS_SOURCES`` (the synthetic world registers one for its targets); this
module knows nothing of where they come from. The generalisation splits (reference 1.8) live with
the method, in :mod:`methods.milan.splits`.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from bench.errors import DataError, UnknownNameError, UsageError
from bench.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np

    from bench.cache import Cache

log = logging.getLogger(__name__)

HOST = "http://milan.csail.mit.edu"
#: Where the real keys' zips are, ``<base>/<model>-<dataset>.zip``.
DATA_URL = f"{HOST}/data"
ENV_DATA_DIR = "MILAN_DATA_DIR"
#: Descriptions kept per unit (``AnnotatedTopImagesDataset(annotation_count=3)``).
ANNOTATION_COUNT = 3
ANNOTATIONS_FILE = "annotations.csv"
ANNOTATION_COLUMNS = ("layer", "unit", "summary")
#: Bump when the rebuilt ImageNet ``images.npy`` changes for the same inputs.
IMAGENET_REBUILD_VERSION = 1
#: Exemplars were computed on ``Resize(256)`` + ``CenterCrop(224)`` (reference 1.2).
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

REAL_KEYS: tuple[str, ...] = (
    "alexnet/imagenet",
    "alexnet/places365",
    "resnet152/imagenet",
    "resnet152/places365",
    "biggan/imagenet",
    "biggan/places365",
    "dino_vits8/imagenet",
)
#: The six keys MILAN's ``base`` model is trained on (DINO was annotated later).
BASE_KEYS: tuple[str, ...] = REAL_KEYS[:6]
#: The original exports ``images.npy`` only for datasets not matching this (reference 1.3).
_NO_IMAGES = re.compile(r".*(net|vgg|dino).*imagenet.*")
SYNTHETIC_DATASET = "synthetic"

#: Share of units held out by the ``within`` experiment (and MILAN's validation split).
HOLDOUT = 0.1


# --- keys and groupings ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyInfo:
    """One MILANNOTATIONS key. ``ships_images``: the zip (or export) holds ``images.npy``;
    ``url``: where a real key's zip is (``None`` for synthetic keys); ``sha256``: the zip's
    checksum when published (none is: it is pinned on first download)."""

    key: str
    model: str
    dataset: str
    synthetic: bool
    ships_images: bool
    url: str | None
    sha256: str | None = None

    @property
    def dirname(self) -> str:
        return self.key.replace("/", "-")

    @property
    def imagenet(self) -> bool:
        """Images must be rebuilt from a local ImageNet validation folder."""
        return not self.synthetic and not self.ships_images


def _real_info(key: str, base_url: str | None = None) -> KeyInfo:
    model, dataset = key.split("/")
    dirname = key.replace("/", "-")
    return KeyInfo(
        key=key,
        model=model,
        dataset=dataset,
        synthetic=False,
        ships_images=_NO_IMAGES.match(key) is None,
        url=f"{(base_url or DATA_URL).rstrip('/')}/{dirname}.zip",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySource:
    """Keys ``<model>/<dataset>`` that are generated, not downloaded (registered by name of their
    dataset in ``bench.registry.MILANNOTATIONS_SOURCES``).

    ``models``: the models with a key; ``root(cache, progress)``: a directory holding every key's
    directory, generated on first use (content-hashed in ``cache``); ``facets(model)``: what the
    generalisation splits pair keys by (``{"arch": ..., "task": ...}``); ``origin``: how the keys
    are made, for messages.
    """

    dataset: str
    models: Callable[[], tuple[str, ...]]
    root: Callable[..., Path]
    facets: Callable[[str], Mapping[str, str]]
    origin: str


def key_sources() -> dict[str, KeySource]:
    """Dataset name -> its registered :class:`KeySource`."""
    from bench.registry import MILANNOTATIONS_SOURCES

    return {name: MILANNOTATIONS_SOURCES.get(name) for name in MILANNOTATIONS_SOURCES.names()}


def generated_keys(dataset: str | None = None) -> tuple[str, ...]:
    """Keys of every registered source (or of the one for ``dataset``)."""
    return tuple(
        f"{m}/{src.dataset}"
        for name, src in key_sources().items()
        if dataset is None or name == dataset
        for m in src.models()
    )


def synthetic_targets() -> tuple[str, ...]:
    """Models with a key of the ``synthetic`` source (the synthetic targets), if registered."""
    src = key_sources().get(SYNTHETIC_DATASET)
    return src.models() if src is not None else ()


def synthetic_keys() -> tuple[str, ...]:
    return generated_keys(SYNTHETIC_DATASET)


def key_source(key: str) -> KeySource:
    """The source of a generated key (UnknownNameError for any other key)."""
    _, _, dataset = key.partition("/")
    src = key_sources().get(dataset)
    if src is None or key not in generated_keys(dataset):
        raise _unknown_key(key)
    return src


def key_facets(key: str) -> Mapping[str, str]:
    """What the generalisation splits pair a generated key by (its model's facets)."""
    return key_source(key).facets(key.split("/")[0])


def all_keys() -> tuple[str, ...]:
    """Every key: the real ones, then the generated ones."""
    return REAL_KEYS + generated_keys()


def key_info(key: str, *, base_url: str | None = None) -> KeyInfo:
    """The :class:`KeyInfo` of a single key (not a grouping)."""
    if key in REAL_KEYS:
        return _real_info(key, base_url)
    if key in generated_keys():
        return KeyInfo(
            key=key,
            model=key.split("/")[0],
            dataset=key.split("/")[1],
            synthetic=True,
            ships_images=True,
            url=None,
        )
    raise _unknown_key(key)


def groupings() -> dict[str, tuple[str, ...]]:
    """Grouping name -> keys: the paper's (``loaders.DATASET_GROUPINGS``) and the synthetic ones."""
    out: dict[str, tuple[str, ...]] = {
        "base": BASE_KEYS,
        "cls": tuple(k for k in BASE_KEYS if not k.startswith("biggan/")),
        "gen": tuple(k for k in BASE_KEYS if k.startswith("biggan/")),
        "imagenet": tuple(k for k in BASE_KEYS if k.endswith("/imagenet")),
        "places365": tuple(k for k in BASE_KEYS if k.endswith("/places365")),
    }
    for model in ("alexnet", "resnet152", "biggan"):
        out[model] = tuple(k for k in BASE_KEYS if k.startswith(f"{model}/"))
    for key in BASE_KEYS:
        out[f"not-{key.replace('/', '-')}"] = tuple(k for k in BASE_KEYS if k != key)
    for dataset in key_sources():
        generated = generated_keys(dataset)
        out[dataset] = generated
        for key in generated:
            out[f"not-{key.replace('/', '-')}"] = tuple(k for k in generated if k != key)
    return out


def _unknown_key(name: str) -> UnknownNameError:
    names = list(all_keys()) + list(groupings())
    return UnknownNameError(
        "MILANNOTATIONS key or grouping",
        name,
        names,
        note="Keys are <model>/<dataset>; synthetic ones are <target>/synthetic.",
    )


def resolve_keys(names: str | Sequence[str]) -> tuple[str, ...]:
    """Keys named by a key, a grouping, or several of them (in order, without repeats).

    ``alexnet-imagenet`` (the directory form) is accepted for ``alexnet/imagenet``.
    """
    items = [names] if isinstance(names, str) else list(names)
    if not items:
        raise UsageError("Expected at least one MILANNOTATIONS key or grouping, got none.")
    keys = all_keys()
    by_dirname = {k.replace("/", "-"): k for k in keys}
    groups = groupings()
    out: list[str] = []
    for raw in items:
        name = str(raw).strip()
        if name in groups:
            out.extend(groups[name])
        elif name in keys:
            out.append(name)
        elif name in by_dirname:
            out.append(by_dirname[name])
        else:
            raise _unknown_key(name)
    return tuple(dict.fromkeys(out))


# --- where the data is ----------------------------------------------------------------------------


def default_root(cache: Cache | None = None) -> Path:
    """``$MILAN_DATA_DIR`` if set (the original's variable), else the cache's
    ``datasets/milannotations``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    from bench.cache import Cache

    return (cache if cache is not None else Cache()).datasets_dir() / "milannotations"


def _has_annotations(path: Path) -> bool:
    return (path / ANNOTATIONS_FILE).is_file()


def locate(
    key: str, root: str | os.PathLike[str] | None = None, *, cache: Cache | None = None
) -> Path | None:
    """The directory holding ``annotations.csv`` of ``key`` under ``root``, or ``None``.

    Looks at ``<root>/<model>-<dataset>``, a single folder inside it (a zip with a top-level
    folder), and the original's nested ``<root>/<model>/<dataset>``.
    """
    info = key_info(key)
    base = Path(root).expanduser() if root is not None else default_root(cache)
    direct = base / info.dirname
    for candidate in (direct, base / info.model / info.dataset):
        if _has_annotations(candidate):
            return candidate
    if direct.is_dir():
        inner = [p for p in direct.iterdir() if p.is_dir() and _has_annotations(p)]
        if len(inner) == 1:
            return inner[0]
    return None


def fetch(
    key: str,
    root: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    timeout: float = 10.0,
    progress: bool = False,
    cache: Cache | None = None,
) -> Path:
    """Download and unpack a real key into ``root`` unless it is there; return its directory.

    The zip goes to ``<root>/<model>-<dataset>.zip`` (resumed, with a timeout). No checksum is
    published, so its sha256 is recorded beside it on first download and checked afterwards, as
    for Broden; extraction refuses members that would land outside the directory.
    """
    from bench.download import ensure_file, safe_extract

    info = key_info(key, base_url=base_url)
    if info.synthetic or info.url is None:
        raise UsageError(f"'{key}' is a generated key ({key_source(key).origin}), not downloaded.")
    base = Path(root).expanduser() if root is not None else default_root(cache)
    found = locate(key, base)
    if found is not None:
        return found
    archive, _ = ensure_file(
        info.url,
        base / f"{info.dirname}.zip",
        sha256=info.sha256,
        what=f"MILANNOTATIONS {key}",
        timeout=timeout,
        progress=progress,
    )
    safe_extract(archive, base / info.dirname)
    found = locate(key, base)
    if found is None:
        raise DataError(
            f"{archive} unpacked into {base / info.dirname}, but no {ANNOTATIONS_FILE} was "
            "found there; expected the MILANNOTATIONS layout. Delete both and download again."
        )
    return found


def _key_dir(
    key: str,
    root: Path | None,
    *,
    download: bool,
    base_url: str | None,
    timeout: float,
    cache: Cache | None,
    progress: bool,
) -> Path:
    info = key_info(key)
    if info.synthetic:
        src = key_source(key)
        if root is None:
            root = src.root(cache, progress=progress)
        found = locate(key, root)
        if found is None:
            raise DataError(
                f"Expected the generated MILANNOTATIONS key '{key}' in {root} (a directory "
                f"{info.dirname}/ with {ANNOTATIONS_FILE}), found nothing. It is made by "
                f"{src.origin}; load without root to generate it into the cache."
            )
        return found
    base = root if root is not None else default_root(cache)
    found = locate(key, base)
    if found is not None:
        return found
    if download:
        return fetch(key, base, base_url=base_url, timeout=timeout, progress=progress)
    url = _real_info(key, base_url).url
    raise DataError(
        f"MILANNOTATIONS '{key}' is not in {base} (expected {base / info.dirname}/"
        f"{ANNOTATIONS_FILE}). Download it with download=True, or fetch {url} and unzip it "
        f"into {base / info.dirname}; set ${ENV_DATA_DIR} or pass root to look elsewhere."
    )


# --- reading files --------------------------------------------------------------------------------


def read_annotations_csv(
    path: str | os.PathLike[str], *, annotation_count: int | None = None
) -> dict[tuple[str, int], tuple[str, ...]]:
    """``(layer, unit) -> descriptions`` of an ``annotations.csv`` (header ``layer,unit,summary``,
    other columns ignored; 0-based units), units in order of first appearance.

    With ``annotation_count`` units with fewer descriptions are dropped and extras truncated;
    ``None`` keeps everything. Empty descriptions are skipped. Usable on its own (text only).
    """
    p = Path(path)
    if annotation_count is not None and annotation_count < 1:
        raise UsageError(f"Expected annotation_count >= 1 or None, got {annotation_count}.")
    if not p.is_file():
        raise DataError(
            f"Expected the annotations file {p}, found nothing there; a MILANNOTATIONS "
            f"directory holds {ANNOTATIONS_FILE} with columns layer,unit,summary."
        )
    out: dict[tuple[str, int], list[str]] = {}
    empty = 0
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(
                f"{p}: expected a header line layer,unit,summary, got an empty file."
            ) from None
        missing = [c for c in ANNOTATION_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{p}: line 1: expected columns {', '.join(ANNOTATION_COLUMNS)}; missing "
                f"{', '.join(missing)} (got {', '.join(header) or 'nothing'})."
            )
        col = {c: header.index(c) for c in ANNOTATION_COLUMNS}
        for row in reader:
            if not row or not any(v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{p}: line {reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}), got {len(row)}. Quote descriptions that contain "
                    "commas."
                )
            layer = row[col["layer"]].strip()
            unit_text = row[col["unit"]].strip()
            if not layer:
                raise DataError(f"{p}: line {reader.line_num}: expected a layer name, got none.")
            try:
                unit = int(unit_text)
            except ValueError:
                unit = -1
            if unit < 0:
                raise DataError(
                    f"{p}: line {reader.line_num}: expected a 0-based unit index in column "
                    f"'unit', got {unit_text!r}."
                )
            text = row[col["summary"]].strip()
            if not text:
                empty += 1
                continue
            out.setdefault((layer, unit), []).append(text)
    if empty:
        log.warning("%s: skipped %d empty descriptions.", p, empty)
    if annotation_count is None:
        return {k: tuple(v) for k, v in out.items()}
    dropped = sum(1 for v in out.values() if len(v) < annotation_count)
    if dropped:
        log.info(
            "%s: dropped %d units with fewer than %d descriptions.", p, dropped, annotation_count
        )
    return {k: tuple(v[:annotation_count]) for k, v in out.items() if len(v) >= annotation_count}


def read_ids_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """int64 ``[units, k]`` from an ``ids.csv`` (one row of k indices per unit, no header)."""
    import numpy as np

    p = Path(path)
    rows: list[list[int]] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append([int(float(v)) for v in line.split(",")])
            except ValueError:
                if n == 1 and not rows:  # a header line
                    continue
                raise DataError(
                    f"{p}: line {n}: expected comma-separated image indices, got {line[:80]!r}."
                ) from None
    if not rows:
        return np.zeros((0, 0), dtype=np.int64)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DataError(f"{p}: expected the same number of indices on every line, got {widths}.")
    return np.asarray(rows, dtype=np.int64)


def _load_npy(path: Path) -> np.ndarray:
    import numpy as np

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(
            f"Could not read {path}: {e}. Expected a numpy .npy array; delete it and "
            "download (or rebuild) it again."
        ) from e


@dataclass(kw_only=True)
class _Layer:
    """One layer directory: memory-mapped arrays and the row of each unit."""

    name: str
    directory: Path
    masks: np.ndarray
    images: np.ndarray | None
    ids: np.ndarray | None
    rows: dict[int, int]


def _open_layer(directory: Path, name: str, *, need_images: bool) -> _Layer:
    import numpy as np

    masks_path = directory / "masks.npy"
    if not masks_path.is_file():
        raise DataError(
            f"Expected {masks_path} (uint8 [units, k, 1, H, W]), found nothing there; the "
            "MILANNOTATIONS download is incomplete. Delete it and download it again."
        )
    masks = _load_npy(masks_path)
    if masks.ndim != 5 or masks.shape[2] != 1:
        raise DataError(f"{masks_path}: expected shape [units, k, 1, H, W], got {masks.shape}.")
    images = None
    images_path = directory / "images.npy"
    if need_images:
        if not images_path.is_file():
            raise DataError(
                f"Expected {images_path} (uint8 [units, k, 3, H, W]), found nothing there; "
                "this key ships its images, so the download is incomplete. Delete it and "
                "download it again."
            )
        images = _load_npy(images_path)
        want = (masks.shape[0], masks.shape[1], 3, masks.shape[3], masks.shape[4])
        if tuple(images.shape) != want:
            raise DataError(
                f"{images_path}: expected shape {list(want)} to match the masks, "
                f"got {list(images.shape)}."
            )
    ids_path = directory / "ids.csv"
    ids = read_ids_csv(ids_path) if ids_path.is_file() else None
    if ids is not None and ids.shape != masks.shape[:2]:
        raise DataError(
            f"{ids_path}: expected {masks.shape[0]} rows of {masks.shape[1]} indices to match "
            f"the masks, got {list(ids.shape)}."
        )
    units_path = directory / "units.npy"
    if units_path.is_file():
        units = np.asarray(_load_npy(units_path)).reshape(-1).astype(np.int64)
        if units.shape[0] != masks.shape[0]:
            raise DataError(
                f"{units_path}: expected {masks.shape[0]} unit indices (one per row of the "
                f"masks), got {units.shape[0]}."
            )
        rows = {int(u): i for i, u in enumerate(units)}
    else:
        rows = {i: i for i in range(masks.shape[0])}
    return _Layer(name=name, directory=directory, masks=masks, images=images, ids=ids, rows=rows)


# --- ImageNet images ------------------------------------------------------------------------------


def imagenet_val_dir(
    imagenet_root: str | os.PathLike[str] | None, root: Path | None
) -> Path | None:
    """Where the local ImageNet validation ImageFolder is expected."""
    if imagenet_root is not None:
        return Path(imagenet_root).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    for base in ([Path(env).expanduser()] if env else []) + ([root] if root is not None else []):
        candidate = base / "imagenet" / "val"
        if candidate.is_dir():
            return candidate
    return None


def _marker(crop: int, resize: int) -> dict[str, Any]:
    return {
        "version": IMAGENET_REBUILD_VERSION,
        "transform": f"Resize({resize}) + CenterCrop({crop})",
        "made_by": "neuron-bench",
    }


def rebuild_imagenet_images(
    layer_dir: str | os.PathLike[str],
    imagenet_val: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> Path:
    """Build ``<layer_dir>/images.npy`` from ``ids.csv`` and a local ImageNet val ImageFolder.

    Each image gets ``Resize(256)`` and ``CenterCrop(224)`` (scaled with the masks' size when it
    is not 224), the transform the exemplars were computed with. Written through a memory map
    into a temporary file renamed into place; ``images.json`` records how it was made.
    """
    import numpy as np

    from bench.exemplars import target_view
    from bench.probes.imagefolder import ImageFolderProbe
    from bench.schema import atomic_path, write_json
    from bench.targets import Preprocessing

    directory = Path(layer_dir)
    masks = _load_npy(directory / "masks.npy")
    ids_path = directory / "ids.csv"
    if not ids_path.is_file():
        raise DataError(
            f"Expected {ids_path} to rebuild the ImageNet exemplar images, found nothing there."
        )
    ids = read_ids_csv(ids_path)
    units, k, _, h, w = masks.shape
    if ids.shape != (units, k):
        raise DataError(
            f"{ids_path}: expected {units} rows of {k} indices to match the masks, "
            f"got {list(ids.shape)}."
        )
    if h != w:
        raise DataError(f"{directory / 'masks.npy'}: expected square masks, got {h}x{w}.")
    probe = ImageFolderProbe(Path(imagenet_val))
    if ids.size and (int(ids.max()) >= len(probe) or int(ids.min()) < 0):
        raise DataError(
            f"{ids_path} refers to image {int(ids.max())}, but {imagenet_val} holds "
            f"{len(probe)} images. Expected the 50,000-image ImageNet validation set laid out "
            "in class folders (<val>/<wnid>/<image>)."
        )
    resize = round(h * IMAGENET_RESIZE / IMAGENET_CROP)
    prep = Preprocessing(input_size=h, resize=resize)
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    uniq, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    with atomic_path(directory / "images.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(units, k, 3, h, w))
        slots = out.reshape(units * k, 3, h, w)
        step = 64
        with progress_bar(
            total=len(uniq), desc=f"ImageNet images {directory.name}", enabled=progress
        ) as bar:
            for lo in range(0, len(uniq), step):
                views = target_view(probe, uniq[lo : lo + step], prep, fixed_geometry=False)
                for j, view in enumerate(views, start=lo):
                    slots[order[starts[j] : starts[j] + counts[j]]] = view
                bar.update(len(views))
        out.flush()
        del slots, out
    write_json(directory / "images.json", _marker(h, resize) | {"source": probe.identity()})
    log.info("Rebuilt %s from %s", directory / "images.npy", imagenet_val)
    return directory / "images.npy"


def _ensure_imagenet_images(
    key_dir: Path, layers: Iterable[str], imagenet_val: Path | None, key: str, progress: bool
) -> None:
    for layer in layers:
        directory = key_dir / layer
        images = directory / "images.npy"
        if images.is_file():
            marker = directory / "images.json"
            if not marker.is_file():
                log.warning(
                    "%s was not built by neuron-bench; if the original MILAN merge made it, "
                    "its images are squashed to a square and misaligned with the masks. Delete "
                    "it to rebuild it with Resize(256) + CenterCrop(224).",
                    images,
                )
            continue
        if imagenet_val is None or not imagenet_val.is_dir():
            where = imagenet_val or f"${ENV_DATA_DIR}/imagenet/val"
            raise DataError(
                f"MILANNOTATIONS '{key}' ships no exemplar images: they are rebuilt from a local "
                f"ImageNet validation set, expected as class folders at {where}. Pass "
                "imagenet_root=DIR (or set $MILAN_DATA_DIR to a folder holding imagenet/val), "
                "or load with images=False for the annotations alone."
            )
        try:
            rebuild_imagenet_images(directory, imagenet_val, progress=progress)
        except OSError as e:
            raise DataError(
                f"Could not write the rebuilt ImageNet images into {directory}: {e}. Make the "
                "MILANNOTATIONS directory writable, or copy it somewhere writable and pass that "
                "as root."
            ) from e


# --- the dataset ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class UnitId:
    """A unit of a key: ``layer`` and 0-based ``unit``."""

    key: str
    layer: str
    unit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnotatedUnit:
    """One annotated unit: ``images`` uint8 [k, 3, H, W], ``masks`` uint8 0/1 [k, 1, H, W]
    (read-only memory maps), ``annotations`` its descriptions, ``ids`` int64 [k] the exemplar
    images' indices in the key's source dataset (``None`` when ``ids.csv`` is absent)."""

    key: str
    layer: str
    unit: int
    images: np.ndarray
    masks: np.ndarray
    annotations: tuple[str, ...]
    ids: np.ndarray | None = None

    @property
    def id(self) -> UnitId:
        return UnitId(key=self.key, layer=self.layer, unit=self.unit)


@dataclass(frozen=True, slots=True)
class _Entry:
    uid: UnitId
    annotations: tuple[str, ...]
    layer: _Layer | None
    row: int


class Milannotations(Sequence[AnnotatedUnit]):
    """Annotated units of one or more keys, in key, layer-file and unit order.

    ``dataset[i]`` is an :class:`AnnotatedUnit`; ``units`` lists their :class:`UnitId` and
    ``texts()`` their descriptions without touching the arrays. A dataset loaded with
    ``images=False`` holds text only.
    """

    def __init__(self, entries: Sequence[_Entry], *, keys: Sequence[str], text_only: bool):
        self._entries = list(entries)
        self._index = {e.uid: i for i, e in enumerate(self._entries)}
        self.keys = tuple(keys)
        self.text_only = text_only

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> AnnotatedUnit: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[AnnotatedUnit]: ...

    def __getitem__(self, i: int | slice) -> AnnotatedUnit | Sequence[AnnotatedUnit]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        e = self._entries[i]
        if e.layer is None:
            raise UsageError(
                "This MILANNOTATIONS dataset was loaded with images=False (text only); load it "
                "with images=True to read exemplar images and masks."
            )
        layer = e.layer
        images = layer.images
        if images is None:
            raise DataError(f"{layer.directory / 'images.npy'} was not loaded; reload the key.")
        return AnnotatedUnit(
            key=e.uid.key,
            layer=e.uid.layer,
            unit=e.uid.unit,
            images=images[e.row],
            masks=layer.masks[e.row],
            annotations=e.annotations,
            ids=None if layer.ids is None else layer.ids[e.row],
        )

    def __iter__(self) -> Iterator[AnnotatedUnit]:
        for i in range(len(self)):
            yield self[i]

    @property
    def units(self) -> tuple[UnitId, ...]:
        return tuple(e.uid for e in self._entries)

    def get(self, uid: UnitId) -> AnnotatedUnit:
        if uid not in self._index:
            raise UsageError(
                f"Expected a unit of this dataset (keys {', '.join(self.keys)}), got {uid}."
            )
        return self[self._index[uid]]

    def texts(self) -> dict[UnitId, tuple[str, ...]]:
        """Every unit's descriptions (no array is read)."""
        return {e.uid: e.annotations for e in self._entries}

    def subset(self, units: Iterable[UnitId]) -> Milannotations:
        """The given units (in this dataset's order); UsageError for a unit it lacks."""
        wanted = set(units)
        missing = [u for u in wanted if u not in self._index]
        if missing:
            raise UsageError(
                f"Expected units of this dataset; {len(missing)} are not in it, e.g. "
                f"{sorted(missing)[0]}."
            )
        entries = [e for e in self._entries if e.uid in wanted]
        keys = [k for k in self.keys if any(e.uid.key == k for e in entries)]
        return Milannotations(entries, keys=keys, text_only=self.text_only)

    def by_key(self, key: str) -> Milannotations:
        return self.subset(u for u in self.units if u.key == key)


def _load_key(
    key: str,
    key_dir: Path,
    *,
    annotation_count: int | None,
    images: bool,
    imagenet_val: Path | None,
    progress: bool,
) -> list[_Entry]:
    info = key_info(key)
    annotations = read_annotations_csv(
        key_dir / ANNOTATIONS_FILE, annotation_count=annotation_count
    )
    if not images:
        return [
            _Entry(UnitId(key=key, layer=layer, unit=unit), texts, None, -1)
            for (layer, unit), texts in annotations.items()
        ]
    present = sorted(p.name for p in key_dir.iterdir() if p.is_dir() and (p / "masks.npy").exists())
    wanted = list(dict.fromkeys(layer for layer, _ in annotations))
    for layer in wanted:
        if layer not in present:
            close = difflib.get_close_matches(layer, present, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise DataError(
                f"{key_dir / ANNOTATIONS_FILE} names layer '{layer}', but {key_dir} has no "
                f"directory {layer}/ with masks.npy.{hint} Layers there: "
                f"{', '.join(present) or '(none)'}."
            )
    if info.imagenet:
        _ensure_imagenet_images(key_dir, wanted, imagenet_val, key, progress)
    layers = {layer: _open_layer(key_dir / layer, layer, need_images=True) for layer in wanted}
    entries = []
    for (layer, unit), texts in sorted(
        annotations.items(), key=lambda kv: (wanted.index(kv[0][0]), kv[0][1])
    ):
        data = layers[layer]
        if unit not in data.rows:
            raise DataError(
                f"{key_dir / ANNOTATIONS_FILE} describes unit {unit} of layer '{layer}', but "
                f"{data.directory / 'masks.npy'} holds {data.masks.shape[0]} units; expected "
                "0-based unit indices within the layer."
            )
        entries.append(
            _Entry(UnitId(key=key, layer=layer, unit=unit), texts, data, data.rows[unit])
        )
    return entries


def load(
    key: str | Sequence[str] = "base",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    annotation_count: int | None = ANNOTATION_COUNT,
    images: bool = True,
    imagenet_root: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    cache: Cache | None = None,
    timeout: float = 10.0,
    progress: bool = False,
) -> Milannotations:
    """MILANNOTATIONS of a key, a grouping, or several (see :func:`resolve_keys`).

    ``root``: the directory holding the key directories (default :func:`default_root`; for
    synthetic keys, the cached synthetic export in ``cache``). ``download``: fetch missing real
    keys (:func:`fetch`; ``base_url`` overrides the host). ``annotation_count``: keep units with
    at least that many descriptions, truncated to it (``None``: all). ``images=False`` reads the
    annotations alone (no arrays, no ImageNet). ``imagenet_root``: the ImageNet val ImageFolder
    for ImageNet keys.
    """
    keys = resolve_keys(key)
    base = Path(root).expanduser() if root is not None else None
    entries: list[_Entry] = []
    generated_roots: dict[str, Path] = {}  # each source's export, made (or found) once
    for k in keys:
        root_k = base
        if base is None and key_info(k).synthetic:
            src = key_source(k)
            if src.dataset not in generated_roots:
                generated_roots[src.dataset] = src.root(cache, progress=progress)
            root_k = generated_roots[src.dataset]
        key_dir = _key_dir(
            k,
            root_k,
            download=download,
            base_url=base_url,
            timeout=timeout,
            cache=cache,
            progress=progress,
        )
        imagenet_val = imagenet_val_dir(
            imagenet_root, base if base is not None else default_root(cache)
        )
        entries.extend(
            _load_key(
                k,
                key_dir,
                annotation_count=annotation_count,
                images=images,
                imagenet_val=imagenet_val,
                progress=progress,
            )
        )
    return Milannotations(entries, keys=keys, text_only=not images)
