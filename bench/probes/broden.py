"""Broden, NetDissect's probe set, in its published layout (reference/formats.md).

::

    <root>/index.csv        image,split,ih,iw,sh,sw,<category columns>
    <root>/label.csv        number,name,category,frequency,coverage,syns
    <root>/category.csv     name,first,last,count,frequency
    <root>/c_<category>.csv code,number,name,frequency,coverage
    <root>/images/...       the images and the segmentation PNGs

A category cell holds ``;``-separated entries: PNG paths relative to ``images/`` (pixel-level
labels, decoded as ``R + 256*G``) or label numbers (image-level labels such as scene and texture).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError, UsageError
from bench.probes.base import Concept, ProbeSet, Segmentation

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

BRODEN_URL = "http://netdissect.csail.mit.edu/data/{name}.zip"
BRODEN_NAMES = ("broden1_224", "broden1_227")
INDEX_FIXED_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
LABEL_COLUMNS = ("number", "name", "category")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_CATEGORY_COUNT = re.compile(r"^\s*([^()]+?)\s*\((\d+)\)\s*$")


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    image: str
    sh: int
    sw: int
    # category -> PNG paths relative to images/, and category -> label numbers
    pixel: dict[str, tuple[str, ...]]
    image_labels: dict[str, tuple[int, ...]]


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line number, row)`` pairs; DataError when the file or a column is missing."""
    if not path.is_file():
        raise DataError(
            f"Expected the Broden file {path}, found nothing there. Point the probe "
            "root at a Broden directory (it holds index.csv, label.csv, images/)."
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: expected a header line, got an empty file.") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{path}: line 1: expected columns {', '.join(required)}; missing "
                f"{', '.join(missing)} (got {', '.join(header)})."
            )
        rows = []
        for values in reader:
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}: line {reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}), got {len(values)}."
                )
            rows.append((reader.line_num, dict(zip(header, values, strict=True))))
    return header, rows


def _int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise DataError(
            f"{path}: line {line}: expected an integer in column '{column}', got {value!r}."
        ) from None


def _coverage(value: str, path: Path, line: int) -> float:
    try:
        out = float(value.strip())
    except ValueError:
        out = math.nan
    if not math.isfinite(out) or out < 0:
        raise DataError(
            f"{path}: line {line}: expected a non-negative number in column 'coverage', "
            f"got {value!r}."
        )
    return out


def index_columns(root: str | Path, index_file: str = "index.csv") -> list[str]:
    """The category columns of ``<root>/<index_file>`` in file order (reads only the header)."""
    path = Path(root).expanduser() / index_file
    if not path.is_file():
        raise DataError(
            f"Expected the Broden file {path}, found nothing there. Point the probe "
            "root at a Broden directory (it holds index.csv, label.csv, images/)."
        )
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if header is None:
        raise DataError(f"{path}: expected a header line, got an empty file.")
    return [c.strip() for c in header if c.strip() not in INDEX_FIXED_COLUMNS]


def _category_suffix(category: str) -> str:
    # Broden marks a label's category with "-<first letter>": "red-c", "street-s", "wood-m".
    return f"-{category[:1]}"


def clean_name(raw_name: str, categories: Sequence[str]) -> str:
    """``raw_name`` without Broden's category suffix, stripped only for one of its categories."""
    for cat in categories:
        suffix = _category_suffix(cat)
        if cat and raw_name.endswith(suffix) and len(raw_name) > len(suffix):
            return raw_name[: -len(suffix)]
    return raw_name


def decode_segmentation_png(path: str | os.PathLike[str]) -> np.ndarray:
    """int32 ``[H, W]`` label numbers of a Broden segmentation PNG: ``R + 256*G``.

    Computed in int32: in uint8 (as the original code did) ``G*256`` wraps around on NumPy 2.
    Plain 8-bit RGB and RGBA PNGs (what Broden and the synthetic export write) are decoded by
    zlib and one compiled pass that unfilters the rows and composes the label numbers (about 2.5
    times as fast as PIL's open-convert path on the 64-px synthetic export, file reading
    included); any other PNG goes through PIL. Both give the same numbers (tested).
    """
    import zlib

    import numpy as np

    try:
        with open(path, "rb", buffering=0) as f:
            data = f.readall()
        parts = _png_parts(data)
        if parts is not None:
            raw, h, w, channels = parts
            labels = np.empty((h, w), dtype=np.int32)
            scratch = np.empty((2, w * channels), dtype=np.uint8)
            if _png_unfilter()(raw, h, w * channels, channels, scratch, labels):
                return labels
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise  # the caller names the index.csv row that points here
    except (OSError, ValueError, zlib.error) as e:  # truncated, corrupt, not an image
        raise DataError(
            f"Expected a readable segmentation PNG at {path}, got an error: {e}. Replace the "
            "file with a good copy (or remove its row from index.csv)."
        ) from e
    out = rgb[:, :, 1].astype(np.int32)
    out <<= 8
    out += rgb[:, :, 0]
    return out


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {2: 3, 6: 4}  # colour type -> channels (RGB, RGBA)
_UNFILTER: Any = None


