"""Dissection: unit masks against concept segmentations, shared by NetDissect and CompExp.

Terms: N probe images, S = sh * sw pixels of a segmentation, C concepts (dense codes 1..C, 0 is
"no concept"), U units of a layer.

**Concept table.** Every pixel of the probe set carries a set of concepts: the labels of every
selected pixel-level category at that pixel (a label two layers or two categories put on the same
pixel counts once: concept masks are sets), plus the image-level labels of its image (scene,
texture: whole-image masks, as NetDissect treats scalar labels). Pixels with the same concept set
and the same set of labelling categories share a *signature*. :class:`ConceptTable` stores one
signature id per pixel (int32 [N, S]), each signature's concepts (a sparse [n_sig, C + 1] 0/1
matrix ``members``) and its pixel count ``pixels`` [n_sig]. Real probe sets have far fewer
signatures than pixels (the synthetic probe: a few hundred for 8 million pixels).

**Unit tally.** One pass over the recorded activation maps upsamples every (image, unit) map whose
maximum exceeds the unit's threshold to the segmentation size (bilinear, ``align_corners=False``,
as NetDissect-Lite's PIL resize), thresholds it, and counts, per unit, the mask's pixels in each
signature: ``hist`` [U, n_sig]. Everything NetDissect and CompExp need is a matrix product with it:

- ``|M_u and L|`` for every unit and concept: ``hist @ members`` (all pairs at once);
- ``|F and L|``, ``|F and L and M_u|`` for a formula F over concepts and every concept L:
  ``(pixels * F) @ members`` and ``(hist[u] * F) @ members``, where ``F`` is the formula
  evaluated on the signatures (a boolean vector). CompExp scores every ``F OR L``, ``F AND L``,
  ``F AND NOT L`` from these two products (inclusion-exclusion) without touching pixels again.

The pass also counts NetDissect's category-restricted denominators, which depend on images rather
than pixels: for each unit and category, the mask area in images where the category labels some
pixel inside the mask or labels the whole image (NetDissect-Lite), or labels anything in the image
(the original NetDissect). Memory is bounded by ``memory_budget``. On the CPU the pass is a
compiled loop (numba) over the (image, unit) pairs whose maximum exceeds the threshold, the
quads of source cells that reach it, and their pixels; on other devices (CUDA) it is vectorised
torch code (:class:`SparseUpsampler`). Both give identical counts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import CacheError, ConfigError, DataError, UsageError
from bench.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse

    from bench.cache import Cache
    from bench.evidence import Evidence, QuantileSpec
    from bench.probes.base import Concept, ProbeSet
    from bench.schema import UnitRef

log = logging.getLogger(__name__)


def no_concept_reason(unit_area: int) -> str:
    """Why a unit's mask meets no concept (NetDissect's and CompExp's '(no concept)' record): it
    is empty, or it covers only unlabelled pixels."""
    if unit_area == 0:
        return "the unit never exceeds its threshold on the probe set (empty mask)"
    return "the unit's mask covers no concept (only unlabelled pixels)"


#: Bump when the concept table's content changes for the same probe (part of its cache key).
TABLE_VERSION = (
    "3"  # 2: primary-category ties go to the last category (Lite); 3: ids in order of appearance
)
#: Bump when the unit tally changes for the same inputs (part of its cache key).
TALLY_VERSION = "1"
TABLE_STAGE = "concept-table"
TALLY_STAGE = "dissect-tally"
#: At most this many categories (their presence is a bit mask per pixel).
MAX_CATEGORIES = 30
#: Images per shard while the table is built (bounds the memory of the build).
SHARD_IMAGES = 64
#: By default, a worker process per this many shards at most: forking this process (its address
#: space holds torch) and starting a worker costs about as much as reducing ten shards of 64-px
#: images (measured: 0.1-0.2 s wall, 0.03 s CPU per fork).
SHARDS_PER_WORKER = 16
DEFAULT_MEMORY_BUDGET = 1 << 30


# --- the concept table ------------------------------------------------------------------------


@dataclass(kw_only=True)
class ConceptTable:
    """The probe set's segmentations as per-pixel signatures (see the module docstring).

    ``concepts[c - 1]`` is the concept with code ``c``; ``primary[c]`` the index in
    ``categories`` of its primary category (``primary[0] = -1``). ``sig`` int32 [N, S] (may be a
    read-only memory map); ``members`` CSR [n_sig, C + 1] (column 0 empty); ``pixels`` int64
    [n_sig]; ``sig_categories`` int64 [n_sig] bit ``c`` set when category ``c`` labels those
    pixels; ``image_categories`` int64 [N] bit ``c`` set when category ``c`` labels anything in
    the image (a pixel or the whole image); ``whole_image_categories`` int64 [N], bit ``c`` set
    when category ``c`` has an image-level label there.
    """

    concepts: list[Concept]
    categories: list[str]
    primary: np.ndarray
    seg_size: tuple[int, int]
    sig: np.ndarray
    members: scipy.sparse.csr_matrix
    pixels: np.ndarray
    sig_categories: np.ndarray
    image_categories: np.ndarray
    whole_image_categories: np.ndarray
    identity: dict[str, Any]

    @property
    def num_images(self) -> int:
        return int(self.sig.shape[0])

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def num_signatures(self) -> int:
        return int(self.pixels.shape[0])

    def code(self, name: str) -> int:
        """Code of the concept with clean name ``name``."""
        for i, c in enumerate(self.concepts):
            if c.name == name:
                return i + 1
        from bench.errors import UnknownNameError

        raise UnknownNameError("concept", name, [c.name for c in self.concepts])

    def label_area(self) -> np.ndarray:
        """int64 [C + 1]: pixels of each concept over the whole probe set (|L|)."""
        import numpy as np

        return np.asarray(self.members.T @ self.pixels, dtype=np.int64).ravel()

    # --- persistence ---

    def save(self, directory: Path) -> None:
        import numpy as np

        from bench.cache import save_arrays
        from bench.schema import write_json

        sig_path = directory / "sig.npy"
        # The table built into its cache entry already holds sig.npy there as a memmap: np.save
        # onto it would truncate the file under its own mapping (SIGBUS), so compare the files,
        # not the spellings of their paths (one may be relative).
        in_place = (
            isinstance(self.sig, np.memmap)
            and self.sig.filename is not None
            and sig_path.exists()
            and os.path.samefile(self.sig.filename, sig_path)
        )
        if not in_place:
            np.save(sig_path, np.ascontiguousarray(self.sig, dtype=np.int32))
        m = self.members
        save_arrays(
            directory / "table.safetensors",
            {
                "primary": self.primary.astype(np.int64),
                "members.indptr": m.indptr.astype(np.int64),
                "members.indices": m.indices.astype(np.int64),
                "pixels": self.pixels.astype(np.int64),
                "sig_categories": self.sig_categories.astype(np.int64),
                "image_categories": self.image_categories.astype(np.int64),
                "whole_image_categories": self.whole_image_categories.astype(np.int64),
            },
        )
        write_json(
            directory / "table.json",
            {
                "concepts": [_concept_json(c) for c in self.concepts],
                "categories": self.categories,
                "seg_size": list(self.seg_size),
                "identity": self.identity,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> ConceptTable:
        import numpy as np
        import scipy.sparse

        from bench.cache import load_arrays
        from bench.probes.base import Concept

        try:
            info = json.loads((directory / "table.json").read_text())
            arrays = load_arrays(directory / "table.safetensors")
            sig = np.load(directory / "sig.npy", mmap_mode="r", allow_pickle=False)
            n_codes = len(info["concepts"]) + 1
            indptr = arrays["members.indptr"]
            indices = arrays["members.indices"]
            members = scipy.sparse.csr_matrix(
                (np.ones(len(indices), dtype=np.float64), indices, indptr),
                shape=(len(indptr) - 1, n_codes),
            )
            return cls(
                concepts=[
                    Concept(**{**c, "categories": tuple(c["categories"])}) for c in info["concepts"]
                ],
                categories=list(info["categories"]),
                primary=arrays["primary"],
                seg_size=(int(info["seg_size"][0]), int(info["seg_size"][1])),
                sig=sig,
                members=members,
                pixels=arrays["pixels"],
                sig_categories=arrays["sig_categories"],
                image_categories=arrays["image_categories"],
                whole_image_categories=arrays["whole_image_categories"],
                identity=info["identity"],
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CacheError(f"Could not read the concept table in {directory}: {e}") from e


def _concept_json(c: Concept) -> dict[str, Any]:
    return {
        "number": c.number,
        "name": c.name,
        "raw_name": c.raw_name,
        "category": c.category,
        "categories": list(c.categories),
    }


def select_concepts(
    probe: ProbeSet, categories: Sequence[str] | None
) -> tuple[list[str], list[Concept], np.ndarray]:
    """The categories kept, their concepts (in label-number order) and each one's primary
    category index. ``categories=None`` keeps every category of the probe set."""
    import numpy as np

    present = list(probe.categories())
    if categories is None:
        cats = present
    else:
        unknown = [c for c in categories if c not in present]
        if unknown:
            raise UsageError(
                f"Expected categories among {', '.join(present)} (those of probe set "
                f"'{probe.name}'), got {', '.join(unknown)}."
            )
        cats = list(dict.fromkeys(categories))
    if not cats:
        raise UsageError(f"Probe set '{probe.name}' has no segmentation categories to dissect.")
    if len(cats) > MAX_CATEGORIES:
        raise UsageError(f"Expected at most {MAX_CATEGORIES} categories, got {len(cats)}.")
    concepts = []
    primary = [-1]
    for c in sorted(probe.concepts(), key=lambda c: c.number):
        kept = [x for x in (c.categories or (c.category,)) if x in cats]
        if not kept:
            continue
        concepts.append(c)
        primary.append(cats.index(c.category if c.category in kept else kept[0]))
    if not concepts:
        raise DataError(
            f"Probe set '{probe.name}' has no concepts in categories {', '.join(cats)}."
        )
    return cats, concepts, np.asarray(primary, dtype=np.int64)


@dataclass(frozen=True)
class _ShardPlan:
    """What a worker needs to reduce a shard of images (see :func:`_reduce_shard`)."""

    name: str
    cat_index: dict[str, int]
    lut: np.ndarray  # label number -> concept code (0: not a selected concept)
    seg_size: tuple[int, int]


@dataclass
class _Shard:
    """One shard's signatures: ``keys[j]`` the canonical key of local signature ``j`` (sorted
    codes, then -1, then the category bits), ``counts[j]`` its pixels, ``local`` int32 [n * S]
    each pixel's local signature; per image, the category bits."""

    start: int
    keys: list[tuple[int, ...]]
    counts: np.ndarray
    local: np.ndarray
    image_cats: np.ndarray
    whole_cats: np.ndarray


