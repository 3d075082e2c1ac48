"""Activation recording: one pass over a probe set, streaming per-unit statistics.

:func:`record` runs the target once per batch with forward hooks on the requested layers (scoped
by :func:`hooks`, which always removes them) and turns every layer's output, spatialized to
``float32 [B, U, h, w]`` by ``Target.spatialize``, into :class:`~bench.evidence.LayerEvidence`:

- per-unit top-k probe images by spatial max and/or mean, with their activation maps;
- per-unit quantile thresholds over every spatial position of every probe image at the layer's
  native resolution (NetDissect 3.1 / NetDissect-Lite ``q = 994/999`` 'hazen'; MILAN 1.2
  ``q = 0.99``), exact in numpy's definition of each interpolation method;
- the pooled (spatial max and mean) activation of every unit on every image;
- the arrays of optional extra :class:`Accumulator` s (IoU tallies, ...).

Nothing holds all activation maps of the probe set: memory is O(batch) for the maps, O(N * U) for
the pooled outputs and O(N * h * w * U * (1 - q)) for the exact quantile tails (bounded by
``memory_budget``). :func:`record_cached` stores the result in the content-addressed cache.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import CacheError, ConfigError, DataError, NonFiniteError, UsageError
from bench.evidence import (
    MILAN_QUANTILE,
    NETDISSECT_QUANTILE,
    TOPK_MODES,
    Evidence,
    LayerEvidence,
    QuantileSpec,
    TopK,
    format_unit_ranges,
    parse_unit_ranges,
)
from bench.progress import progress_bar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bench.cache import Cache
    from bench.probes.base import ProbeSet
    from bench.targets import Preprocessing, Target

log = logging.getLogger(__name__)

#: Bump when :func:`record` outputs change for the same inputs (part of the cache key).
RECORD_VERSION = "1"
#: Cache stage name of recorded evidence.
STAGE = "record"
DEFAULT_QUANTILES: tuple[QuantileSpec, ...] = (MILAN_QUANTILE, NETDISSECT_QUANTILE)

#: Bytes per kept value of an exact quantile tail: its float32 buffer holds 3 m values per unit
#: (m kept + 2 m pending) and is compacted in place.
TAIL_BYTES_PER_VALUE = 3 * 4
#: Bytes per sampled value of the approximate fallback: the chunks, their concatenation, and the
#: copy ``np.quantile`` partitions.
SAMPLE_BYTES_PER_VALUE = 3 * 4
#: The approximate fallback keeps at least this many positions per unit (when the layer has them).
MIN_SAMPLE_PER_UNIT = 4096
#: Seed of the approximate fallback's position sampler (combined with the layer name's CRC32).
SAMPLE_SEED = 0


class Accumulator(Protocol):
    """An extra streaming statistic for one layer (NetDissect IoU tallies, ...).

    ``update`` sees every probe image exactly once, in probe order; ``finalize``'s arrays go to
    ``LayerEvidence.extras`` under ``f"{name}.{key}"``.
    """

    name: str

    def update(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        """``acts``: float32 ``[B, U, h, w]`` on the recording device; ``indices``: int64 ``[B]``
        probe indices (CPU)."""

    def finalize(self) -> dict[str, np.ndarray]: ...


#: Makes a fresh :class:`Accumulator` (called once per :func:`record` call and layer).
AccumulatorFactory = Callable[[], Accumulator]


# --- hooks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def hooks(
    model: torch.nn.Module,
    layers: Sequence[str],
    callback: Callable[[str, Any], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Forward hooks on the modules named ``layers``, removed on exit even when the body raises.

    Yields a dict that maps each layer to its latest raw output. With ``callback``, each output is
    passed to ``callback(layer, output)`` inside the hook instead (not stored): it is read before
    any later in-place operation of the network (``ReLU(inplace=True)`` after a hooked
    BatchNorm) can change it, and it is not kept alive after the forward pass.
    """
    from bench.errors import UnknownNameError

    modules = dict(model.named_modules())
    for layer in layers:
        if layer not in modules:
            raise UnknownNameError("layer", layer, [n for n in modules if n])
    store: dict[str, Any] = {}
    handles = []

    def make_hook(layer: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if callback is None:
                store[layer] = output
            else:
                callback(layer, output)

        return hook

    try:
        for layer in layers:
            handles.append(modules[layer].register_forward_hook(make_hook(layer)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


# --- exact quantiles from the upper tail ------------------------------------------------------


def quantile_positions(n: int, spec: QuantileSpec) -> tuple[int, int, float | None]:
    """Where numpy's ``np.quantile(x, spec.q, method=spec.method)`` reads ``n`` sorted values.

    Returns ``(prev, next, gamma)``: 0-based indices into the ascending sort and the interpolation
    weight (``None`` for the discrete methods, which read ``x[prev]``). Follows numpy's
    definitions operation by operation (virtual index, clipping at both ends), so that
    :func:`lerp` on the same two values gives numpy's result bit for bit.
    """
    if n < 1:
        raise ValueError(f"Expected n >= 1 values, got {n}")
    q = float(spec.q)
    if spec.method in ("lower", "higher", "nearest"):
        v = (n - 1) * q
        if spec.method == "lower":
            j = math.floor(v)
        elif spec.method == "higher":
            j = math.ceil(v)
        else:
            j = round(v)  # round half to even, as np.around
        j = min(max(j, 0), n - 1)
        return j, j, None
    if spec.method == "linear":
        v = (n - 1) * q
    elif spec.method == "hazen":
        alpha = beta = 0.5
        v = n * q + (alpha + q * (1 - alpha - beta)) - 1
    else:  # pragma: no cover - QuantileSpec validates the method
        raise ValueError(f"Unsupported quantile method {spec.method!r}")
    if v >= n - 1:
        return n - 1, n - 1, 0.0
    if v < 0:
        return 0, 0, 0.0
    prev = math.floor(v)
    return prev, prev + 1, v - prev


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's quantile interpolation between float32 neighbours ``a``, ``b`` [U] (weak ``t``)."""
    diff = b - a
    if t >= 0.5:
        return b - diff * (1 - t)
    return a + diff * t


def tail_size(n: int, specs: Sequence[QuantileSpec]) -> int:
    """How many of the largest of ``n`` values the quantiles ``specs`` read (0 without specs)."""
    if not specs:
        return 0
    return min(n, max(n - quantile_positions(n, s)[0] for s in specs))


class _ExactTail:
    """Running top-``m`` activations of every unit: enough for exact upper quantiles.

    The state lives in host memory whatever the recording device: ``buf`` float32 ``[U, 3m]``
    holds the m largest values seen at the last compaction followed by up to 2m pending
    candidates (``-inf`` where empty). A batch contributes only values above a per-unit cut that
    provably excludes nothing of the final top m:

    - once m values have been seen, the unit's m-th largest value so far (``thr``): a small
      fraction of each batch after the first few;
    - for the first batch, a cut estimated from a strided subsample to leave about 1.5 m values,
      accepted only when every unit has at least m values above it (then nothing below it can be
      in the unit's top m);
    - otherwise the exact top m of the batch (or of a chunk of it).

    Candidates are found on the recording device and extracted in chunks of at most
    ``CHUNK_VALUES`` values, so their index arithmetic needs memory bounded by the chunk, not by
    N. When a row is full, an in-place ``np.partition`` compacts every row back to m values; each
    compaction absorbs at least m candidates of the fullest row, so the amortized cost per
    candidate is small.
    """

    #: Values per chunk of a batch (whole images) whose candidates are extracted together.
    CHUNK_VALUES = 2**20

    def __init__(self, num_units: int, m: int):
        import numpy as np

        self.m = m
        self.buf = np.full((num_units, 3 * m), -np.inf, dtype=np.float32)
        self.fill = np.zeros(num_units, dtype=np.int64)
        self.thr: np.ndarray | None = None
        self.n_seen = 0
        self._mask: np.ndarray | None = None

    def update(self, acts: torch.Tensor) -> None:
        """``acts`` float32 contiguous ``[B, U, h, w]`` on any device."""
        import numpy as np

        b, u, h, w = acts.shape
        if self.thr is not None:
            self._insert_above(acts, self.thr)
        else:
            stride = min(16, self.m * 3 // 2 // 64)
            cut = None
            if b * h * w > 4 * self.m and stride >= 4:
                cut = self._sampled_cut(acts, stride, (3 * self.m) // 2)
                counts = sum(
                    (self._counts_above(chunk, cut) for chunk in self._chunks(acts)),
                    np.zeros(u, dtype=np.int64),
                )
                if int(counts.min()) < self.m or int(counts.max()) > 2 * self.m:
                    cut = None
            if cut is None:
                self._insert_top(acts)
            else:
                self._insert_above(acts, cut)
        self.n_seen += b * h * w
        if self.thr is None and self.n_seen >= self.m:
            self._compact()
            self.thr = self.buf[:, : self.m].min(axis=1)

    def _chunks(self, acts: torch.Tensor) -> Iterator[torch.Tensor]:
        step = max(1, self.CHUNK_VALUES // acts[0].numel())
        for start in range(0, acts.shape[0], step):
            yield acts[start : start + step]

    def _greater(self, chunk: torch.Tensor, cut: np.ndarray) -> Any:
        """Boolean ``[b, U, h*w]`` mask of ``chunk > cut`` (numpy on CPU, torch elsewhere)."""
        import numpy as np
        import torch

        b, u, h, w = chunk.shape
        if chunk.device.type != "cpu":
            return chunk.view(b, u, h * w) > torch.from_numpy(cut).to(chunk.device).view(1, u, 1)
        # numpy compares into a reused mask (and finds its set bits) several times faster than
        # torch allocating a fresh mask and calling nonzero; the arrays share memory.
        a = chunk.numpy().reshape(b, u, h * w)
        if self._mask is None or self._mask.size < a.size:
            self._mask = np.empty(a.size, dtype=bool)
        mask = self._mask[: a.size].reshape(a.shape)
        np.greater(a, cut[None, :, None], out=mask)
        return mask

    def _counts_above(self, chunk: torch.Tensor, cut: np.ndarray) -> np.ndarray:
        import numpy as np

        mask = self._greater(chunk, cut)
        if isinstance(mask, np.ndarray):
            return np.count_nonzero(mask, axis=(0, 2))
        return mask.sum(dim=(0, 2)).cpu().numpy()

    def _insert_above(self, acts: torch.Tensor, cut: np.ndarray) -> None:
        """Insert every value above ``cut`` [U]; a chunk with more than 2m of them for some unit
        (a probe in a non-random order) inserts its exact top m instead."""
        import numpy as np

        for chunk in self._chunks(acts):
            b, u, h, w = chunk.shape
            mask = self._greater(chunk, cut)
            if isinstance(mask, np.ndarray):
                flat = np.flatnonzero(mask)
                vals = chunk.numpy().reshape(-1)[flat]
            else:
                found = mask.view(-1).nonzero().squeeze(1)
                flat = found.cpu().numpy()
                vals = chunk.reshape(-1)[found].cpu().numpy()
            if flat.size == 0:
                continue
            row = flat // (h * w)  # image * U + unit
            per_row = np.bincount(row, minlength=b * u)
            per_image = per_row.reshape(b, u)
            counts = per_image.sum(axis=0)
            if int(counts.max()) > 2 * self.m:
                self._insert_top(chunk)
                continue
            # Rank of each value among its unit's values in this chunk: its place in its row,
            # after the values of the same unit in earlier images.
            earlier = (np.cumsum(per_image, axis=0) - per_image).reshape(-1)
            offset = earlier - (np.cumsum(per_row) - per_row)
            rank = offset[row]
            rank += np.arange(flat.size)
            self._insert(row % u, rank, counts, vals)

    def _insert_top(self, acts: torch.Tensor) -> None:
        """Insert the ``min(m, values)`` largest values of each unit in ``acts``."""
        import numpy as np
        import torch

        b, u, h, w = acts.shape
        x = acts.transpose(0, 1).reshape(u, b * h * w)
        if x.shape[1] > self.m:
            x = torch.topk(x, self.m, dim=1, sorted=False).values
        c = x.shape[1]
        units = np.repeat(np.arange(u), c)
        rank = np.tile(np.arange(c), u)
        self._insert(units, rank, np.full(u, c), x.cpu().numpy().reshape(-1))

    def _insert(
        self, units: np.ndarray, rank: np.ndarray, counts: np.ndarray, vals: np.ndarray
    ) -> None:
        """Append ``vals`` to their ``units``' rows at ``rank`` [0, count) past the row's fill."""
        if int((self.fill + counts).max()) > self.buf.shape[1]:
            self._compact()
        pos = units * self.buf.shape[1]
        pos += self.fill[units]
        pos += rank
        self.buf.reshape(-1)[pos] = vals
        self.fill += counts

    def _compact(self) -> None:
        import numpy as np

        m = self.m
        self.buf.partition(2 * m, axis=1)  # in place: the m largest end up in [2m, 3m)
        self.buf[:, :m] = self.buf[:, 2 * m :]
        self.buf[:, m:] = -np.inf
        self.fill.fill(m)
        if self.thr is not None:
            self.thr = self.buf[:, :m].min(axis=1)

    @staticmethod
    def _sampled_cut(acts: torch.Tensor, stride: int, keep: int) -> np.ndarray:
        """Per unit, a value with about ``keep`` of the batch's values above it: float32 [U]."""
        import torch

        b, u, h, w = acts.shape
        sample = acts.view(b, u, h * w)[:, :, ::stride].transpose(0, 1).reshape(u, -1)
        rank = min(sample.shape[1], max(1, math.ceil(keep * sample.shape[1] / (b * h * w))))
        return torch.topk(sample, rank, dim=1, sorted=False).values.amin(dim=1).cpu().numpy()

    def quantiles(self, n: int, specs: Sequence[QuantileSpec]) -> dict[str, np.ndarray]:
        if self.n_seen != n:
            raise RuntimeError(f"Quantile tail saw {self.n_seen} values per unit, expected {n}")
        return tail_quantiles(self.top(), n, specs)

    def top(self) -> np.ndarray:
        """The ``m`` largest values seen of every unit, unordered: float32 ``[U, m]``, a view of
        the buffer (valid until the next ``update``)."""
        self._compact()
        return self.buf[:, : self.m]


def tail_quantiles(
    kept: np.ndarray, n: int, specs: Sequence[QuantileSpec]
) -> dict[str, np.ndarray]:
    """Exact quantiles ``specs`` of ``n`` values per unit from their ``m`` largest, ``kept``
    float32 ``[U, m]`` in any order (partitioned in place): numpy's ``np.quantile`` of all ``n``
    values, bit for bit, since the values it reads are determined by the multiset."""
    import numpy as np

    m = kept.shape[1]
    reads = {}
    for spec in specs:
        prev, nxt, gamma = quantile_positions(n, spec)
        # Ascending index j of all n values is ascending index j - (n - m) of the top m.
        ia, ib = prev - (n - m), nxt - (n - m)
        if not (0 <= ia <= ib < m):
            raise RuntimeError(
                f"Quantile {spec.key} reads values outside the kept tail; "
                "this is a bug in bench.record."
            )
        reads[spec.key] = (ia, ib, gamma)
    kept.partition(sorted({i for ia, ib, _ in reads.values() for i in (ia, ib)}), axis=1)
    if not np.isfinite(kept).all():
        raise RuntimeError(
            "Quantile tail holds fewer values than needed; this is a bug in bench.record."
        )
    out = {}
    for key, (ia, ib, gamma) in reads.items():
        a = np.ascontiguousarray(kept[:, ia])
        b = np.ascontiguousarray(kept[:, ib])
        out[key] = (a if gamma is None else lerp(a, b, gamma)).astype(np.float32)
    return out


class _SampledTail:
    """Approximate quantiles from a seeded uniform random subsample of spatial positions.

    Each position of each image is kept with probability ``rate`` (a Bernoulli draw from a
    ``torch.Generator`` seeded with ``SAMPLE_SEED`` and the layer name's CRC32, so a rerun picks
    the same positions); the same positions serve every unit of the layer. Quantiles are numpy's
    on the sample.
    """

    def __init__(self, layer: str, rate: float):
        import torch

        self.rate = rate
        self.gen = torch.Generator().manual_seed(SAMPLE_SEED + zlib.crc32(layer.encode()))
        self.chunks: list[torch.Tensor] = []
        self.n_seen = 0

    def update(self, acts: torch.Tensor) -> None:
        import torch

        b, u, h, w = acts.shape
        keep = (torch.rand(b * h * w, generator=self.gen) < self.rate).nonzero().squeeze(1)
        keep = keep.to(acts.device)
        img = torch.div(keep, h * w, rounding_mode="floor")
        self.chunks.append(acts.view(b, u, h * w)[img, :, keep - img * (h * w)].cpu())
        self.n_seen += b * h * w

    def quantiles(self, n: int, specs: Sequence[QuantileSpec]) -> dict[str, np.ndarray]:
        import numpy as np
        import torch

        sample = torch.cat(self.chunks).T.contiguous().numpy()  # [U, S]
        self.chunks = []
        if sample.shape[1] == 0:
            raise DataError("The quantile subsample is empty; raise memory_budget.")
        log.debug("quantiles from %d sampled positions per unit (of %d)", sample.shape[1], n)
        return {
            s.key: np.quantile(sample, s.q, axis=1, method=s.method).astype(np.float32)
            for s in specs
        }


# --- top-k ------------------------------------------------------------------------------------


class _RunningTopK:
    """The k best images per unit by a pooled score, with their activation maps.

    Ties go to the lower probe index: ``values``/``indices`` are sorted by (score descending,
    index ascending) and every batch holds higher indices than the buffer (the loader is
    sequential), so a stable sort of ``[buffer, batch]`` keeps that order. The maps live in
    unordered slots (``store`` [U, k, h, w], ``slots`` says which); a batch only copies the maps
    that enter the top k, into the slots of those that leave.
    """

    #: Entering maps are gathered in one copy up to this many values, else copied one by one.
    GATHER_VALUES = 2**20

    def __init__(self, k: int, num_units: int, map_shape: tuple[int, int], device: torch.device):
        import torch

        self.k = k
        self.values = torch.empty(num_units, 0, dtype=torch.float32, device=device)
        self.indices = torch.empty(num_units, 0, dtype=torch.int64, device=device)
        self.slots = torch.empty(num_units, 0, dtype=torch.int64, device=device)
        self.store = torch.empty(num_units, k, *map_shape, dtype=torch.float32, device=device)

    def update(self, scores: torch.Tensor, indices: torch.Tensor, acts: torch.Tensor) -> None:
        """``scores`` float32 [B, U], ``indices`` int64 [B], ``acts`` float32 [B, U, h, w]."""
        import torch

        b, u = scores.shape
        held = self.values.shape[1]
        scores = scores.T
        if held == self.k and not bool((scores > self.values[:, -1:]).any()):
            return
        cand_v = torch.cat([self.values, scores], dim=1)
        cand_i = torch.cat([self.indices, indices.view(1, b).expand(u, b)], dim=1)
        order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        is_new = order >= held
        rows = torch.arange(u, device=order.device).view(u, 1).expand_as(order)
        kept_slots = (
            torch.gather(self.slots, 1, order.clamp(max=max(held - 1, 0)))
            if held
            else torch.zeros_like(order)
        )
        used = torch.zeros(u, self.k, dtype=torch.bool, device=order.device)
        used[rows[~is_new], kept_slots[~is_new]] = True
        free = torch.sort(used.to(torch.uint8), dim=1, stable=True).indices  # free slots first
        rank = (torch.cumsum(is_new, dim=1) - 1).clamp(min=0)
        slots = torch.where(is_new, torch.gather(free, 1, rank), kept_slots)
        r, c = is_new.nonzero(as_tuple=True)
        images, new_slots = order[r, c] - held, slots[r, c]
        if r.numel() * acts[0, 0].numel() <= self.GATHER_VALUES:
            self.store[r, new_slots] = acts[images, r]
        else:  # map by map: gathering first would allocate (and page-fault) a batch-sized copy
            for unit, slot, image in zip(
                r.tolist(), new_slots.tolist(), images.tolist(), strict=True
            ):
                self.store[unit, slot].copy_(acts[image, unit])
        self.values = torch.gather(cand_v, 1, order)
        self.indices = torch.gather(cand_i, 1, order)
        self.slots = slots

    def result(self) -> TopK:
        import torch

        rows = torch.arange(self.slots.shape[0], device=self.slots.device).view(-1, 1)
        return TopK(
            indices=self.indices.cpu().numpy(),
            values=self.values.cpu().numpy(),
            maps=self.store[rows, self.slots].cpu().numpy(),
        )


#: Values per CPU thread for the statistics of one layer output (see :func:`_stats_threads`).
VALUES_PER_STATS_THREAD = 2**24


@contextlib.contextmanager
def _stats_threads(acts: torch.Tensor) -> Iterator[None]:
    """Run a layer's statistics on few CPU threads: one per ``VALUES_PER_STATS_THREAD`` values.

    The statistics are a handful of memory-bound passes and many small index operations; below
    millions of values a fork/join across threads costs more than it saves, and on a loaded machine
    (a thread waiting for a core) far more. The forward pass keeps every thread.
    """
    import torch

    threads = torch.get_num_threads()
    wanted = max(1, min(threads, acts.numel() // VALUES_PER_STATS_THREAD))
    if acts.device.type != "cpu" or wanted == threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- one layer --------------------------------------------------------------------------------


class _LayerRecorder:
    def __init__(
        self,
        *,
        layer: str,
        target_name: str,
        n_images: int,
        num_units: int,
        map_shape: tuple[int, int],
        k: int,
        topk_by: Sequence[str],
        tail: _ExactTail | _SampledTail | None,
        accumulators: list[Accumulator],
        device: torch.device,
        maps: np.ndarray | None = None,
        offset: int = 0,
        units: np.ndarray | None = None,
    ):
        import numpy as np
        import torch

        #: Probe index of this recorder's row 0 (a recording of the images [offset, offset + N)).
        self.offset = offset
        self.layer = layer
        self.target_name = target_name
        self.n_images = n_images
        #: The layer's units; ``units`` (int64, ascending) are the recorded ones (None: all).
        self.num_units = num_units
        self.units = units
        width = num_units if units is None else len(units)
        #: How the recorded units are cut out of the layer's output: a channel range (a view)
        #: when they are consecutive, else an index tensor (one gather); None: all.
        self._select: tuple[int, int] | torch.Tensor | None = None
        if units is not None:
            if width and int(units[-1]) - int(units[0]) + 1 == width:
                self._select = (int(units[0]), width)
            else:
                self._select = torch.as_tensor(units, dtype=torch.int64, device=device)
        self.width = width
        self.map_shape = map_shape
        self.topk = {m: _RunningTopK(k, width, map_shape, device) for m in topk_by}
        self.tail = tail
        self.accumulators = accumulators
        self.maps = maps
        self.pooled_max = np.zeros((n_images, width), dtype=np.float32)
        self.pooled_mean = np.zeros((n_images, width), dtype=np.float32)
        self.dtype = ""
        self.seen = 0

    def update(self, out: torch.Tensor, indices: torch.Tensor) -> None:
        """``out``: the spatialized layer output ``[B, U, h, w]``; ``indices`` int64 [B] (CPU)."""
        import torch

        if not self.dtype:
            self.dtype = str(out.dtype).removeprefix("torch.")
        if tuple(out.shape[1:]) != (self.num_units, *self.map_shape):
            raise UsageError(
                f"Layer '{self.layer}' of '{self.target_name}' gave maps of shape "
                f"{tuple(out.shape[1:])}, expected {(self.num_units, *self.map_shape)} as on the "
                "first image; every probe image must be preprocessed to the same size."
            )
        out = out.detach()
        if isinstance(self._select, tuple):
            out = out.narrow(1, *self._select)
        elif self._select is not None:
            out = out.index_select(1, self._select)
        acts = out.to(torch.float32).contiguous()
        with _stats_threads(acts):
            self._update_stats(acts, indices)
        for acc in self.accumulators:
            acc.update(acts, indices)
        self.seen += acts.shape[0]

    def _update_stats(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        import torch

        pmax = acts.amax(dim=(2, 3))
        pmean = acts.mean(dim=(2, 3))
        # NaN and inf propagate into the max or the mean, hence into their difference (which
        # overflows for finite values only beyond 1e38: the exact check below clears those).
        if not bool(torch.isfinite(pmax - pmean).all()):
            bad = ~(torch.isfinite(acts).flatten(1).all(dim=1) & torch.isfinite(pmean).all(dim=1))
            images = indices[bad.cpu()].tolist()
            if images:
                shown = ", ".join(map(str, images[:20])) + (", ..." if len(images) > 20 else "")
                raise NonFiniteError(
                    f"Expected finite activations, got NaN or inf in layer '{self.layer}' of "
                    f"target '{self.target_name}' on probe image(s) [{shown}]. Check the target's "
                    "weights and preprocessing (a half-precision overflow?), or drop these images."
                )
        rows = indices.numpy()
        if self.offset:
            rows = rows - self.offset
        if self.maps is not None:
            self.maps[rows] = acts.cpu().numpy()
        self.pooled_max[rows] = pmax.cpu().numpy()
        self.pooled_mean[rows] = pmean.cpu().numpy()
        dev_indices = indices.to(acts.device)
        for mode, running in self.topk.items():
            running.update(pmax if mode == "max" else pmean, dev_indices, acts)
        if self.tail is not None:
            self.tail.update(acts)

    def finalize(self, specs: Sequence[QuantileSpec], meta: dict[str, Any]) -> LayerEvidence:
        import numpy as np

        if self.seen != self.n_images:
            raise RuntimeError(
                f"Layer '{self.layer}' saw {self.seen} images, expected {self.n_images}"
            )
        if self.maps is not None and hasattr(self.maps, "flush"):
            self.maps.flush()
        n_values = self.n_images * self.map_shape[0] * self.map_shape[1]
        thresholds = self.tail.quantiles(n_values, specs) if self.tail is not None else {}
        extras: dict[str, np.ndarray] = {}
        for acc in self.accumulators:
            for key, arr in acc.finalize().items():
                name = f"{acc.name}.{key}"
                if name in extras:
                    raise ConfigError(
                        f"Expected distinct accumulator array names in layer "
                        f"'{self.layer}', got '{name}' twice."
                    )
                extras[name] = np.asarray(arr)
        return LayerEvidence(
            layer=self.layer,
            num_units=self.num_units,
            map_shape=self.map_shape,
            topk={m: t.result() for m, t in self.topk.items()},
            thresholds=thresholds,
            pooled_max=self.pooled_max,
            pooled_mean=self.pooled_mean,
            extras=extras,
            meta={**meta, "dtype": self.dtype, "map_shape": list(self.map_shape)},
            maps=self.maps,
            units=self.units,
        )


# --- the probe as a dataset -------------------------------------------------------------------


class ProbeImages:
    """Map-style dataset: item ``i`` is ``(float32 [3, S, S] input, i)``."""

    def __init__(self, probe: ProbeSet, preprocessing: Preprocessing):
        self.probe = probe
        self.preprocessing = preprocessing
        self.fixed_geometry = bool(probe.fixed_geometry)

    def __len__(self) -> int:
        return len(self.probe)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.probe.load_image(i)
        return self.preprocessing.transform(img, fixed_geometry=self.fixed_geometry), i


# --- argument checks --------------------------------------------------------------------------


def _quantile_specs(quantiles: Sequence[QuantileSpec | str]) -> tuple[QuantileSpec, ...]:
    specs: dict[str, QuantileSpec] = {}
    for q in quantiles:
        spec = q if isinstance(q, QuantileSpec) else QuantileSpec.parse(str(q))
        specs[spec.key] = spec
    return tuple(specs.values())


def _topk_modes(topk_by: Sequence[str] | str) -> tuple[str, ...]:
    modes = (topk_by,) if isinstance(topk_by, str) else tuple(topk_by)
    bad = [m for m in modes if m not in TOPK_MODES]
    if bad or len(set(modes)) != len(modes):
        raise ConfigError(f"Expected distinct top-k modes from {TOPK_MODES}, got {list(modes)}.")
    return modes


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Expected {name} to be an integer >= 1, got {value!r}.")


#: Units to record per layer: unit indices (any order, duplicates allowed); a layer absent from
#: the mapping, or ``None`` for the mapping, records every unit.
UnitSelection = Mapping[str, Sequence[int]]


def normalize_units(
    units: UnitSelection | None, sizes: Mapping[str, int]
) -> dict[str, tuple[int, ...]]:
    """The proper subsets of ``units`` (layer -> sorted distinct indices), checked against the
    layers' ``sizes``; a selection of every unit of its layer is dropped (recorded whole), so it
    keys as the whole layer does."""
    out: dict[str, tuple[int, ...]] = {}
    for layer, chosen in (units or {}).items():
        if layer not in sizes:
            raise ConfigError(
                f"Expected units only for recorded layers {list(sizes)}, got units for '{layer}'."
            )
        idx = tuple(sorted({int(i) for i in chosen}))
        n = int(sizes[layer])
        if not idx:
            raise ConfigError(
                f"Expected at least one unit of layer '{layer}' to record, got none; leave the "
                "layer out of the recording instead."
            )
        if idx[0] < 0 or idx[-1] >= n:
            bad = idx[0] if idx[0] < 0 else idx[-1]
            raise ConfigError(f"Layer '{layer}' has {n} units (0-{n - 1}); got unit {bad}.")
        if len(idx) < n:
            out[layer] = idx
    return out


def _units_key(units: Mapping[str, Sequence[int]]) -> dict[str, str]:
    return {layer: format_unit_ranges(units[layer]) for layer in sorted(units)}


def _plan_tails(
    shapes: Mapping[str, tuple[int, int, int]],
    n_images: int,
    specs: Sequence[QuantileSpec],
    memory_budget: int,
) -> dict[str, tuple[str, float, int]]:
    """Per layer ``(kind, rate, exact_bytes)``: kind "exact", "sample" (with its rate) or "none".

    Layers take exact tails smallest first while their total fits ``memory_budget``; the others
    share what is left for subsamples (at least ``MIN_SAMPLE_PER_UNIT`` positions per unit).
    """
    if not specs:
        return {layer: ("none", 0.0, 0) for layer in shapes}
    need = {}
    for layer, (u, h, w) in shapes.items():
        need[layer] = TAIL_BYTES_PER_VALUE * u * tail_size(n_images * h * w, specs)
    plan: dict[str, tuple[str, float, int]] = {}
    used = 0
    for layer in sorted(shapes, key=lambda name: need[name]):
        if used + need[layer] <= memory_budget:
            plan[layer] = ("exact", 1.0, need[layer])
            used += need[layer]
    rest = [layer for layer in shapes if layer not in plan]
    if rest:
        share = max(memory_budget - used, 0) / len(rest)
        for layer in rest:
            u, h, w = shapes[layer]
            n_values = n_images * h * w
            per_unit = max(MIN_SAMPLE_PER_UNIT, int(share // (SAMPLE_BYTES_PER_VALUE * u)))
            rate = min(1.0, per_unit / n_values)
            plan[layer] = ("sample", rate, need[layer])
        log.warning(
            "Exact quantiles of layer(s) %s would need %.1f MiB, over memory_budget=%.1f MiB; "
            "using a seeded random subsample of spatial positions instead "
            "(meta exact_quantiles=False). Raise memory_budget for exact thresholds.",
            ", ".join(rest),
            sum(need.values()) / 2**20,
            memory_budget / 2**20,
        )
    return plan


# --- record -----------------------------------------------------------------------------------


def record(
    target: Target,
    probe: ProbeSet,
    layers: Sequence[str] | None = None,
    *,
    k: int = 15,
    topk_by: Sequence[str] = ("max",),
    quantiles: Sequence[QuantileSpec | str] = DEFAULT_QUANTILES,
    batch_size: int = 64,
    device: str = "cpu",
    memory_budget: int = 2**30,
    accumulators: Mapping[str, Sequence[AccumulatorFactory]] | None = None,
    num_workers: int = 0,
    progress: bool = False,
    store_maps: bool = False,
    maps_dir: Path | None = None,
    units: UnitSelection | None = None,
) -> dict[str, LayerEvidence]:
    """Record evidence for ``layers`` (default: the target's) of ``target`` on ``probe``.

    ``units`` (layer -> unit indices) records only those units of a layer (every unit of a layer
    it does not name): every per-unit array below then has one row per recorded unit, ascending,
    and ``LayerEvidence.units`` names them; each row equals the whole layer's row of that unit
    exactly (the statistics are per unit).

    One forward pass per batch (``torch.inference_mode``, the model in eval mode, moved to
    ``device``) records every layer. Images are ``probe.load_image(i)`` through
    ``target.preprocessing.transform(img, fixed_geometry=probe.fixed_geometry)``, in probe order
    (a ``DataLoader`` with ``num_workers`` workers).

    Per layer (U units, N = ``len(probe)`` images, h x w its map, ``k = min(k, N)``):

    - ``topk[mode]`` for each of ``topk_by`` ("max", "mean": the spatial pooling that ranks the
      images): indices int64 [U, k], values float32 [U, k], maps float32 [U, k, h, w], best
      first. **Ties go to the lower probe index**, so the result is deterministic.
    - ``thresholds[spec.key]`` float32 [U] for each quantile: the unit's quantile over all
      N * h * w positions, equal to ``np.quantile(values, spec.q, method=spec.method)`` (to
      float32 precision). Only the largest ``m`` values per unit are kept (``tail_size``: about
      ``(1 - q_min) * N * h * w``), which needs ``TAIL_BYTES_PER_VALUE * U * m`` bytes. When all
      layers' tails together exceed ``memory_budget``, layers fall back, largest first, to an
      approximation: quantiles of a uniform random subsample of positions (a Bernoulli draw per
      position with a fixed seed, so reruns agree; at least ``MIN_SAMPLE_PER_UNIT`` positions
      per unit), logged as a warning, with ``meta["exact_quantiles"] = False``.
    - ``pooled_max``, ``pooled_mean`` float32 [N, U].
    - ``extras``: ``accumulators[layer]`` factories are called once each; their accumulators see
      every image once (the recorded units' channels only) and their arrays are stored as
      ``f"{name}.{key}"``.
    - ``maps`` (only with ``store_maps``): every activation map, float32 [N, U, h, w], written
      to ``maps_dir / f"{i}.maps.npy"`` (i: the layer's position in the resolved layers) as a
      memory map when ``maps_dir`` is given, held in memory otherwise. This is what NetDissect
      and CompExp tally against segmentations; it costs ``4 * N * U * h * w`` bytes per layer.
    - ``meta``: n_images, map_shape, exact_quantiles, quantile_exact_bytes (what exact tails
      need), quantile_sample_rate (approximate layers only), k, topk_by, device, dtype (of the
      layer's output), seconds (of the whole recording).

    Raises :class:`~bench.errors.NonFiniteError` (naming the layer and the probe images) when an
    activation is NaN or infinite, and :class:`~bench.errors.UsageError` for a layer that does
    not run exactly once per forward pass.
    """
    import numpy as np
    import torch

    from bench.environment import tune_allocator

    start = time.perf_counter()
    tune_allocator()  # else every batch's activations page-fault afresh (glibc mmap threshold)
    names = target.resolve_layers(list(layers) if layers else None)
    specs = _quantile_specs(quantiles)
    modes = _topk_modes(topk_by)
    _check_positive("k", k)
    _check_positive("batch_size", batch_size)
    _check_positive("memory_budget", memory_budget)
    if num_workers < 0:
        raise ConfigError(f"Expected num_workers >= 0, got {num_workers}.")
    factories = dict(accumulators or {})
    unknown = [layer for layer in factories if layer not in names]
    if unknown:
        raise ConfigError(
            f"Expected accumulators only for recorded layers {names}, "
            f"got accumulators for {unknown}."
        )
    n_images = len(probe)
    if n_images == 0:
        raise DataError(f"Probe set '{probe.name}' has no images; expected at least one.")
    k_eff = min(k, n_images)
    dev = torch.device(device)
    model = target.model
    was_training = model.training
    dataset = ProbeImages(probe, target.preprocessing)
    log.info(
        "Recording %d images of '%s' on '%s' layers %s (%s).",
        n_images,
        probe.name,
        target.name,
        ", ".join(names),
        dev,
    )

    recorders: dict[str, _LayerRecorder] = {}
    try:
        model.eval()
        model.to(dev)
        with torch.inference_mode():
            shapes = _layer_shapes(target, names, dataset[0][0].unsqueeze(0).to(dev))
            chosen = normalize_units(units, {layer: shapes[layer][0] for layer in names})
            widths = {
                layer: (len(chosen[layer]) if layer in chosen else u, h, w)
                for layer, (u, h, w) in shapes.items()
            }
            plan = _plan_tails(widths, n_images, specs, memory_budget)
            for layer in names:
                u, h, w = widths[layer]
                kind, rate, _ = plan[layer]
                m = tail_size(n_images * h * w, specs)
                tail = (
                    _ExactTail(u, m)
                    if kind == "exact"
                    else _SampledTail(layer, rate)
                    if kind == "sample"
                    else None
                )
                maps: np.ndarray | None = None
                if store_maps:
                    shape = (n_images, u, h, w)
                    if maps_dir is not None:
                        maps = np.lib.format.open_memmap(
                            Path(maps_dir) / f"{names.index(layer)}.maps.npy",
                            mode="w+",
                            dtype=np.float32,
                            shape=shape,
                        )
                    else:
                        maps = np.zeros(shape, dtype=np.float32)
                recorders[layer] = _LayerRecorder(
                    maps=maps,
                    layer=layer,
                    target_name=target.name,
                    n_images=n_images,
                    num_units=shapes[layer][0],
                    map_shape=(h, w),
                    k=k_eff,
                    topk_by=modes,
                    tail=tail,
                    accumulators=[f() for f in factories.get(layer, ())],
                    device=dev,
                    units=np.asarray(chosen[layer], dtype=np.int64) if layer in chosen else None,
                )
            _run_batches(
                target,
                names,
                dataset,
                recorders,
                batch_size=batch_size,
                num_workers=num_workers,
                device=dev,
                progress=progress,
            )
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    out = {}
    for layer in names:
        kind, rate, exact_bytes = plan[layer]
        meta = {
            "n_images": n_images,
            "exact_quantiles": kind != "sample" or rate >= 1.0,  # a full "sample" is exact
            "quantile_exact_bytes": exact_bytes,
            "k": k_eff,
            "topk_by": list(modes),
            "maps": bool(store_maps),
            "device": str(dev),
            "seconds": round(seconds, 3),
        }
        if kind == "sample":
            meta["quantile_sample_rate"] = rate
        out[layer] = recorders[layer].finalize(specs, meta)
    log.info("Recorded %d layers in %.1f s.", len(names), seconds)
    return out


def _run_batches(
    target: Target,
    names: Sequence[str],
    dataset: Any,
    recorders: Mapping[str, _LayerRecorder],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Forward ``dataset`` (items ``(input, probe index)``) through the target in batches of
    ``batch_size``, in order, feeding each layer's spatialized output to its recorder. Call inside
    ``torch.inference_mode`` with the model in eval mode on ``device``."""
    import torch

    current: dict[str, Any] = {"indices": None, "seen": set()}

    def on_output(layer: str, out: Any) -> None:
        if layer in current["seen"]:
            raise UsageError(
                f"Layer '{layer}' of '{target.name}' ran twice in one forward pass; "
                "expected once. Record a module that the network calls once."
            )
        current["seen"].add(layer)
        recorders[layer].update(target.spatialize(layer, out), current["indices"])

    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]]
    loader = torch.utils.data.DataLoader(
        # ProbeImages is a duck-typed map-style dataset, not a torch Dataset subclass
        # (torch is imported lazily here), which torch's stubs do not accept.
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    with (
        progress_bar(
            total=len(loader), desc=f"record {target.name}", enabled=progress, unit="batch"
        ) as bar,
        hooks(target.model, names, on_output),
    ):
        for images, indices in loader:
            current["indices"] = indices.to(torch.int64)
            current["seen"] = set()
            target.model(images.to(device, non_blocking=True))
            _check_all_ran(target.name, names, current["seen"])
            bar.update(1)


def _check_all_ran(target_name: str, names: Sequence[str], seen: set[str]) -> None:
    missing = [layer for layer in names if layer not in seen]
    if missing:
        raise UsageError(
            f"Expected layer(s) {missing} of '{target_name}' to run in the forward "
            "pass, but they did not; pick modules on the forward path."
        )


def layer_sizes(target: Target, layers: Sequence[str]) -> dict[str, int]:
    """Units of each of ``layers``, without recording: one dummy input of the target's input size
    through the network on the meta device (:func:`_layer_shapes`: channels of conv maps, features
    of linear outputs, the embedding width of transformer tokens, as ``Target.spatialize`` gives
    them to the recorder)."""
    import torch

    model = target.model
    was_training = model.training
    size = target.preprocessing.input_size
    try:
        model.eval()
        with torch.inference_mode():
            device = next(iter(model.parameters()), torch.empty(0)).device
            x = torch.zeros(1, 3, size, size, device=device)
            shapes = _layer_shapes(target, list(layers), x)
    finally:
        model.train(was_training)
    return {layer: shapes[layer][0] for layer in layers}


def _layer_shapes(
    target: Target, names: Sequence[str], x: torch.Tensor
) -> dict[str, tuple[int, int, int]]:
    """``(U, h, w)`` of each layer for one input ``x`` [1, 3, S, S].

    Runs the network on the meta device (shapes only, no arithmetic); a network that cannot run
    there (data-dependent control flow, custom kernels) runs once on ``x`` itself.
    """
    import itertools

    import torch
    from torch.func import functional_call

    model = target.model
    shapes: dict[str, tuple[int, int, int]] = {}
    seen: set[str] = set()

    def on_output(layer: str, out: Any) -> None:
        if layer in seen:
            raise UsageError(
                f"Layer '{layer}' of '{target.name}' ran twice in one forward pass; "
                "expected once. Record a module that the network calls once."
            )
        seen.add(layer)
        _, u, h, w = target.spatialize(layer, out).shape
        shapes[layer] = (int(u), int(h), int(w))

    try:
        tensors = itertools.chain(model.named_parameters(), model.named_buffers())
        meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
        with hooks(model, names, on_output):
            functional_call(model, meta, (x.to("meta"),))
    except UsageError:
        raise
    except Exception as e:  # whatever fails on meta: measure on the real device instead
        log.debug("Shapes on the meta device failed (%s); running one image.", e)
        shapes.clear()
        seen.clear()
        with hooks(model, names, on_output):
            model(x)
    _check_all_ran(target.name, names, seen)
    return shapes


# --- recording in image ranges ----------------------------------------------------------------
#
# A recording split into jobs over image ranges [start, stop) whose partial statistics merge into
# the one-pass result bit for bit (see record_cached's ``images_per_job``):
#
# - pooled max/mean and the activation maps are per image: the parts' rows are concatenated;
# - top-k: a part keeps its own top min(k, rows) by (score descending, index ascending). That
#   order is total, so every member of the global top k is in its part's top k; a stable sort of
#   the parts' candidates in range order restores the one-pass order, ties included;
# - exact quantiles read only the m largest of the N * h * w values of a unit (tail_size); a part
#   keeps its own top min(m, rows * h * w), whose union holds the global top m, and the merge
#   reads the same order statistics as the one pass (tail_quantiles).
#
# Bitwise equality of the merged statistics with the one pass also needs the same activations:
# range boundaries are multiples of batch_size, so every job runs exactly the one pass's batches.

#: Cache stage of one image range's partial statistics (:func:`run_range_job`).
PART_STAGE = "record-part"
#: Bump when a part's files or their meaning change (part of every part's key).
PART_VERSION = "2"
#: Images per job when :func:`record_cached` gets ``map_jobs`` without ``images_per_job``.
DEFAULT_IMAGES_PER_JOB = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSource:
    """How a worker process rebuilds the target and the probe set by name (they do not travel).

    ``target``: its name in ``bench.registry.TARGETS`` (default: ``target.spec.name``);
    ``weights``: the local weights file given to ``load_target`` (``--weights``), as a path every
    worker can read; ``probe``: the name in ``bench.registry.PROBES`` (default: ``probe.name``,
    which is not always the registry name: pass it); ``probe_root``, ``probe_options`` (as given
    to ``load_probe``, JSON values) and ``probe_download`` likewise.
    """

    target: str | None = None
    weights: str | None = None
    probe: str | None = None
    probe_root: str | None = None
    probe_options: Mapping[str, Any] = field(default_factory=dict)
    probe_download: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class RangeJob:
    """One image range ``[start, stop)`` of a recording, with everything a worker on another
    machine needs, as JSON values (``to_json``/``from_json``): what to load (``target``,
    ``weights``, ``probe``, ``probe_root``, ``probe_options``, ``probe_download``), what to
    record (``layers``, ``k``, ``topk_by``, ``quantiles`` as ``(q, method)`` pairs with the exact
    float ``q``, ``store_maps``), how (``batch_size``, ``num_workers``, ``device``), where
    (``cache_root``: an absolute path or the URL of a remote store, ``Cache.location``, so the
    worker's environment plays no part), and what it
    must find: ``record_parts``, the inputs of the one-pass cache key (the target's identity with
    its weights hash, the probe's identity, the torch version), checked by the worker against what
    it loaded. ``record_key`` is the one-pass entry the part belongs to, ``key`` the part's own
    content key (stage :data:`PART_STAGE`).
    """

    target: str
    weights: str | None
    probe: str
    probe_root: str | None
    probe_options: dict[str, Any]
    probe_download: bool
    n_images: int
    layers: tuple[str, ...]
    start: int
    stop: int
    k: int
    topk_by: tuple[str, ...]
    quantiles: tuple[tuple[float, str], ...]
    batch_size: int
    num_workers: int
    device: str
    store_maps: bool
    cache_root: str
    record_parts: dict[str, Any]
    record_key: str
    key: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop <= self.n_images:
            raise ConfigError(
                f"Expected 0 <= start < stop <= n_images, got [{self.start}, {self.stop}) of "
                f"{self.n_images} images."
            )
        _check_positive("batch_size", self.batch_size)
        _check_positive("k", self.k)

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def target_identity(self) -> dict[str, Any]:
        """The target's identity (name, architecture, weights hash, preprocessing)."""
        return dict(self.record_parts["target"])

    @property
    def probe_identity(self) -> dict[str, Any]:
        return dict(self.record_parts["probe"])

    def specs(self) -> tuple[QuantileSpec, ...]:
        return tuple(QuantileSpec(q=q, method=m) for q, m in self.quantiles)  # type: ignore[arg-type]

    @property
    def units(self) -> dict[str, list[int]]:
        """The layers recorded for a subset of their units (layer -> sorted unit indices), as
        the one-pass key says (``record_parts["units"]``); empty for whole layers."""
        spec = self.record_parts.get("units") or {}
        return {layer: parse_unit_ranges(str(r)) for layer, r in spec.items()}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (lists for tuples); ``RangeJob.from_json`` reverses it."""
        import json

        from bench.schema import dumps

        out: dict[str, Any] = json.loads(dumps({f: getattr(self, f) for f in _JOB_FIELDS}))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RangeJob:
        missing = sorted(set(_JOB_FIELDS) - set(data))
        unknown = sorted(set(data) - set(_JOB_FIELDS))
        if missing or unknown:
            raise ConfigError(
                f"Expected a range job with the fields {sorted(_JOB_FIELDS)}, got one missing "
                f"{missing} with unknown {unknown}; plan the jobs with plan_range_jobs of the same "
                "neuron-bench version."
            )
        values = dict(data)
        for name in ("layers", "topk_by"):
            values[name] = tuple(values[name])
        values["quantiles"] = tuple((float(q), str(m)) for q, m in values["quantiles"])
        values["probe_options"] = dict(values["probe_options"])
        values["record_parts"] = dict(values["record_parts"])
        return cls(**values)


_JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RangeJob))

#: ``map_jobs(run_range_job, jobs)``: runs every job (anywhere) and returns their entry paths.
MapJobs = Callable[[Callable[[RangeJob], str], Sequence[RangeJob]], Iterable[str]]


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from canonical JSON (tuples become lists, keys sorted)."""
    import json

    from bench.schema import dumps

    return json.loads(dumps(value))


def _part_key_parts(record_parts: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {"record": dict(record_parts), "part_version": PART_VERSION, "range": [start, stop]}


def plan_range_jobs(
    cache: Cache,
    target: Target,
    probe: ProbeSet,
    layers: Sequence[str] | None = None,
    *,
    images_per_job: int,
    k: int = 15,
    topk_by: Sequence[str] = ("max",),
    quantiles: Sequence[QuantileSpec | str] = DEFAULT_QUANTILES,
    batch_size: int = 64,
    device: str = "cpu",
    store_maps: bool = False,
    num_workers: int = 0,
    source: WorkerSource | None = None,
    units: UnitSelection | None = None,
) -> list[RangeJob]:
    """The jobs of a recording split by image ranges, in probe order (same inputs, same jobs).
    ``units`` as in :func:`record_cached` (the jobs carry the selection in their key's parts).

    Ranges hold ``images_per_job`` images rounded up to a multiple of ``batch_size`` (so that
    each job runs exactly the batches of the one pass; the last range takes the rest). Each job
    computes the partial statistics of its range (:func:`run_range_job`); :func:`record_cached`
    merges them. ``source`` says how workers load the target and probe by name.
    """
    _check_positive("images_per_job", images_per_job)
    _check_positive("batch_size", batch_size)
    _check_positive("k", k)
    if num_workers < 0:
        raise ConfigError(f"Expected num_workers >= 0, got {num_workers}.")
    src = source if source is not None else WorkerSource()
    names = target.resolve_layers(list(layers) if layers else None)
    specs = _quantile_specs(quantiles)
    modes = _topk_modes(topk_by)
    n_images = len(probe)
    if n_images == 0:
        raise DataError(f"Probe set '{probe.name}' has no images; expected at least one.")
    per_job = -(-images_per_job // batch_size) * batch_size
    if per_job != images_per_job:
        log.info(
            "images_per_job=%d rounded up to %d, a multiple of batch_size=%d (each job then runs "
            "the one pass's batches).",
            images_per_job,
            per_job,
            batch_size,
        )
    chosen = normalize_units(units, layer_sizes(target, names)) if units else {}
    parts = _json_value(
        record_key_parts(
            target,
            probe,
            names,
            k=k,
            topk_by=modes,
            quantiles=specs,
            device=device,
            store_maps=store_maps,
            units=chosen,
        )
    )
    weights = str(Path(src.weights).expanduser().absolute()) if src.weights else None
    root = str(Path(src.probe_root).expanduser().absolute()) if src.probe_root else None
    jobs = []
    for start in range(0, n_images, per_job):
        stop = min(n_images, start + per_job)
        jobs.append(
            RangeJob(
                target=src.target or target.spec.name,
                weights=weights,
                probe=src.probe or probe.name,
                probe_root=root,
                probe_options=_json_value(dict(src.probe_options)),
                probe_download=bool(src.probe_download),
                n_images=n_images,
                layers=tuple(names),
                start=start,
                stop=stop,
                k=int(k),
                topk_by=modes,
                quantiles=tuple((float(s.q), str(s.method)) for s in specs),
                batch_size=int(batch_size),
                num_workers=int(num_workers),
                device=str(device),
                store_maps=bool(store_maps),
                cache_root=cache.location,
                record_parts=parts,
                record_key=cache.key(STAGE, parts),
                key=cache.key(PART_STAGE, _part_key_parts(parts, start, stop)),
            )
        )
    log.debug("planned %d range jobs of record %s", len(jobs), jobs[0].record_key[:12])
    return jobs


def run_range_job(job: RangeJob) -> str:
    """Compute the partial statistics of ``job``'s image range into the cache it names and
    return the entry's directory (a cache hit when the entry exists and is intact).

    Runs in any process: the target and the probe are loaded by name from ``job`` (weights and
    datasets from ``job.cache_root``), and must reproduce the identities the driver planned with,
    else :class:`~bench.errors.UsageError` says what differs.
    """
    from bench.cache import Cache
    from bench.probes import load_probe
    from bench.targets import load_target

    cache = Cache(job.cache_root)
    hit = cache.load(PART_STAGE, job.key)
    if hit is not None:
        return str(hit)
    target = load_target(
        job.target, weights=job.weights, device=job.device, download=True, cache=cache
    )
    probe = load_probe(
        job.probe,
        job.probe_root,
        download=job.probe_download,
        options=job.probe_options,
        cache=cache,
    )
    return str(_run_part(job, cache, target, probe))


def _run_part(
    job: RangeJob, cache: Cache, target: Target, probe: ProbeSet, progress: bool = False
) -> Path:
    """``job``'s part entry, computed with the already loaded ``target`` and ``probe``."""
    here = _json_value(
        record_key_parts(
            target,
            probe,
            list(job.layers),
            k=job.k,
            topk_by=job.topk_by,
            quantiles=job.specs(),
            device=job.device,
            store_maps=job.store_maps,
            units=job.units,
        )
    )
    if here != job.record_parts:
        differ = sorted(
            key
            for key in set(here) | set(job.record_parts)
            if here.get(key) != job.record_parts.get(key)
        )
        details = "; ".join(
            f"{key}: planned {job.record_parts.get(key)!r}, here {here.get(key)!r}"
            for key in differ
        )
        raise UsageError(
            f"Range job [{job.start}, {job.stop}) of record {job.record_key[:12]} was planned "
            f"for other inputs than this worker loaded ({details}). Every worker needs the "
            "driver's target weights, probe set and torch version."
        )
    if len(probe) != job.n_images:
        raise DataError(
            f"Expected probe set '{job.probe}' to hold {job.n_images} images as planned, "
            f"got {len(probe)}."
        )
    parts = _part_key_parts(job.record_parts, job.start, job.stop)
    if cache.key(PART_STAGE, parts) != job.key:
        raise ConfigError(
            f"Range job [{job.start}, {job.stop}) has the key {job.key[:12]}, which does not "
            "match its contents; plan jobs with plan_range_jobs instead of editing them."
        )
    path, hit = cache.get_or_create(
        PART_STAGE, parts, lambda d: _write_part(job, target, probe, Path(d), progress)
    )
    log.info("record part [%d, %d): cache %s", job.start, job.stop, "hit" if hit else "miss")
    return path


def _write_part(
    job: RangeJob, target: Target, probe: ProbeSet, directory: Path, progress: bool
) -> None:
    """Record ``job``'s range into ``directory``: per layer i, ``<i>.safetensors`` (pooled_max,
    pooled_mean [rows, U]; topk.<mode>.indices/values/maps of the range's top min(k, rows) with
    probe indices; tail float32 [U, min(m, rows * h * w)], the range's largest values of every
    unit, unordered), ``<i>.json``, ``<i>.maps.npy`` with maps; ``part.json``."""
    import numpy as np
    import torch
    from torch.utils.data import Subset

    from bench.cache import save_arrays
    from bench.environment import tune_allocator
    from bench.schema import write_json

    start_time = time.perf_counter()
    tune_allocator()
    names = list(job.layers)
    specs = job.specs()
    modes = _topk_modes(job.topk_by)
    rows = job.stop - job.start
    dev = torch.device(job.device)
    dataset = ProbeImages(probe, target.preprocessing)
    model = target.model
    was_training = model.training
    recorders: dict[str, _LayerRecorder] = {}
    tails: dict[str, _ExactTail | None] = {}
    chosen = job.units
    try:
        model.eval()
        model.to(dev)
        with torch.inference_mode():
            shapes = _layer_shapes(target, names, dataset[job.start][0].unsqueeze(0).to(dev))
            sizes = {layer: shapes[layer][0] for layer in names}
            if normalize_units(chosen, sizes) != {k: tuple(v) for k, v in chosen.items()}:
                raise UsageError(
                    f"Range job [{job.start}, {job.stop}) asks for units {_units_key(chosen)} "
                    f"that do not fit the layers' sizes here ({sizes})."
                )
            for i, layer in enumerate(names):
                n_units, h, w = shapes[layer]
                u = len(chosen[layer]) if layer in chosen else n_units
                m = min(tail_size(job.n_images * h * w, specs), rows * h * w)
                tails[layer] = _ExactTail(u, m) if m else None
                maps = None
                if job.store_maps:
                    maps = np.lib.format.open_memmap(
                        directory / f"{i}.maps.npy",
                        mode="w+",
                        dtype=np.float32,
                        shape=(rows, u, h, w),
                    )
                recorders[layer] = _LayerRecorder(
                    maps=maps,
                    layer=layer,
                    target_name=target.name,
                    n_images=rows,
                    num_units=n_units,
                    map_shape=(h, w),
                    k=min(job.k, rows),
                    topk_by=modes,
                    tail=tails[layer],
                    accumulators=[],
                    device=dev,
                    offset=job.start,
                    units=np.asarray(chosen[layer], dtype=np.int64) if layer in chosen else None,
                )
            _run_batches(
                target,
                names,
                Subset(dataset, range(job.start, job.stop)),  # type: ignore[arg-type]
                recorders,
                batch_size=job.batch_size,
                num_workers=job.num_workers,
                device=dev,
                progress=progress,
            )
    finally:
        model.train(was_training)
    for i, layer in enumerate(names):
        rec = recorders[layer]
        if rec.seen != rows:
            raise RuntimeError(f"Layer '{layer}' saw {rec.seen} images, expected {rows}")
        arrays: dict[str, np.ndarray] = {
            "pooled_max": rec.pooled_max,
            "pooled_mean": rec.pooled_mean,
        }
        for mode, running in rec.topk.items():
            top = running.result()
            arrays[f"topk.{mode}.indices"] = top.indices
            arrays[f"topk.{mode}.values"] = top.values
            arrays[f"topk.{mode}.maps"] = top.maps
        tail = tails[layer]
        h, w = rec.map_shape
        if tail is not None:
            if tail.n_seen != rows * h * w:
                raise RuntimeError(f"Quantile tail of '{layer}' saw {tail.n_seen} values")
            arrays["tail"] = tail.top()
        if rec.maps is not None and hasattr(rec.maps, "flush"):
            rec.maps.flush()
        save_arrays(directory / f"{i}.safetensors", arrays)
        write_json(
            directory / f"{i}.json",
            {
                "layer": layer,
                "num_units": rec.width,  # rows: the recorded units
                "layer_units": rec.num_units,
                "units": None if rec.units is None else [int(v) for v in rec.units],
                "map_shape": [h, w],
                "dtype": rec.dtype,
                "range": [job.start, job.stop],
                "maps": rec.maps is not None,
            },
        )
    write_json(
        directory / "part.json",
        {
            "part_version": PART_VERSION,
            "record_key": job.record_key,
            "range": [job.start, job.stop],
            "n_images": job.n_images,
            "layers": names,
            "seconds": round(time.perf_counter() - start_time, 3),
        },
    )


class _BadPart(Exception):
    """A part entry whose contents do not fit its job (names the job)."""

    def __init__(self, job: RangeJob, problem: str):
        super().__init__(problem)
        self.job = job


def _read_part_layer(
    path: Path, job: RangeJob, i: int, layer: str
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray | None]:
    """Layer ``i`` of a part entry: its metadata, arrays and maps, checked against ``job``."""
    import numpy as np

    from bench.cache import load_arrays
    from bench.schema import read_json

    try:
        info = read_json(path / f"{i}.json")
        arrays = load_arrays(path / f"{i}.safetensors")
        maps = (
            np.load(path / f"{i}.maps.npy", mmap_mode="r", allow_pickle=False)
            if job.store_maps
            else None
        )
    except (OSError, ValueError, CacheError) as e:
        raise _BadPart(job, f"unreadable: {e}") from e
    if info.get("layer") != layer or info.get("range") != [job.start, job.stop]:
        raise _BadPart(job, f"holds {info.get('layer')!r} {info.get('range')}")
    try:
        rows, u = job.stop - job.start, int(info["num_units"])
        h, w = (int(v) for v in info["map_shape"])
        int(info["layer_units"])
    except (KeyError, TypeError, ValueError) as e:
        raise _BadPart(job, f"metadata without its shapes: {e}") from e
    if info.get("units") != job.units.get(layer):
        raise _BadPart(job, f"holds units {info.get('units')}, expected {job.units.get(layer)}")
    want: dict[str, tuple[int, ...]] = {"pooled_max": (rows, u), "pooled_mean": (rows, u)}
    k = min(job.k, rows)
    for mode in job.topk_by:
        want[f"topk.{mode}.indices"] = (u, k)
        want[f"topk.{mode}.values"] = (u, k)
        want[f"topk.{mode}.maps"] = (u, k, h, w)
    for name, shape in want.items():
        if name not in arrays or arrays[name].shape != shape:
            got = arrays[name].shape if name in arrays else "nothing"
            raise _BadPart(job, f"{name}: expected shape {shape}, got {got}")
    for mode in job.topk_by:
        idx = arrays[f"topk.{mode}.indices"]
        if idx.size and (int(idx.min()) < job.start or int(idx.max()) >= job.stop):
            raise _BadPart(job, f"top-k indices outside [{job.start}, {job.stop})")
    if maps is not None and maps.shape != (rows, u, h, w):
        raise _BadPart(job, f"maps: expected shape {(rows, u, h, w)}, got {maps.shape}")
    return info, arrays, maps


def _merge_parts(cache: Cache, jobs: Sequence[RangeJob], directory: Path, seconds: float) -> None:
    """Write the one-pass entry's files into ``directory`` from the parts of ``jobs``."""
    import numpy as np
    import torch

    first = jobs[0]
    names = list(first.layers)
    n_images = first.n_images
    specs = first.specs()
    modes = _topk_modes(first.topk_by)
    k_eff = min(first.k, n_images)
    paths = [cache.entry_dir(PART_STAGE, job.key) for job in jobs]
    for i, layer in enumerate(names):
        infos, arrays, part_maps = [], [], []
        for job, path in zip(jobs, paths, strict=True):
            info, arr, mp = _read_part_layer(path, job, i, layer)
            infos.append(info)
            arrays.append(arr)
            part_maps.append(mp)
        u = int(infos[0]["num_units"])
        layer_units = int(infos[0]["layer_units"])
        h, w = (int(v) for v in infos[0]["map_shape"])
        for job, info in zip(jobs, infos, strict=True):
            shape = (int(info["num_units"]), int(info["layer_units"]), list(info["map_shape"]))
            if shape != (u, layer_units, [h, w]):
                raise _BadPart(job, f"layer '{layer}' has another shape than the other parts")
        chosen = first.units.get(layer)
        m = tail_size(n_images * h * w, specs)
        thresholds: dict[str, np.ndarray] = {}
        if m:
            kept: np.ndarray | None = None
            for job, arr in zip(jobs, arrays, strict=True):
                part_tail = arr.get("tail")
                width = min(m, (job.stop - job.start) * h * w)
                if part_tail is None or part_tail.shape != (u, width):
                    got = None if part_tail is None else part_tail.shape
                    raise _BadPart(job, f"tail: expected shape {(u, width)}, got {got}")
                cat = part_tail if kept is None else np.concatenate([kept, part_tail], axis=1)
                if cat.shape[1] > m:
                    cat = np.partition(cat, cat.shape[1] - m, axis=1)[:, cat.shape[1] - m :]
                kept = np.array(cat, dtype=np.float32, order="C")
            assert kept is not None and kept.shape == (u, m)
            thresholds = tail_quantiles(kept, n_images * h * w, specs)
        topk = {}
        for mode in modes:
            values = torch.from_numpy(np.concatenate([a[f"topk.{mode}.values"] for a in arrays], 1))
            order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k_eff]
            pick = order.numpy()
            cand_idx = np.concatenate([a[f"topk.{mode}.indices"] for a in arrays], axis=1)
            cand_maps = np.concatenate([a[f"topk.{mode}.maps"] for a in arrays], axis=1)
            topk[mode] = TopK(
                indices=np.take_along_axis(cand_idx, pick, axis=1),
                values=np.take_along_axis(values.numpy(), pick, axis=1),
                maps=np.ascontiguousarray(cand_maps[np.arange(u)[:, None], pick]),
            )
        maps = None
        if first.store_maps:
            maps = np.lib.format.open_memmap(
                directory / f"{i}.maps.npy",
                mode="w+",
                dtype=np.float32,
                shape=(n_images, u, h, w),
            )
            for job, mp in zip(jobs, part_maps, strict=True):
                maps[job.start : job.stop] = mp
            maps.flush()
        dtypes = {info["dtype"] for info in infos}
        if len(dtypes) != 1:
            raise _BadPart(jobs[0], f"layer '{layer}' has output dtypes {sorted(dtypes)}")
        meta = {
            "n_images": n_images,
            "exact_quantiles": True,
            "quantile_exact_bytes": TAIL_BYTES_PER_VALUE * u * m,
            "k": k_eff,
            "topk_by": list(modes),
            "maps": bool(first.store_maps),
            "device": str(torch.device(first.device)),
            "seconds": round(seconds, 3),
            "dtype": dtypes.pop(),
            "map_shape": [h, w],
        }
        LayerEvidence(
            layer=layer,
            num_units=layer_units,
            map_shape=(h, w),
            topk=topk,
            thresholds=thresholds,
            pooled_max=np.concatenate([a["pooled_max"] for a in arrays]),
            pooled_mean=np.concatenate([a["pooled_mean"] for a in arrays]),
            extras={},
            meta=meta,
            maps=maps,
            units=None if chosen is None else np.asarray(chosen, dtype=np.int64),
        ).save(directory, str(i))
        del arrays, part_maps, maps


def _record_in_ranges(
    cache: Cache,
    jobs: Sequence[RangeJob],
    target: Target,
    probe: ProbeSet,
    directory: Path,
    map_jobs: MapJobs | None,
    progress: bool,
) -> None:
    """Run ``jobs`` (``map_jobs``, or here one after the other), then merge their parts into
    ``directory``. A part missing, corrupt or not fitting its job is recomputed here, once."""
    start = time.perf_counter()

    def here(job: RangeJob) -> str:
        return str(_run_part(job, cache, target, probe, progress=progress))

    if map_jobs is None:
        results = [here(job) for job in jobs]
    else:
        results = list(map_jobs(run_range_job, jobs))
    if len(results) != len(jobs):
        raise UsageError(
            f"Expected map_jobs to return one entry path per job ({len(jobs)}), "
            f"got {len(results)}; it must run every job."
        )
    redone: set[str] = set()
    for job in jobs:
        if cache.load(PART_STAGE, job.key) is None:  # checks every file's size and hash
            log.warning(
                "Part [%d, %d) of record %s is missing or corrupt after its job ran; "
                "recomputing it here.",
                job.start,
                job.stop,
                job.record_key[:12],
            )
            here(job)
            redone.add(job.key)
    seconds = time.perf_counter() - start
    while True:
        try:
            _merge_parts(cache, jobs, directory, seconds)
            return
        except _BadPart as e:
            bad = e.job
            if bad.key in redone:
                raise CacheError(
                    f"Part [{bad.start}, {bad.stop}) of record {bad.record_key[:12]}, "
                    f"recomputed here, still does not fit its job: {e}. This is a bug in "
                    "bench.record."
                ) from e
            log.warning(
                "Part [%d, %d) of record %s does not fit its job (%s); recomputing it here.",
                bad.start,
                bad.stop,
                bad.record_key[:12],
                e,
            )
            cache.remove(PART_STAGE, bad.key)
            here(bad)
            redone.add(bad.key)
            for f in list(directory.iterdir()):
                f.unlink()


# --- caching ----------------------------------------------------------------------------------


def cached_run_evidence(
    cache: Cache, target: Target, probe: ProbeSet, layers: Sequence[str], config: Mapping[str, Any]
) -> Evidence | None:
    """A run's recorded evidence, read back from ``cache`` with the recording settings its
    resolved ``config`` (``run.json``) names; ``None`` when that entry is no longer cached
    (nothing is recomputed). With ``config["record"]["units"]`` (layer -> ranges, ``bench run
    --units``), only those layers were recorded, for those units."""
    rec = config.get("record") or {}
    kwargs: dict[str, Any] = {
        "k": int(rec.get("k", 15)),
        "topk_by": tuple(rec.get("topk_by") or ("max",)),
        "quantiles": tuple(QuantileSpec.parse(q) for q in rec.get("quantiles") or ()),
        "device": str(config.get("device") or "cpu"),
        "store_maps": bool(rec.get("maps", False)),
    }
    # With --units, the recorded layers and their units (whole layers listed in full).
    units = {layer: parse_unit_ranges(spec) for layer, spec in (rec.get("units") or {}).items()}
    names = [layer for layer in layers if not units or layer in units]
    chosen = normalize_units(units, layer_sizes(target, names)) if units else {}
    keys = [cache.key(STAGE, record_key_parts(target, probe, names, **kwargs, units=chosen))]
    if chosen:  # a whole-layer entry serves a subset (record_cached)
        keys.append(cache.key(STAGE, record_key_parts(target, probe, names, **kwargs)))
    if not any(cache.exists(STAGE, key) for key in keys):
        return None
    return record_cached(cache, target, probe, names, **kwargs, units=units or None)


def record_key_parts(
    target: Target,
    probe: ProbeSet,
    layers: Sequence[str] | None,
    *,
    k: int,
    topk_by: Sequence[str],
    quantiles: Sequence[QuantileSpec | str],
    device: str,
    store_maps: bool = False,
    units: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Everything that changes :func:`record`'s output, as JSON (the cache key's inputs).

    ``units``: the layers recorded for a subset of their units, as :func:`normalize_units` gives
    them (keyed as ranges, ``{"layer4": "0-31"}``; absent for whole layers, so whole records keep
    their keys). The target's identity carries its weights hash and preprocessing; batch size,
    workers and progress do not change the output. The memory budget changes it only when it
    forces the approximation; :func:`record_cached` handles that case.
    """
    import torch

    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    parts = {
        "stage_version": RECORD_VERSION,
        "target": target.identity(),
        "probe": probe.identity(),
        "fixed_geometry": bool(probe.fixed_geometry),
        "layers": target.resolve_layers(list(layers) if layers else None),
        "k": int(k),
        "topk_by": sorted(_topk_modes(topk_by)),
        "quantiles": sorted(s.key for s in _quantile_specs(quantiles)),
        "device": torch.device(device).type,
        "torch": major_minor,
    }
    if store_maps:  # only then, so records without maps keep their keys
        parts["maps"] = True
    if units:
        parts["units"] = _units_key(units)
    return parts


def record_cached(
    cache: Cache,
    target: Target,
    probe: ProbeSet,
    layers: Sequence[str] | None = None,
    *,
    k: int = 15,
    topk_by: Sequence[str] = ("max",),
    quantiles: Sequence[QuantileSpec | str] = DEFAULT_QUANTILES,
    batch_size: int = 64,
    device: str = "cpu",
    memory_budget: int = 2**30,
    accumulators: Mapping[str, Sequence[AccumulatorFactory]] | None = None,
    accumulator_identity: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool = False,
    store_maps: bool = False,
    images_per_job: int | None = None,
    map_jobs: MapJobs | None = None,
    source: WorkerSource | None = None,
    units: UnitSelection | None = None,
) -> Evidence:
    """:func:`record` through the cache (stage ``"record"``): a hit runs no forward pass.

    ``units`` (layer -> unit indices) records only those units of those layers (see
    :func:`record`); the selection is part of the key. An intact cached entry of the same
    recording with whole layers serves a subset request as it is (its evidence holds more units;
    readers map units to rows with ``LayerEvidence.rows``), unless its quantiles were
    approximated.

    The entry holds ``<i>.safetensors`` + ``<i>.json`` for the i-th layer (and ``<i>.maps.npy``
    with ``store_maps``, loaded back as a read-only memory map). With
    ``accumulators``, the record is cached only when ``accumulator_identity`` (JSON that changes
    whenever their output may) is given; it joins the key. A cached entry whose quantiles were
    approximated is recomputed when the current ``memory_budget`` allows exact ones.

    With ``images_per_job`` (or ``map_jobs``, then ``DEFAULT_IMAGES_PER_JOB``), a missing entry is
    recorded in image ranges instead (:func:`plan_range_jobs`; ``source`` says how workers load
    the target and probe by name): ``map_jobs(run_range_job, jobs)`` runs the jobs anywhere
    (default: here, one after the other, with the loaded target and probe), each writing its
    partial statistics as a cache entry of stage :data:`PART_STAGE`; their merge, stored under
    the one-pass key, equals the one pass array for array, ties and thresholds included (same
    batches, same activations). Quantiles are then always exact: a part keeps the largest
    ``min(m, rows * h * w)`` values per unit and ``memory_budget`` does not apply. The parts are
    deleted once the merged entry is stored. Accumulators have no merge and are refused.
    """
    names = target.resolve_layers(list(layers) if layers else None)
    ranged = images_per_job is not None or map_jobs is not None
    if ranged and accumulators:
        raise ConfigError(
            "Expected no accumulators with images_per_job or map_jobs, got accumulators for "
            f"{sorted(accumulators)}: their partial results have no merge. Record them in one "
            "pass (images_per_job=None)."
        )
    merged_jobs: list[RangeJob] = []
    chosen = normalize_units(units, layer_sizes(target, names)) if units else {}

    def run(maps_dir: Path | None = None) -> dict[str, LayerEvidence]:
        return record(
            target,
            probe,
            names,
            k=k,
            topk_by=topk_by,
            quantiles=quantiles,
            batch_size=batch_size,
            device=device,
            memory_budget=memory_budget,
            accumulators=accumulators,
            num_workers=num_workers,
            progress=progress,
            store_maps=store_maps,
            maps_dir=maps_dir,
            units=chosen,
        )

    if accumulators and accumulator_identity is None:
        log.info("Accumulators without an identity: recording without the cache.")
        return Evidence(target=target, probe=probe, layers=run(), key="")
    parts = record_key_parts(
        target,
        probe,
        names,
        k=k,
        topk_by=topk_by,
        quantiles=quantiles,
        device=device,
        store_maps=store_maps,
        units=chosen,
    )
    if accumulators:
        parts["accumulators"] = accumulator_identity
    key = cache.key(STAGE, parts)
    if chosen:
        whole = _cached_whole(cache, parts, names)
        if whole is not None:
            return Evidence(target=target, probe=probe, layers=whole[1], key=whole[0], cached=True)

    def write(directory: Any) -> None:
        if ranged:
            jobs = plan_range_jobs(
                cache,
                target,
                probe,
                names,
                images_per_job=images_per_job or DEFAULT_IMAGES_PER_JOB,
                k=k,
                topk_by=topk_by,
                quantiles=quantiles,
                batch_size=batch_size,
                device=device,
                store_maps=store_maps,
                num_workers=num_workers,
                source=source,
                units=chosen,
            )
            _record_in_ranges(cache, jobs, target, probe, Path(directory), map_jobs, progress)
            merged_jobs.extend(jobs)
            return
        recorded = run(Path(directory))
        for i, name in enumerate(names):
            recorded[name].save(directory, str(i))

    path, hit = cache.get_or_create(STAGE, parts, write)
    evidence = _load_entry(path, names)
    if hit:
        approx = [ev.layer for ev in evidence.values() if not ev.meta.get("exact_quantiles", True)]
        exact_bytes = sum(int(ev.meta.get("quantile_exact_bytes", 0)) for ev in evidence.values())
        if approx and exact_bytes <= memory_budget:
            log.info(
                "Cached record %s has approximate quantiles for %s; memory_budget now allows "
                "exact ones, recomputing.",
                key[:12],
                ", ".join(approx),
            )
            cache.remove(STAGE, key)
            path, hit = cache.get_or_create(STAGE, parts, write)
            evidence = _load_entry(path, names)
    for job in merged_jobs:  # merged and stored: the parts have served
        cache.remove(PART_STAGE, job.key)
    log.info("record %s: cache %s", key[:12], "hit" if hit else "miss")
    return Evidence(target=target, probe=probe, layers=evidence, key=key, cached=hit)


def _cached_whole(
    cache: Cache, parts: Mapping[str, Any], names: Sequence[str]
) -> tuple[str, dict[str, LayerEvidence]] | None:
    """``(key, evidence)`` of the intact cached entry recording whole layers with the same
    ``parts`` otherwise (exact quantiles only), or ``None``."""
    whole_parts = {k: v for k, v in parts.items() if k != "units"}
    key = cache.key(STAGE, whole_parts)
    path = cache.load(STAGE, key)
    if path is None:
        return None
    try:
        evidence = _load_entry(path, names)
    except CacheError as e:
        log.info("Whole-layer record %s is unusable (%s); recording the units.", key[:12], e)
        return None
    if not all(ev.meta.get("exact_quantiles", True) for ev in evidence.values()):
        return None
    subset = cache.key(STAGE, parts)
    log.info("record %s: served by the whole-layer entry %s", subset[:12], key[:12])
    return key, evidence


def _load_entry(path: Any, names: Sequence[str]) -> dict[str, LayerEvidence]:
    from bench.errors import CacheError

    out = {}
    for i, name in enumerate(names):
        ev = LayerEvidence.load(path, str(i))
        if ev.layer != name:
            raise CacheError(
                f"Cache entry {path} holds layer '{ev.layer}' at position {i}, "
                f"expected '{name}'. Delete the entry and rerun."
            )
        out[name] = ev
    return out