def _png_unfilter() -> Any:
    """The compiled PNG row unfilter (numba), compiled once per process (cached on disk)."""
    global _UNFILTER
    if _UNFILTER is not None:
        return _UNFILTER
    import numba
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def unfilter(raw, h, stride, bpp, out, labels):  # pragma: no cover - compiled; tested
        # PNG filters (spec section 9): each row starts with its filter type; a, b, c are the
        # reconstructed bytes to the left, above, and above-left (0 outside the image). The
        # first row reads a zero row above it. ``out`` holds every row ([h, stride]) or only
        # the last two ([2, stride], rows in turn); with ``labels`` [h, w] (not [0, 0]) each
        # row's label numbers ``R + 256 * G`` are written there as it is reconstructed.
        zero = np.zeros(stride, np.uint8)
        ring = out.shape[0]
        compose = labels.shape[0] > 0
        for r in range(h):
            base = r * (stride + 1) + 1
            f = raw[base - 1]
            cur = out[r % ring]
            up = out[(r - 1) % ring] if r > 0 else zero
            if f == 0:
                for i in range(stride):
                    cur[i] = raw[base + i]
            elif f == 1:
                for i in range(stride):
                    left = cur[i - bpp] if i >= bpp else 0
                    cur[i] = (np.int32(raw[base + i]) + left) & 255
            elif f == 2:
                for i in range(stride):
                    cur[i] = (np.int32(raw[base + i]) + up[i]) & 255
            elif f == 3:
                for i in range(stride):
                    left = np.int32(cur[i - bpp]) if i >= bpp else np.int32(0)
                    cur[i] = (np.int32(raw[base + i]) + (left + np.int32(up[i])) // 2) & 255
            elif f == 4:
                for i in range(stride):
                    a = np.int32(cur[i - bpp]) if i >= bpp else np.int32(0)
                    b = np.int32(up[i])
                    c = np.int32(up[i - bpp]) if i >= bpp else np.int32(0)
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    if pa <= pb and pa <= pc:
                        pred = a
                    elif pb <= pc:
                        pred = b
                    else:
                        pred = c
                    cur[i] = (np.int32(raw[base + i]) + pred) & 255
            else:
                return False
            if compose:
                row = labels[r]
                for x in range(row.shape[0]):
                    row[x] = np.int32(cur[x * bpp]) + (np.int32(cur[x * bpp + 1]) << 8)
        return True

    _UNFILTER = unfilter
    return unfilter


def _png_parts(data: bytes) -> tuple[np.ndarray, int, int, int] | None:
    """(the inflated, still filtered rows as uint8, height, width, channels) of a PNG that is
    8-bit RGB or RGBA and not interlaced; ``None`` for any other PNG or for one whose chunks do
    not check out (the caller decodes those with PIL, which reports the error)."""
    import struct
    import zlib

    import numpy as np

    if data[:8] != _PNG_SIGNATURE:
        return None
    pos, n = 8, len(data)
    header = None
    idat: list[bytes] = []
    while pos + 12 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > n:
            return None
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[pos + 4 : end]) != crc:
            return None
        if kind == b"IHDR":
            if length != 13:
                return None
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : end])
        elif kind == b"IEND":
            break
        pos = end + 4
    if header is None or not idat:
        return None
    w, h, depth, color, compression, filtering, interlace = header
    channels = _PNG_CHANNELS.get(color)
    if depth != 8 or channels is None or compression or filtering or interlace or not w or not h:
        return None
    try:
        raw = zlib.decompress(idat[0] if len(idat) == 1 else b"".join(idat))
    except zlib.error:
        return None
    if len(raw) != h * (w * channels + 1):
        return None
    return np.frombuffer(raw, dtype=np.uint8), h, w, channels


