"""CIFAR-10 and CIFAR-100, from the python-version archives published by their authors.

The batches are Python pickles: that is the dataset's own format. They are read with an
unpickler that can build exactly what those files contain (dicts, lists, bytes, ints, and one
uint8 numpy array) and nothing else, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError, UsageError
from bench.probes.base import ProbeSet

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class CifarVariant:
    name: str
    url: str
    archive: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels_key: bytes
    names_key: bytes


CIFAR = {
    "cifar10": CifarVariant(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        labels_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarVariant(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        labels_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}
SPLITS = ("test", "train")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:  # NumPy 2 moved the module; the files (written by NumPy 1) name the old one.
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled numpy array needs; everything else is refused."""

    def __init__(self, file: io.BufferedIOBase, allowed: dict[tuple[str, str], Any]):
        super().__init__(file, encoding="bytes")
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch"
            ) from None


def read_cifar_pickle(path: Path) -> dict[bytes, Any]:
    """A CIFAR batch or meta file as the dict it holds (keys are bytes, as in the originals)."""
    allowed = _allowed_globals()
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, allowed).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: expected a CIFAR python-version batch (a pickled dict), could "
            f"not read it: {e}. Delete the folder and download again."
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}.")
    return obj


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def fetch_cifar(name: str, root: str | Path, *, progress: bool = False) -> Path:
    """Download the archive (md5-checked) and unpack it under ``root``; return the batch folder."""
    from bench.download import download, safe_extract

    variant = _variant(name)
    root = Path(root).expanduser()
    folder = root / variant.folder
    if folder.is_dir():
        return folder
    archive = download(
        variant.url,
        root / variant.archive,
        md5=variant.md5,
        timeout=10.0,
        progress=progress,
        what=f"the {name} archive",
    )
    safe_extract(archive, root)
    if not folder.is_dir():
        raise DataError(
            f"{archive} did not contain {variant.folder}/; expected the "
            "python-version CIFAR archive. Delete it and download again."
        )
    return folder


def _variant(name: str) -> CifarVariant:
    if name not in CIFAR:
        raise UsageError(f"Expected a CIFAR name in {', '.join(CIFAR)}, got {name!r}.")
    return CIFAR[name]


class CifarProbe(ProbeSet):
    """CIFAR images (32x32 RGB) with their class labels.

    ``root`` holds ``cifar-10-batches-py/`` or ``cifar-100-python/`` (as torchvision lays it
    out). With ``download=True`` a missing folder is fetched from the authors' site, checked
    against its published md5, and unpacked there. CIFAR-100 uses the 100 fine labels.
    """

    fixed_geometry = False
    has_segmentations = False

    def __init__(
        self,
        root: str | Path,
        *,
        name: str = "cifar10",
        split: str = "test",
        download: bool = False,
        progress: bool = False,
    ):
        self.variant = _variant(name)
        if split not in SPLITS:
            raise UsageError(f"Expected split in {', '.join(SPLITS)}, got {split!r}.")
        self.name = name
        self.split = split
        self.root = Path(root).expanduser()
        folder = self.root / self.variant.folder
        if not folder.is_dir():
            if not download:
                raise DataError(
                    f"{name} is not at {folder}. Pass --download to fetch it from "
                    f"{self.variant.url} (checked against md5 {self.variant.md5}), or point the "
                    f"probe root at a directory that contains {self.variant.folder}/."
                )
            fetch_cifar(name, self.root, progress=progress)
        self.folder = folder
        self._files = [folder / f for f in getattr(self.variant, split)]
        for f in self._files + [folder / self.variant.meta]:
            if not f.is_file():
                raise DataError(
                    f"Expected the {name} file {f}, found nothing there; the folder "
                    "is incomplete. Delete it and download again (--download)."
                )
        meta = read_cifar_pickle(folder / self.variant.meta)
        if self.variant.names_key not in meta:
            raise DataError(
                f"{folder / self.variant.meta}: expected the key "
                f"{self.variant.names_key!r}, got keys {sorted(meta)}."
            )
        self._class_names = [_text(n) for n in meta[self.variant.names_key]]
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._identity: dict[str, Any] | None = None

    def _load(self) -> None:
        import numpy as np

        if self._data is not None:
            return
        datas, labels = [], []
        for f in self._files:
            batch = read_cifar_pickle(f)
            for key in (b"data", self.variant.labels_key):
                if key not in batch:
                    raise DataError(f"{f}: expected the key {key!r}, got keys {sorted(batch)}.")
            data = np.asarray(batch[b"data"])
            lab = np.asarray(batch[self.variant.labels_key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(
                    f"{f}: expected b'data' as uint8 [N, 3072], got {data.dtype} "
                    f"{list(data.shape)}."
                )
            if lab.shape != (data.shape[0],):
                raise DataError(f"{f}: expected {data.shape[0]} labels, got {lab.shape[0]}.")
            if lab.size and (lab.min() < 0 or lab.max() >= len(self._class_names)):
                raise DataError(
                    f"{f}: expected labels in [0, {len(self._class_names)}), got "
                    f"[{lab.min()}, {lab.max()}]."
                )
            datas.append(data)
            labels.append(lab)
        # 3072 bytes per image: the R plane, then G, then B, each 32x32 row-major.
        self._data = np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self._labels = np.concatenate(labels)

    def __len__(self) -> int:
        self._load()
        assert self._labels is not None
        return int(self._labels.shape[0])

    def image_array(self, i: int) -> np.ndarray:
        """uint8 ``[32, 32, 3]`` RGB of image ``i``."""
        self._load()
        assert self._data is not None
        return self._data[i]

    def load_image(self, i: int) -> Image.Image:
        import numpy as np
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.image_array(i)))

    @property
    def labels(self) -> np.ndarray:
        self._load()
        assert self._labels is not None
        return self._labels

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            h = hashlib.sha256()
            for f in self._files + [self.folder / self.variant.meta]:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
            self._identity = {
                "kind": "cifar",
                "name": self.name,
                "split": self.split,
                "sha256": h.hexdigest(),
            }
        return dict(self._identity)