def _codes_of(plan: _ShardPlan, numbers: np.ndarray, where: str) -> np.ndarray:
    import numpy as np

    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size and numbers.min() < 0:
        raise DataError(f"{where}: negative label number {int(numbers.min())}.")
    lut = plan.lut
    if numbers.size and numbers.max() >= len(lut):
        numbers = np.where(numbers < len(lut), numbers, 0)
    return lut[numbers]


def _reduce_shard(probe: ProbeSet, plan: _ShardPlan, start: int, stop: int) -> _Shard:
    """Read the segmentations of images ``start..stop-1`` and reduce them to signatures.

    The label layers of the shard are stacked (one int array, no per-image rows) and one compiled
    pass (:func:`_shard_kernel`) gives each pixel its canonical key (its concept codes in every
    layer and the image's whole-image codes, sorted without repeats, then the bits of the
    categories labelling it) and a local signature id from a hash table; a pixel whose labels
    equal its left neighbour's reuses that id without building the key.
    """
    import numpy as np

    sh, sw = plan.seg_size
    s = sh * sw
    n = stop - start
    whole_cats = np.zeros(n, dtype=np.int64)
    arrays: list[np.ndarray] = []
    layer_ptr = np.zeros(n + 1, dtype=np.int64)
    layer_cat: list[int] = []
    whole_ptr = np.zeros(n + 1, dtype=np.int64)
    whole_codes: list[int] = []
    for k, i in enumerate(range(start, stop)):
        seg = probe.segmentation(i)
        n_layers = 0
        for cat, arr in seg.pixel.items():
            ci = plan.cat_index.get(cat)
            if ci is None:
                continue
            arr = np.asarray(arr)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.shape[1:] != (sh, sw):
                raise DataError(
                    f"Probe set '{plan.name}' image {i}: expected '{cat}' labels of "
                    f"size {sh}x{sw}, got {arr.shape[1]}x{arr.shape[2]}."
                )
            arrays.append(arr.reshape(arr.shape[0], s))
            layer_cat.extend([ci] * arr.shape[0])
            n_layers += arr.shape[0]
        layer_ptr[k + 1] = layer_ptr[k] + n_layers
        whole: set[int] = set()
        for cat, numbers in seg.image.items():
            ci = plan.cat_index.get(cat)
            if ci is None:
                continue
            found = [int(x) for x in _codes_of(plan, np.asarray(numbers), f"image {i} '{cat}'")]
            found = [x for x in found if x > 0]
            if found:
                whole_cats[k] |= 1 << ci
                whole.update(found)
        whole_codes.extend(sorted(whole))
        whole_ptr[k + 1] = len(whole_codes)
    if arrays:
        labels = np.concatenate(arrays)
        if labels.dtype != np.int32:  # one compiled variant for int32, one for the rest
            labels = labels.astype(np.int64)
    else:
        labels = np.zeros((0, s), dtype=np.int32)
    width = int(np.diff(layer_ptr).max(initial=0) + np.diff(whole_ptr).max(initial=0))
    local = np.empty(n * s, dtype=np.int32)
    image_bits = np.zeros(n, dtype=np.int64)
    kernel = _shard_kernel()
    layer_cats = np.asarray(layer_cat, dtype=np.int64)
    whole_arr = np.asarray(whole_codes, dtype=np.int64)
    cap = _SHARD_KEYS
    while True:  # a shard with more signatures than ``cap`` is reduced again with room for them
        keys = np.empty((cap, width + 1), dtype=np.int64)
        key_len = np.empty(cap, dtype=np.int64)
        counts = np.empty(cap, dtype=np.int64)
        slots = np.full(2 * cap, -1, dtype=np.int64)
        n_keys, bad = kernel(
            labels, layer_ptr, layer_cats, whole_ptr, whole_arr, plan.lut, s, local, image_bits,
            keys, key_len, counts, slots,
        )  # fmt: skip
        if bad != _FULL:
            break
        cap *= 4
    if bad >= 0:
        t = int(np.searchsorted(layer_ptr, bad // s, side="right")) - 1
        raise DataError(
            f"Probe set '{plan.name}' image {start + t}: negative label number "
            f"{int(labels.reshape(-1)[bad])}."
        )
    keys, key_len, counts = keys[:n_keys], key_len[:n_keys], counts[:n_keys]
    out_keys = [
        (*row[:m], -1, row[width]) for row, m in zip(keys.tolist(), key_len.tolist(), strict=True)
    ]
    return _Shard(
        start=start,
        keys=out_keys,
        counts=counts,
        local=local,
        image_cats=whole_cats | image_bits,
        whole_cats=whole_cats,
    )


_SHARD_KERNEL: Any = None
#: Signatures a shard's hash table holds at first (a power of two; grown 4x when a shard has
#: more). The synthetic export's shards have a few hundred.
_SHARD_KEYS = 4096
#: The kernel's status when the table is full (negative label positions are >= 0, -1 is done).
_FULL = -2


def _shard_kernel() -> Any:
    """The compiled per-pixel reduction of :func:`_reduce_shard` (numba, cached on disk)."""
    global _SHARD_KERNEL
    if _SHARD_KERNEL is not None:
        return _SHARD_KERNEL
    import numba
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def reduce_pixels(
        labels, layer_ptr, layer_cat, whole_ptr, whole_codes, lut, s, local, image_bits,
        keys, key_len, counts, slots,
    ):  # fmt: skip  # pragma: no cover - compiled; tested through build_concept_table
        # Fills keys [K, width + 1] (sorted codes, then the category bits in the last column),
        # key_len, counts, local [n * s] and image_bits [n]; ``slots`` [2 * cap] (all -1) is the
        # open-addressing table of key ids. Returns (K, -1), or (0, flat index into ``labels``
        # of a negative label), or (0, -2) when more than ``cap`` keys do not fit.
        n = layer_ptr.shape[0] - 1
        n_lut = lut.shape[0]
        cap = keys.shape[0]
        width = keys.shape[1] - 1
        mask = slots.shape[0] - 1
        n_keys = 0
        buf = np.zeros(width + 1, np.int64)
        for k in range(n):
            a, b = layer_ptr[k], layer_ptr[k + 1]
            bits_all = 0
            prev = -1
            for p in range(s):
                if prev >= 0:
                    same = True
                    for t in range(a, b):
                        if labels[t, p] != labels[t, p - 1]:
                            same = False
                            break
                    if same:
                        local[k * s + p] = prev
                        counts[prev] += 1
                        continue
                # The pixel's codes (every layer, then the whole-image codes), kept sorted
                # without repeats by insertion.
                m = 0
                bits = 0
                for t in range(a, b + whole_ptr[k + 1] - whole_ptr[k]):
                    if t < b:
                        x = labels[t, p]
                        if x < 0:
                            return 0, t * s + p
                        c = lut[x] if x < n_lut else 0
                        if c == 0:
                            continue
                        bits |= np.int64(1) << layer_cat[t]
                    else:
                        c = whole_codes[whole_ptr[k] + t - b]
                    j = m
                    while j > 0 and buf[j - 1] > c:
                        j -= 1
                    if j > 0 and buf[j - 1] == c:
                        continue
                    for q in range(m, j, -1):
                        buf[q] = buf[q - 1]
                    buf[j] = c
                    m += 1
                bits_all |= bits
                h = np.uint64(1469598103934665603) ^ np.uint64(bits)
                for q in range(m):
                    h = (h ^ np.uint64(buf[q])) * np.uint64(1099511628211)
                pos = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
                g = slots[pos]
                while g >= 0:
                    if key_len[g] == m and keys[g, width] == bits:
                        q = 0
                        while q < m and keys[g, q] == buf[q]:
                            q += 1
                        if q == m:
                            break
                    pos = (pos + 1) & mask
                    g = slots[pos]
                if g < 0:
                    if n_keys == cap:
                        return 0, -2
                    g = n_keys
                    n_keys += 1
                    for q in range(m):
                        keys[g, q] = buf[q]
                    keys[g, width] = bits
                    key_len[g] = m
                    counts[g] = 0
                    slots[pos] = g
                local[k * s + p] = g
                counts[g] += 1
                prev = g
            image_bits[k] = bits_all
        return n_keys, -1

    _SHARD_KERNEL = reduce_pixels
    return reduce_pixels


# The probe and plan of the build in progress, read by forked workers (set before the fork).
_WORKER_STATE: tuple[ProbeSet, _ShardPlan] | None = None


def _shard_job(start: int, stop: int) -> _Shard:
    assert _WORKER_STATE is not None
    return _reduce_shard(*_WORKER_STATE, start, stop)


def table_workers(requested: int | None = None, *, shards: int | None = None) -> int:
    """Worker processes for the table build: ``requested``, or ``BENCH_TABLE_WORKERS``, or the
    cores this process may use, but then no more than one per :data:`SHARDS_PER_WORKER` of the
    build's ``shards`` (a small probe set is built faster in the calling process than by
    starting workers); 1 where processes cannot be forked."""
    import multiprocessing
    import os

    if requested is None:
        env = os.environ.get("BENCH_TABLE_WORKERS", "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise UsageError(
                    f"Expected an integer in BENCH_TABLE_WORKERS, got {env!r}."
                ) from None
        else:
            try:
                requested = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                requested = os.cpu_count() or 1
            if shards is not None:
                requested = max(1, min(requested, shards // SHARDS_PER_WORKER))
    if requested < 1:
        raise UsageError(f"Expected at least 1 table worker, got {requested}.")
    if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not POSIX
        return 1
    return requested


def _shards(probe: ProbeSet, plan: _ShardPlan, n: int, workers: int) -> Iterator[_Shard]:
    """Every shard's reduction, in image order, from ``workers`` processes (in this process
    when 1). At most two shards per worker are in flight, which bounds memory."""
    global _WORKER_STATE

    bounds = [(a, min(n, a + SHARD_IMAGES)) for a in range(0, n, SHARD_IMAGES)]
    workers = min(workers, len(bounds))
    if workers <= 1:
        for a, b in bounds:
            yield _reduce_shard(probe, plan, a, b)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # The first shard is reduced here: forked workers then inherit the probe (nothing is
    # pickled but shard bounds and results) and whatever that compiled or opened (the PNG
    # decoder, the reduction kernel), instead of loading them once each.
    yield _reduce_shard(probe, plan, *bounds[0])
    _WORKER_STATE = (probe, plan)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(bounds) - 1), mp_context=context) as pool:
            pending: deque[Any] = deque()
            todo = iter(bounds[1:])
            for a, b in todo:
                pending.append(pool.submit(_shard_job, a, b))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                shard = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_shard_job, *nxt))
                yield shard
    finally:
        _WORKER_STATE = None