def decode_png_rgb(data: bytes) -> np.ndarray | None:
    """uint8 ``[H, W, 3]`` of a PNG that is 8-bit RGB or RGBA and not interlaced (the alpha
    channel is dropped, as PIL's ``convert("RGB")`` does); ``None`` for any other PNG or for one
    whose chunks do not check out (the caller decodes those with PIL, which reports the error).
    """
    import numpy as np

    parts = _png_parts(data)
    if parts is None:
        return None
    raw, h, w, channels = parts
    out = np.empty((h, w * channels), dtype=np.uint8)
    if not _png_unfilter()(raw, h, w * channels, channels, out, np.empty((0, 0), np.int32)):
        return None
    return out.reshape(h, w, channels)[:, :, :3]


class BrodenProbe(ProbeSet):
    """Broden images with per-pixel and per-image concept labels.

    ``categories`` keeps only those category columns of ``index.csv`` (default: every category
    column present; the ``broden`` probe factory defaults to NetDissect's five). ``max_images``
    keeps the first rows of ``index.csv``.

    A concept's primary category is, as in NetDissect-Lite, the selected category in which the
    label has the largest ``coverage`` in ``c_<category>.csv``; on a tie, the one that comes last
    in ``category.csv`` (Lite takes the maximum of ``(coverage, category position)`` pairs; the
    order of ``index.csv``'s columns stands in where ``category.csv`` is missing). Where the
    ``c_<category>.csv`` files are missing, it is the category that ``label.csv`` counts the label
    in most often (``material(36);object(3)``; first listed on a tie).
    """

    fixed_geometry = True
    has_segmentations = True

    def __init__(
        self,
        root: str | Path,
        *,
        categories: Sequence[str] | None = None,
        index_file: str = "index.csv",
        max_images: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.name = "broden"
        if not self.root.is_dir():
            raise DataError(
                f"Expected a Broden directory at {self.root}, found nothing there. "
                "Pass the directory that holds index.csv, or --download to fetch "
                "broden1_224."
            )
        if max_images is not None and max_images < 1:
            raise UsageError(f"Expected max_images >= 1 or None, got {max_images}.")
        self.max_images = max_images
        self._index_path = self.root / index_file
        self._images_dir = str(self.root / "images")
        self._label_path = self.root / "label.csv"
        header, rows = _read_csv(self._index_path, INDEX_FIXED_COLUMNS)
        present = [c for c in header if c not in INDEX_FIXED_COLUMNS]
        self._columns = present
        if categories is None:
            self._categories = present
        else:
            unknown = [c for c in categories if c not in present]
            if unknown:
                raise UsageError(
                    f"Expected Broden categories among {', '.join(present)}; got "
                    f"{', '.join(unknown)} which {self._index_path} does not have."
                )
            self._categories = list(dict.fromkeys(categories))
        if max_images is not None:
            rows = rows[:max_images]
        if not rows:
            raise DataError(f"{self._index_path}: expected at least one image row, got none.")
        self._rows = [self._parse_row(line, row) for line, row in rows]
        sizes = {(r.sh, r.sw) for r in self._rows}
        if len(sizes) != 1:
            first = self._rows[0]
            other = next(r for r in self._rows if (r.sh, r.sw) != (first.sh, first.sw))
            raise DataError(
                f"{self._index_path}: expected every row to have the same segmentation size "
                f"(sh, sw); line {first.line} has {(first.sh, first.sw)} but line {other.line} has "
                f"{(other.sh, other.sw)}."
            )
        self._seg_size = sizes.pop()
        self._category_order = self._read_category_order()
        self._concepts = self._read_labels()
        # Hashing 63k images and their PNGs would take minutes on every run; the CSV files are
        # hashed whole and every image and segmentation PNG of the kept rows by its size and
        # modification time (os.stat: a second or two for all of Broden), so editing, replacing
        # or damaging an image changes the identity (README, "Probe identity"). Hashed now, so
        # the identity describes what was loaded even if the files change later.
        # The c_<category>.csv files decide primary categories, so they belong to the identity.
        h = hashlib.sha256()
        h.update(self._files_digest().encode() + b"\0")
        for path in (self._index_path, self._label_path):
            h.update(path.read_bytes())
            h.update(b"\0")
        for cat in self._categories:
            path = self.root / f"c_{cat}.csv"
            if path.is_file():
                h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        if self._category_order != self._columns:
            # category.csv breaks coverage ties; hashed only when it orders the categories
            # differently from index.csv, so that the usual identity does not change.
            h.update(json.dumps({"category_order": self._category_order}).encode())
        h.update(json.dumps({"categories": self._categories, "max_images": max_images}).encode())
        self._sha256 = h.hexdigest()

    def _files_digest(self) -> str:
        """SHA-256 over ``(path, size, mtime in ns)`` of every image and segmentation PNG the
        kept rows name, in row order (a missing file counts as such; reading it fails later)."""
        h = hashlib.sha256()
        images = self.root / "images"
        for row in self._rows:
            for rel in (row.image, *(p for c in self._categories for p in row.pixel.get(c, ()))):
                try:
                    st = os.stat(images / rel)
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{rel}\0missing\n".encode())
        return h.hexdigest()

    # --- parsing -----------------------------------------------------------------------------

    def _parse_row(self, line: int, row: dict[str, str]) -> _Row:
        path = self._index_path
        image = row["image"].strip()
        if not image:
            raise DataError(
                f"{path}: line {line}: expected an image path in column 'image', "
                "got an empty value."
            )
        for col in ("ih", "iw"):
            _int(row[col], path, line, col)
        sh, sw = _int(row["sh"], path, line, "sh"), _int(row["sw"], path, line, "sw")
        if sh < 1 or sw < 1:
            raise DataError(
                f"{path}: line {line}: expected a positive segmentation size, got sh={sh}, sw={sw}."
            )
        pixel: dict[str, tuple[str, ...]] = {}
        labels: dict[str, tuple[int, ...]] = {}
        for cat in self._categories:
            paths, numbers = [], []
            for entry in row[cat].split(";"):
                entry = entry.strip()
                if not entry:
                    continue
                if entry.isdigit():
                    numbers.append(int(entry))
                elif entry.lower().endswith(_IMAGE_SUFFIXES):
                    paths.append(entry)
                else:
                    raise DataError(
                        f"{path}: line {line}: expected ';'-separated label numbers or PNG paths "
                        f"relative to images/ in column '{cat}', got {entry!r}."
                    )
            if paths:
                pixel[cat] = tuple(paths)
            if numbers:
                labels[cat] = tuple(numbers)
        return _Row(line=line, image=image, sh=sh, sw=sw, pixel=pixel, image_labels=labels)

    def _read_labels(self) -> list[Concept]:
        path = self._label_path
        _, rows = _read_csv(path, LABEL_COLUMNS)
        coverage = self._category_coverage()
        membership: dict[int, list[str]] = {}
        for cat, numbers in coverage.items():
            for number in numbers:
                membership.setdefault(number, []).append(cat)
        selected = set(self._categories)
        position = {c: i for i, c in enumerate(self._category_order)}
        concepts: list[Concept] = []
        seen: set[int] = set()
        for line, row in rows:
            number = _int(row["number"], path, line, "number")
            if number in seen:
                raise DataError(
                    f"{path}: line {line}: label number {number} appears twice; "
                    "expected unique numbers."
                )
            seen.add(number)
            if number <= 0:  # 0 is "unlabelled", never a concept
                continue
            counts: list[tuple[str, int]] = []
            for part in row["category"].split(";"):
                if not part.strip():
                    continue
                m = _CATEGORY_COUNT.match(part)
                if not m:
                    raise DataError(
                        f"{path}: line {line}: expected categories like "
                        f"'material(36);object(3)' in column 'category', got "
                        f"{row['category']!r}."
                    )
                counts.append((m.group(1), int(m.group(2))))
            if not counts:
                counts = [(c, 0) for c in membership.get(number, ())]
            kept = [(c, n) for c, n in counts if c in selected]
            if not kept:
                continue
            cats = tuple(c for c, _ in kept)
            if all(c in coverage for c in cats) and any(number in coverage[c] for c in cats):
                # As NetDissect-Lite: the category where the label has the most coverage
                # (c_<category>.csv; 0 where a file does not list it); ties go to the category
                # that comes last in category.csv (Lite's max over (coverage, position) pairs).
                primary = max(
                    cats, key=lambda c: (coverage[c].get(number, 0.0), position.get(c, -1))
                )
            else:
                # Without those files: where label.csv counts it most (first listed on a tie).
                primary = max(kept, key=lambda cn: cn[1])[0]
            raw = row["name"].strip()
            concepts.append(
                Concept(
                    number=number,
                    name=clean_name(raw, [c for c, _ in counts]),
                    raw_name=raw,
                    category=primary,
                    categories=cats,
                )
            )
        concepts.sort(key=lambda c: c.number)
        return concepts

    def _read_category_order(self) -> list[str]:
        """The category columns in ``category.csv``'s order (NetDissect-Lite's category order),
        those it does not name after them in ``index.csv``'s order; ``index.csv``'s order alone
        when ``category.csv`` is missing."""
        path = self.root / "category.csv"
        if not path.is_file():
            return list(self._columns)
        _, rows = _read_csv(path, ("name",))
        named = [row["name"].strip() for _, row in rows]
        order = [c for c in dict.fromkeys(named) if c in self._columns]
        return order + [c for c in self._columns if c not in order]

    def _category_coverage(self) -> dict[str, dict[int, float]]:
        """Selected category -> {label number: coverage}, from the ``c_<category>.csv`` files
        that exist. They give the primary categories, and the categories of labels whose
        label.csv ``category`` cell is blank."""
        out: dict[str, dict[int, float]] = {}
        for cat in self._categories:
            path = self.root / f"c_{cat}.csv"
            if not path.is_file():
                continue
            _, rows = _read_csv(path, ("code", "number", "coverage"))
            out[cat] = {
                _int(row["number"], path, line, "number"): _coverage(row["coverage"], path, line)
                for line, row in rows
            }
        return out

    # --- the ProbeSet interface ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def _file(self, rel: str, row: _Row, what: str) -> Path:
        path = self.root / "images" / rel
        if not path.is_file():
            raise DataError(
                f"{self._index_path}: line {row.line}: expected the {what} "
                f"images/{rel}, but {path} does not exist."
            )
        return path

    def load_image(self, i: int) -> Image.Image:
        from PIL import Image

        row = self._rows[i]
        path = self._file(row.image, row, "image")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:  # truncated, corrupt, not an image
            raise DataError(
                f"Expected a readable image at {path} ({self._index_path}: line {row.line}), got "
                f"an error: {e}. Replace the file with a good copy (or remove its row from "
                "index.csv)."
            ) from e

    @property
    def seg_size(self) -> tuple[int, int]:
        return self._seg_size

    def categories(self) -> list[str]:
        return list(self._categories)

    def concepts(self) -> list[Concept]:
        return list(self._concepts)

    def segmentation(self, i: int) -> Segmentation:
        """Labels of image ``i``: only the categories that have data for it appear.

        ``pixel[cat]``: int32 ``[L, sh, sw]``, one layer per PNG listed (parts have several).
        """
        import numpy as np

        row = self._rows[i]
        pixel: dict[str, np.ndarray] = {}
        for cat, rels in row.pixel.items():
            layers = []
            for rel in rels:
                what = f"'{cat}' segmentation"
                try:
                    arr = decode_segmentation_png(os.path.join(self._images_dir, rel))
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    self._file(rel, row, what)  # raises the DataError that names the row
                    raise
                if arr.shape != (row.sh, row.sw):
                    raise DataError(
                        f"{self._index_path}: line {row.line}: expected images/{rel} to be "
                        f"{row.sw}x{row.sh} (sw x sh), got {arr.shape[1]}x{arr.shape[0]}."
                    )
                layers.append(arr)
            pixel[cat] = layers[0][None] if len(layers) == 1 else np.stack(layers)
        return Segmentation(pixel=pixel, image=dict(row.image_labels))

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "broden",
            "sha256": self._sha256,
            "categories": list(self._categories),
            "max_images": self.max_images,
            "num_images": len(self),
        }


def fetch_broden(
    name: str = "broden1_224", dest_dir: str | Path | None = None, *, progress: bool = False
) -> Path:
    """Download and unpack ``broden1_224`` or ``broden1_227`` (~1 GB); return the Broden root.

    Broden has no published checksum: the zip's sha256 is recorded beside it on first download
    and checked when it is reused. ``dest_dir`` defaults to the cache's ``datasets`` directory.
    """
    from bench.download import ensure_file, safe_extract

    if name not in BRODEN_NAMES:
        raise UsageError(f"Expected a Broden name in {', '.join(BRODEN_NAMES)}, got {name!r}.")
    if dest_dir is None:
        from bench.cache import Cache

        dest_dir = Cache().datasets_dir()
    dest_dir = Path(dest_dir).expanduser()
    found = _find_root(dest_dir / name)
    if found is not None:
        return found
    url = BRODEN_URL.format(name=name)
    archive, _ = ensure_file(
        url,
        dest_dir / f"{name}.zip",
        what=f"the Broden dataset {name}",
        timeout=10.0,
        progress=progress,
    )
    safe_extract(archive, dest_dir / name)
    found = _find_root(dest_dir / name)
    if found is None:
        raise DataError(
            f"{archive} unpacked into {dest_dir / name} but no index.csv was found "
            "there; expected the Broden layout. Delete both and download again."
        )
    return found


def _find_root(path: Path) -> Path | None:
    # The zip holds a top-level "<name>/" folder; accept either level.
    for candidate in (path, path / path.name):
        if (candidate / "index.csv").is_file():
            return candidate
    return None