def build_concept_table(
    probe: ProbeSet,
    categories: Sequence[str] | None = None,
    *,
    directory: Path | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> ConceptTable:
    """Read every segmentation of ``probe`` once and build its :class:`ConceptTable`.

    Shards of :data:`SHARD_IMAGES` images are decoded and reduced in ``workers`` processes
    (default :func:`table_workers`: the available cores, fewer for small probe sets); the
    result does not depend on their number. With ``directory``, the per-pixel signature ids are
    written there as ``sig.npy`` (a memory map), so the build holds only a few shards in memory;
    otherwise they stay in memory.
    """
    import numpy as np
    import scipy.sparse

    if not probe.has_segmentations:
        raise UsageError(
            f"Probe set '{probe.name}' has no per-pixel concept segmentations; dissection "
            "needs a Broden-format probe (--probe broden or --probe synthetic)."
        )
    cats, concepts, primary = select_concepts(probe, categories)
    max_number = max(c.number for c in concepts)
    lut = np.zeros(max_number + 1, dtype=np.int64)
    for code, c in enumerate(concepts, start=1):
        lut[c.number] = code
    n = len(probe)
    sh, sw = probe.seg_size
    s = sh * sw
    plan = _ShardPlan(
        name=probe.name,
        cat_index={c: i for i, c in enumerate(cats)},
        lut=lut,
        seg_size=(sh, sw),
    )
    sig: np.ndarray
    if directory is not None:
        sig = np.lib.format.open_memmap(
            Path(directory) / "sig.npy", mode="w+", dtype=np.int32, shape=(n, s)
        )
    else:
        sig = np.zeros((n, s), dtype=np.int32)
    image_cats = np.zeros(n, dtype=np.int64)
    whole_cats = np.zeros(n, dtype=np.int64)
    # Global signatures: (codes..., -1, category bits) -> id, numbered in order of appearance.
    ids: dict[tuple[int, ...], int] = {}
    sig_pixels: list[int] = []
    with progress_bar(total=n, desc=f"concepts {probe.name}", enabled=progress, unit="img") as bar:
        n_shards = -(-n // SHARD_IMAGES)
        for shard in _shards(probe, plan, n, table_workers(workers, shards=n_shards)):
            stop = shard.start + len(shard.image_cats)
            local_to_global = np.empty(len(shard.keys), dtype=np.int32)
            for j, key in enumerate(shard.keys):
                gid = ids.get(key)
                if gid is None:
                    gid = ids[key] = len(ids)
                    sig_pixels.append(0)
                sig_pixels[gid] += int(shard.counts[j])
                local_to_global[j] = gid
            sig[shard.start : stop] = local_to_global[shard.local].reshape(-1, s)
            image_cats[shard.start : stop] = shard.image_cats
            whole_cats[shard.start : stop] = shard.whole_cats
            bar.update(stop - shard.start)
    if isinstance(sig, np.memmap):
        sig.flush()
    n_sig = len(ids)
    indptr = [0]
    indices: list[int] = []
    sig_cats = np.zeros(n_sig, dtype=np.int64)
    for key, gid in sorted(ids.items(), key=lambda kv: kv[1]):
        sep = key.index(-1)
        indices.extend(key[:sep])
        indptr.append(len(indices))
        sig_cats[gid] = key[sep + 1]
    members = scipy.sparse.csr_matrix(
        (
            np.ones(len(indices), dtype=np.float64),
            np.asarray(indices, np.int64),
            np.asarray(indptr),
        ),
        shape=(n_sig, len(concepts) + 1),
    )
    log.info(
        "Concept table of '%s': %d images, %d concepts, %d signatures.",
        probe.name,
        n,
        len(concepts),
        n_sig,
    )
    return ConceptTable(
        concepts=concepts,
        categories=cats,
        primary=primary,
        seg_size=(sh, sw),
        sig=sig,
        members=members,
        pixels=np.asarray(sig_pixels, dtype=np.int64),
        sig_categories=sig_cats,
        image_categories=image_cats,
        whole_image_categories=whole_cats,
        identity={"probe": probe.identity(), "categories": cats, "version": TABLE_VERSION},
    )


def concept_table_cached(
    cache: Cache,
    probe: ProbeSet,
    categories: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> ConceptTable:
    """:func:`build_concept_table` through the cache (stage ``"concept-table"``)."""
    cats, _, _ = select_concepts(probe, categories)
    parts = {"probe": probe.identity(), "categories": cats, "version": TABLE_VERSION}

    def write(directory: Any) -> None:
        build_concept_table(probe, cats, directory=Path(directory), progress=progress).save(
            Path(directory)
        )

    path, hit = cache.get_or_create(TABLE_STAGE, parts, write)
    log.info("concept table: cache %s", "hit" if hit else "miss")
    return ConceptTable.load(path)


# --- the unit tally ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class UnitTally:
    """What one pass over a layer's activation maps counts (see the module docstring).

    ``hist`` CSR int64 [U, n_sig]: mask pixels per signature; ``unit_area`` int64 [U] (|M_u|);
    ``cat_lite`` and ``cat_original`` int64 [U, n_categories]: NetDissect-Lite's and the original
    NetDissect's per-category activation counts; ``active_images`` int64 [U]: images where the
    unit's maximum exceeds its threshold.
    """

    hist: scipy.sparse.csr_matrix
    unit_area: np.ndarray
    cat_lite: np.ndarray
    cat_original: np.ndarray
    active_images: np.ndarray
    meta: dict[str, Any]
    #: The evidence layer's unit index of each row (``LayerEvidence.units``: set by
    #: :func:`tally_cached` when the layer was recorded for a subset); ``None``: row i is unit i.
    units: np.ndarray | None = None

    @property
    def num_units(self) -> int:
        """Rows: the units tallied."""
        return int(self.unit_area.shape[0])

    def row(self, index: int) -> int:
        """The row of unit ``index`` of the layer (a :class:`~bench.errors.RequirementError`
        when it was not tallied)."""
        import numpy as np

        if self.units is None:
            if not 0 <= index < self.num_units:
                from bench.errors import RequirementError

                raise RequirementError(
                    f"The tally holds units 0-{self.num_units - 1}; got {index}."
                )
            return int(index)
        pos = int(np.searchsorted(self.units, index))
        if pos >= len(self.units) or int(self.units[pos]) != index:
            from bench.errors import RequirementError

            raise RequirementError(f"Unit {index} was not recorded, so the tally lacks it.")
        return pos

    def intersections(self, table: ConceptTable) -> np.ndarray:
        """int64 [U, C + 1]: |M_u and L| for every unit and concept."""
        import numpy as np

        return np.rint((self.hist @ table.members).toarray()).astype(np.int64)

    def save(self, directory: Path) -> None:
        import numpy as np

        from bench.cache import save_arrays
        from bench.schema import write_json

        h = self.hist
        save_arrays(
            directory / "tally.safetensors",
            {
                "hist.indptr": h.indptr.astype(np.int64),
                "hist.indices": h.indices.astype(np.int64),
                "hist.data": np.asarray(h.data, dtype=np.int64),
                "unit_area": self.unit_area,
                "cat_lite": self.cat_lite,
                "cat_original": self.cat_original,
                "active_images": self.active_images,
            },
        )
        write_json(directory / "tally.json", {"shape": list(h.shape), "meta": self.meta})

    @classmethod
    def load(cls, directory: Path) -> UnitTally:
        import scipy.sparse

        from bench.cache import load_arrays

        try:
            info = json.loads((directory / "tally.json").read_text())
            a = load_arrays(directory / "tally.safetensors")
            hist = scipy.sparse.csr_matrix(
                (a["hist.data"], a["hist.indices"], a["hist.indptr"]), shape=tuple(info["shape"])
            )
            return cls(
                hist=hist,
                unit_area=a["unit_area"],
                cat_lite=a["cat_lite"],
                cat_original=a["cat_original"],
                active_images=a["active_images"],
                meta=info.get("meta", {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CacheError(f"Could not read the unit tally in {directory}: {e}") from e


class SparseUpsampler:
    """Thresholded bilinear upsampling that only computes the output pixels that can pass.

    A bilinear output pixel is a convex combination of (at most) four source cells, so it can
    exceed a threshold only if one of them does. Starting from the source cells above the
    threshold ("hot" cells), it lists the output pixels each one influences, removes duplicates and
    interpolates just those: the work follows the size of the masks (about 0.5% of the pixels at
    NetDissect's quantile), not the size of the upsampled maps. Values are computed as PIL's
    bilinear resize does (separable, horizontal pass then vertical, weights in float64, each pass
    rounded to float32), which is what NetDissect-Lite and compexp upsample with; the masks equal
    thresholding ``F.interpolate(..., mode="bilinear", align_corners=False)`` (tested).
    """

    def __init__(self, map_shape: tuple[int, int], seg_size: tuple[int, int], device: Any):
        import torch

        self.h, self.w = map_shape
        self.sh, self.sw = seg_size
        rows = self._axis(self.h, self.sh)
        cols = self._axis(self.w, self.sw)
        as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        self.r0, self.r1, self.rl, self.rlo, self.rn = (as_t(a) for a in rows)
        self.c0, self.c1, self.cl, self.clo, self.cn = (as_t(a) for a in cols)

    @staticmethod
    def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
        import numpy as np

        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        r = np.arange(n_in)
        lo = np.searchsorted(i1, r, side="left")  # first output index that reads source r
        hi = np.searchsorted(i0, r, side="right")  # one past the last
        return i0, i1, lam, lo, np.maximum(hi - lo, 0)

    def __call__(self, maps: Any, thresholds: Any) -> tuple[Any, Any]:
        """``(pair, pixel)`` int64 index vectors of the mask pixels of ``maps`` [P, h, w] above
        ``thresholds`` [P], sorted by pair then pixel."""
        import torch

        dev = maps.device
        hot_p, hot_r, hot_c = (maps > thresholds[:, None, None]).nonzero(as_tuple=True)
        nr, nc = self.rn[hot_r], self.cn[hot_c]
        counts = nr * nc
        total = int(counts.sum())
        if total == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            return empty, empty
        which = torch.repeat_interleave(torch.arange(len(hot_p), device=dev), counts)
        start = torch.cumsum(counts, 0) - counts
        k = torch.arange(total, device=dev) - start[which]
        i = self.rlo[hot_r[which]] + k // nc[which]
        j = self.clo[hot_c[which]] + k % nc[which]
        s = self.sh * self.sw
        # Remove duplicates (neighbouring hot cells share pixels) with a bitmap: far cheaper
        # than sorting, and it leaves the candidates sorted by pair, then pixel.
        seen = torch.zeros(maps.shape[0] * s, dtype=torch.bool, device=dev)
        seen[hot_p[which] * s + i * self.sw + j] = True
        key = seen.nonzero().squeeze(1)
        p, rem = key // s, key % s
        i, j = rem // self.sw, rem % self.sw
        flat = maps.reshape(-1).to(torch.float64)
        base = p * (self.h * self.w)
        r0, r1, rl = self.r0[i] * self.w, self.r1[i] * self.w, self.rl[i]
        c0, c1, cl = self.c0[j], self.c1[j], self.cl[j]
        top = (1 - cl) * flat[base + r0 + c0] + cl * flat[base + r0 + c1]
        bot = (1 - cl) * flat[base + r1 + c0] + cl * flat[base + r1 + c1]
        top = top.to(torch.float32).to(torch.float64)
        bot = bot.to(torch.float32).to(torch.float64)
        val = ((1 - rl) * top + rl * bot).to(torch.float32)
        keep = val > thresholds[p]
        return p[keep], rem[keep]


def _quad_plan(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """Per source index q: the output indices whose lower source is q (``[lo, hi)``), the upper
    source ``min(q + 1, n_in - 1)``; per output index: its weight on the upper source."""
    import numpy as np

    i0, _, lam, _, _ = SparseUpsampler._axis(n_in, n_out)
    q = np.arange(n_in)
    lo = np.searchsorted(i0, q, side="left")
    hi = np.searchsorted(i0, q, side="right")
    upper = np.minimum(q + 1, n_in - 1)
    return lo.astype(np.int64), hi.astype(np.int64), upper.astype(np.int64), lam


_KERNEL: Any = None


def _numba_kernel() -> Any:
    """The compiled CPU kernel of :func:`tally_units`, or ``None`` without numba."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL or None
    try:
        import numba
        import numpy as np
    except ImportError:  # pragma: no cover - numba is a dependency
        _KERNEL = False
        return None

    @numba.njit(cache=True, nogil=True)
    def mask_pixels(
        x, thr, pair_b, pair_u, sig, sig_cats, rlo, rhi, rup, rl, clo, chi, cup, cl, n_sig, keys
    ):  # pragma: no cover - compiled; tested through tally_units
        h, w = x.shape[2], x.shape[3]
        sw = cl.shape[0]
        n = 0
        area = np.zeros(pair_b.shape[0], np.int64)
        bits = np.zeros(pair_b.shape[0], np.int64)
        for p in range(pair_b.shape[0]):
            b = pair_b[p]
            u = pair_u[p]
            t = thr[u]
            a = 0
            c = 0
            for qr in range(h):
                rb = rup[qr]
                for qc in range(w):
                    cb = cup[qc]
                    v00 = np.float64(x[b, u, qr, qc])
                    v01 = np.float64(x[b, u, qr, cb])
                    v10 = np.float64(x[b, u, rb, qc])
                    v11 = np.float64(x[b, u, rb, cb])
                    if max(max(v00, v01), max(v10, v11)) <= t:
                        continue
                    for i in range(rlo[qr], rhi[qr]):
                        lr = rl[i]
                        for j in range(clo[qc], chi[qc]):
                            lc = cl[j]
                            top = np.float64(np.float32((1.0 - lc) * v00 + lc * v01))
                            bot = np.float64(np.float32((1.0 - lc) * v10 + lc * v11))
                            val = np.float32((1.0 - lr) * top + lr * bot)
                            if val > t:
                                s = sig[b, i * sw + j]
                                keys[n] = u * n_sig + s
                                n += 1
                                a += 1
                                c |= sig_cats[s]
            area[p] = a
            bits[p] = c
        return n, area, bits

    _KERNEL = mask_pixels
    return _KERNEL


def _tally_numba(
    kernel: Any,
    maps: np.ndarray,
    thr: np.ndarray,
    table: ConceptTable,
    *,
    memory_budget: int,
    progress: bool,
    desc: str,
) -> UnitTally:
    """:func:`tally_units` on the CPU with the compiled kernel: one loop over the active
    (image, unit) pairs, their quads of source cells that reach the threshold, and the pixels of
    those quads; the same values, masks and counts as the torch path."""
    import numpy as np
    import scipy.sparse

    n, u, h, w = (int(v) for v in maps.shape)
    sh, sw = table.seg_size
    s = sh * sw
    n_sig = table.num_signatures
    n_cat = len(table.categories)
    rlo, rhi, rup, rl = _quad_plan(h, sh)
    clo, chi, cup, cl = _quad_plan(w, sw)
    thr = np.ascontiguousarray(thr, dtype=np.float32)
    images_block = max(1, min(n, memory_budget // max(1, 8 * u * h * w)))
    pair_block = max(1, memory_budget // (2 * 8 * s))
    dense = u * n_sig * 8 <= min(memory_budget // 4, 1 << 28)
    hist_dense = np.zeros(u * n_sig, dtype=np.int64) if dense else None
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    unit_area = np.zeros(u, np.int64)
    active = np.zeros(u, np.int64)
    cat_lite = np.zeros((u, n_cat), np.int64)
    cat_orig = np.zeros((u, n_cat), np.int64)
    shifts = np.arange(n_cat, dtype=np.int64)
    keys = np.empty(min(pair_block, n * u) * s, dtype=np.int64)
    with progress_bar(total=n, desc=desc, enabled=progress, unit="img") as bar:
        for a0 in range(0, n, images_block):
            a1 = min(n, a0 + images_block)
            x = np.ascontiguousarray(maps[a0:a1], dtype=np.float32)
            if not np.isfinite(x).all():
                from bench.errors import NonFiniteError

                bad = np.nonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0] + a0
                raise NonFiniteError(
                    f"Expected finite activation maps, got NaN or inf on probe images "
                    f"{bad[:10].tolist()}."
                )
            sig = np.ascontiguousarray(table.sig[a0:a1], dtype=np.int64)
            pair_b, pair_u = np.nonzero(x.reshape(a1 - a0, u, -1).max(axis=2) > thr)
            active += np.bincount(pair_u, minlength=u)
            for p0 in range(0, len(pair_b), pair_block):
                pb = pair_b[p0 : p0 + pair_block].astype(np.int64)
                pu = pair_u[p0 : p0 + pair_block].astype(np.int64)
                m, area, bits = kernel(
                    x, thr, pb, pu, sig, table.sig_categories,
                    rlo, rhi, rup, rl, clo, chi, cup, cl, n_sig, keys,
                )  # fmt: skip
                if hist_dense is not None:
                    hist_dense += np.bincount(keys[:m], minlength=u * n_sig)
                else:
                    uk, uc = np.unique(keys[:m], return_counts=True)
                    parts.append((uk, uc.astype(np.int64)))
                unit_area += np.bincount(pu, weights=area, minlength=u).astype(np.int64)
                whole = table.whole_image_categories[a0 + pb]
                anywhere = table.image_categories[a0 + pb]
                lite = (((bits | whole)[:, None] >> shifts) & 1) * area[:, None]
                orig = ((anywhere[:, None] >> shifts) & 1) * area[:, None]
                np.add.at(cat_lite, pu, lite)
                np.add.at(cat_orig, pu, orig)
            bar.update(a1 - a0)
    if hist_dense is not None:
        k = np.nonzero(hist_dense)[0]
        c = hist_dense[k]
    elif parts:
        k, inv = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        c = np.bincount(inv.ravel(), weights=np.concatenate([p[1] for p in parts])).astype(np.int64)
    else:
        k = c = np.zeros(0, np.int64)
    hist = scipy.sparse.csr_matrix((c, (k // n_sig, k % n_sig)), shape=(u, n_sig), dtype=np.int64)
    hist.sum_duplicates()
    return UnitTally(
        hist=hist,
        unit_area=unit_area,
        cat_lite=cat_lite,
        cat_original=cat_orig,
        active_images=active,
        meta={"device": "cpu", "backend": "numba", "seg_size": [sh, sw], "map_shape": [h, w]},
    )


def tally_units(
    maps: np.ndarray,
    thresholds: np.ndarray,
    table: ConceptTable,
    *,
    device: str = "cpu",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
    desc: str = "tally",
    backend: str = "auto",
) -> UnitTally:
    """One pass over ``maps`` (float32 [N, U, h, w], may be a memory map) thresholded at
    ``thresholds`` (float32 [U]) against ``table``; see the module docstring.

    ``backend``: "torch" (vectorised tensor code, any device: :class:`SparseUpsampler`), "numba"
    (a compiled CPU loop, several times faster on the CPU), or "auto" (numba on the CPU, torch
    elsewhere). Both give identical results (tested).
    """
    import numpy as np
    import scipy.sparse
    import torch

    n, u, h, w = (int(x) for x in maps.shape)
    if n != table.num_images:
        raise UsageError(
            f"Expected activation maps of the {table.num_images} probe images the concept table "
            f"was built from, got {n}."
        )
    thr_np = np.asarray(thresholds, dtype=np.float32)
    if thr_np.shape != (u,):
        raise UsageError(f"Expected {u} thresholds (one per unit), got shape {thr_np.shape}.")
    if not np.isfinite(thr_np).all():
        raise UsageError("Expected finite unit thresholds; got NaN or inf.")
    dev = torch.device(device)
    if backend not in ("auto", "torch", "numba"):
        raise UsageError(f"Expected backend auto, torch or numba; got {backend!r}.")
    if backend == "numba" or (backend == "auto" and dev.type == "cpu"):
        kernel = _numba_kernel()
        if kernel is not None:
            return _tally_numba(
                kernel, maps, thr_np, table,
                memory_budget=memory_budget, progress=progress, desc=desc,
            )  # fmt: skip
        if backend == "numba":
            raise UsageError("The numba backend needs the numba package (pip install numba).")
    sh, sw = table.seg_size
    s = sh * sw
    n_sig = table.num_signatures
    n_cat = len(table.categories)
    thr = torch.from_numpy(thr_np).to(dev)
    sig_cats = torch.from_numpy(table.sig_categories).to(dev)
    # Per pair, the upsampled float map, the mask, and the gathered indices: ~ 32 bytes a pixel.
    # Per pair, at worst every output pixel is a candidate: ~64 bytes a pixel while listing them.
    pair_block = max(1, memory_budget // (64 * s))
    upsampler = SparseUpsampler((h, w), (sh, sw), dev)
    images_block = max(1, min(n, memory_budget // max(1, 8 * u * h * w)))
    unit_area = torch.zeros(u, dtype=torch.int64, device=dev)
    active = torch.zeros(u, dtype=torch.int64, device=dev)
    cat_lite = torch.zeros(u, n_cat, dtype=torch.int64, device=dev)
    cat_orig = torch.zeros(u, n_cat, dtype=torch.int64, device=dev)
    # The histogram is dense while it is small (the synthetic probe: a few hundred thousand
    # cells); otherwise (unit, signature) pairs are counted sparsely and merged.
    dense_hist = (
        torch.zeros(u * n_sig, dtype=torch.int64, device=dev)
        if u * n_sig * 8 <= min(memory_budget // 4, 1 << 28)
        else None
    )
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    pending = 0
    cat_bits = torch.arange(n_cat, device=dev)

    def coalesce() -> None:
        nonlocal pending
        if len(keys) > 1:
            k = np.concatenate(keys)
            c = np.concatenate(counts)
            uk, inv = np.unique(k, return_inverse=True)
            keys[:] = [uk]
            counts[:] = [np.bincount(inv.ravel(), weights=c, minlength=len(uk)).astype(np.int64)]
        pending = 0

    with progress_bar(total=n, desc=desc, enabled=progress, unit="img") as bar:
        for a in range(0, n, images_block):
            b = min(n, a + images_block)
            x = torch.from_numpy(np.array(maps[a:b], dtype=np.float32)).to(dev)
            if not bool(torch.isfinite(x).all()):
                from bench.errors import NonFiniteError

                bad = (~torch.isfinite(x).flatten(1).all(1)).nonzero().ravel().cpu() + a
                raise NonFiniteError(
                    f"Expected finite activation maps, got NaN or inf on probe images "
                    f"{bad[:10].tolist()}."
                )
            sig = torch.from_numpy(np.array(table.sig[a:b])).to(dev, torch.int64)
            img_any = torch.from_numpy(table.image_categories[a:b]).to(dev)
            img_whole = torch.from_numpy(table.whole_image_categories[a:b]).to(dev)
            pair_b, pair_u = (x.amax(dim=(2, 3)) > thr).nonzero(as_tuple=True)
            active += torch.bincount(pair_u, minlength=u)
            for p0 in range(0, len(pair_b), pair_block):
                pb = pair_b[p0 : p0 + pair_block]
                pu = pair_u[p0 : p0 + pair_block]
                nz_p, nz_s = upsampler(x[pb, pu], thr[pu])
                area = torch.bincount(nz_p, minlength=len(pb))
                unit_area.index_add_(0, pu, area)
                sigs = sig[pb[nz_p], nz_s]
                key = pu[nz_p] * n_sig + sigs
                if dense_hist is not None:
                    dense_hist += torch.bincount(key, minlength=u * n_sig)
                else:
                    uk, uc = torch.unique(key, return_counts=True)
                    keys.append(uk.cpu().numpy())
                    counts.append(uc.cpu().numpy().astype(np.int64))
                    pending += len(uk)
                    if pending > 20_000_000:
                        coalesce()
                # Categories labelling some pixel inside the mask (per pair), as bit masks.
                bits = (sig_cats[sigs][:, None] >> cat_bits) & 1  # [nnz, n_cat]
                inside = torch.zeros(len(pb), n_cat, dtype=torch.int64, device=dev)
                inside.index_add_(0, nz_p, bits)
                whole = (img_whole[pb][:, None] >> cat_bits) & 1
                lite = (inside > 0) | (whole > 0)
                anywhere = ((img_any[pb][:, None] >> cat_bits) & 1) > 0
                cat_lite.index_add_(0, pu, area[:, None] * lite)
                cat_orig.index_add_(0, pu, area[:, None] * anywhere)
            bar.update(b - a)
    if dense_hist is not None:
        nz = dense_hist.nonzero().squeeze(1)
        keys[:] = [nz.cpu().numpy()]
        counts[:] = [dense_hist[nz].cpu().numpy()]
    coalesce()
    if keys:
        k = keys[0]
        c = counts[0]
    else:
        k = np.zeros(0, np.int64)
        c = np.zeros(0, np.int64)
    hist = scipy.sparse.csr_matrix((c, (k // n_sig, k % n_sig)), shape=(u, n_sig), dtype=np.int64)
    hist.sum_duplicates()
    return UnitTally(
        hist=hist,
        unit_area=unit_area.cpu().numpy(),
        cat_lite=cat_lite.cpu().numpy(),
        cat_original=cat_orig.cpu().numpy(),
        active_images=active.cpu().numpy(),
        meta={"device": str(dev), "backend": "torch", "seg_size": [sh, sw], "map_shape": [h, w]},
    )


def tally_cached(
    cache: Cache,
    evidence: Evidence,
    layer: str,
    quantile: QuantileSpec,
    table: ConceptTable,
    *,
    device: str = "cpu",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> UnitTally:
    """:func:`tally_units` for every recorded unit of ``layer`` through the cache (stage
    ``"dissect-tally"``), keyed by the evidence, the layer, the quantile and the table. Its rows
    are the evidence's rows: ``UnitTally.row`` maps a unit index to its row."""
    import torch

    le = evidence.layer(layer)
    maps = le.require_maps()
    thresholds = le.threshold(quantile)
    parts = {
        "version": TALLY_VERSION,
        "evidence": evidence.key,
        "layer": layer,
        "quantile": quantile.key,
        "table": table.identity,
        "device": torch.device(device).type,
    }

    def compute() -> UnitTally:
        return tally_units(
            maps,
            thresholds,
            table,
            device=device,
            memory_budget=memory_budget,
            progress=progress,
            desc=f"tally {layer}",
        )

    if not evidence.key:  # evidence that was not cached has no identity to key on
        tally = compute()
    else:

        def write(directory: Any) -> None:
            compute().save(Path(directory))

        path, hit = cache.get_or_create(TALLY_STAGE, parts, write)
        log.info("tally %s: cache %s", layer, "hit" if hit else "miss")
        tally = UnitTally.load(path)
    if tally.num_units != maps.shape[1]:
        raise CacheError(
            f"The cached tally of layer '{layer}' has {tally.num_units} units, its evidence "
            f"{maps.shape[1]}; delete the cache's {TALLY_STAGE} entries and rerun."
        )
    tally.units = le.units
    return tally


def tallies_by_layer(
    cache: Cache,
    evidence: Evidence,
    units: Sequence[UnitRef],
    table: ConceptTable,
    *,
    device: str = "cpu",
    memory_budget: int | None = None,
    progress: bool = False,
) -> Iterator[tuple[UnitTally, list[UnitRef]]]:
    """For each layer of ``units`` (in order of first appearance): its cached tally at
    NetDissect's quantile and the units of that layer. ``memory_budget`` (bytes) bounds the
    pass (``None``: :data:`DEFAULT_MEMORY_BUDGET`)."""
    from bench.evidence import NETDISSECT_QUANTILE

    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    for layer in dict.fromkeys(u.layer for u in units):
        tally = tally_cached(
            cache,
            evidence,
            layer,
            NETDISSECT_QUANTILE,
            table,
            device=device,
            memory_budget=budget,
            progress=progress,
        )
        yield tally, [u for u in units if u.layer == layer]


# --- IoU --------------------------------------------------------------------------------------

#: NetDissect IoU denominators: "lite" (NetDissect-Lite) and "original" (NetDissect 2017).
CONVENTIONS = ("lite", "original")


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` in float64, 0 where ``den`` is 0."""
    import numpy as np

    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def netdissect_iou(
    tally: UnitTally,
    table: ConceptTable,
    convention: str = "lite",
    intersections: np.ndarray | None = None,
) -> np.ndarray:
    """float64 [U, C + 1] (column 0 is 0): NetDissect's IoU with the category-restricted
    denominator ``|M_u restricted to L's primary category| + |L| - |M_u and L|``.
    ``intersections``: ``tally.intersections(table)`` when the caller already has it."""
    import numpy as np

    if convention not in CONVENTIONS:
        raise ConfigError(f"Expected a convention in {CONVENTIONS}, got {convention!r}.")
    inter = tally.intersections(table) if intersections is None else intersections
    cat = tally.cat_lite if convention == "lite" else tally.cat_original
    primary = table.primary.copy()
    primary[0] = 0
    unit_cat = cat[:, primary]  # [U, C + 1]
    iou = safe_ratio(inter, unit_cat + table.label_area()[None, :] - inter)
    iou[:, 0] = 0.0
    return np.asarray(iou)


def dataset_iou(tally: UnitTally, table: ConceptTable) -> np.ndarray:
    """float64 [U, C + 1]: CompExp's IoU over the whole probe set, no category restriction:
    ``|M_u and L| / (|M_u| + |L| - |M_u and L|)``."""
    inter = tally.intersections(table)
    iou = safe_ratio(inter, tally.unit_area[:, None] + table.label_area()[None, :] - inter)
    iou[:, 0] = 0.0
    return iou


# --- formulas on signatures --------------------------------------------------------------------


class SignatureAlgebra:
    """Formulas over concept codes, evaluated on the table's signatures (bool [n_sig]).

    A formula is a JSON tree with integer leaves: ``["leaf", code]``, ``["not", F]``,
    ``["and", F, G]``, ``["or", F, G]``. Results are memoised per tree.
    """

    def __init__(self, table: ConceptTable):
        import numpy as np

        self.table = table
        members = table.members.tocsc()
        self._member = members
        self._memo: dict[str, np.ndarray] = {}
        self.pixels = table.pixels.astype(np.float64)

    def member(self, code: int) -> np.ndarray:
        key = f"L{code}"
        out = self._memo.get(key)
        if out is None:
            col = self._member[:, code]
            out = col.toarray().ravel() > 0
            self._memo[key] = out
        return out

    def evaluate(self, tree: Sequence[Any]) -> np.ndarray:
        key = json.dumps(tree, separators=(",", ":"))
        out = self._memo.get(key)
        if out is not None:
            return out
        op = tree[0]
        if op == "leaf":
            out = self.member(int(tree[1]))
        elif op == "not":
            out = ~self.evaluate(tree[1])
        elif op in ("and", "or"):
            parts = [self.evaluate(t) for t in tree[1:]]
            out = parts[0].copy()
            for p in parts[1:]:
                if op == "and":
                    out &= p
                else:
                    out |= p
        else:
            raise UsageError(f"Expected a formula node leaf/not/and/or, got {op!r}.")
        if len(self._memo) > 200_000:
            self._memo.clear()
        self._memo[key] = out
        return out


# --- image-level concepts (INVERT) ------------------------------------------------------------


def image_concepts(table: ConceptTable, *, chunk_images: int = 256) -> np.ndarray:
    """bool [N, C + 1] (column 0 False): image ``i`` has concept ``c`` when any of its pixels
    does (pixel-level labels), or when ``c`` labels the whole image (scene, texture: the table
    holds those as whole-image masks). Computed from the signatures, ``chunk_images`` images at
    a time."""
    import numpy as np
    import scipy.sparse

    n, s = table.sig.shape
    n_sig = table.num_signatures
    members = table.members.tocsr()
    out = np.zeros((n, table.num_concepts + 1), dtype=bool)
    for start in range(0, n, chunk_images):
        block = np.asarray(table.sig[start : start + chunk_images], dtype=np.int64)
        rows = np.repeat(np.arange(block.shape[0]), s)
        present = scipy.sparse.csr_matrix(
            (np.ones(rows.size, dtype=np.float64), (rows, block.ravel())),
            shape=(block.shape[0], n_sig),
        )
        out[start : start + block.shape[0]] = (present @ members).toarray() > 0
    out[:, 0] = False
    return out
