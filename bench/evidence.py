"""Evidence: what methods read, produced once per (target, layers, probe, preprocessing).

Shapes (U units, N probe images, k exemplars, h x w the layer's map):

- ``TopK.indices``  int64   [U, k]   probe indices of each unit's top images, best first
- ``TopK.values``   float32 [U, k]   their pooled activation (spatial max or mean)
- ``TopK.maps``     float32 [U, k, h, w]  the unit's activation map at each of them
- ``thresholds[q]`` float32 [U]      per-unit quantile of the activations over every spatial
                                     position of every probe image (``QuantileSpec.key``)
- ``pooled_max``, ``pooled_mean`` float32 [N, U]
- ``extras``: named arrays from extra accumulators (IoU tallies, ...)
- ``maps``          float32 [N, U, h, w]  every activation map of the probe set, only when the
                                     record was asked for them (NetDissect, CompExp); a read-only
                                     memory map of ``<stem>.maps.npy`` when loaded from the cache

**Rows are not unit indices** when a layer was recorded for a subset of its units (``bench run
--units``): ``LayerEvidence.units`` (int64 [U], ascending) then names the layer's unit of each row
of every per-unit axis above (``U`` is the number of recorded units; ``num_units`` stays the
layer's size). Readers map unit indices to rows with :meth:`LayerEvidence.rows` (or ``row``),
which also refuses a unit that was not recorded; with ``units=None`` row ``i`` is unit ``i``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from bench.errors import CacheError, UnknownNameError

if TYPE_CHECKING:
    import numpy as np

    from bench.probes.base import ProbeSet
    from bench.targets import Target

TOPK_MODES = ("max", "mean")
QuantileMethod = Literal["linear", "hazen", "lower", "higher", "nearest"]
QUANTILE_METHODS: tuple[QuantileMethod, ...] = ("linear", "hazen", "lower", "higher", "nearest")


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class QuantileSpec:
    """A per-unit quantile ``q`` under a numpy interpolation ``method``.

    NetDissect-Lite's threshold is ``q = 994/999`` with 'hazen' (reference/methods.md 2.3);
    MILAN's exemplar masks use ``q = 0.99`` (1.2).
    """

    q: float
    method: QuantileMethod = "linear"

    def __post_init__(self) -> None:
        if not 0.0 < self.q < 1.0:
            raise ValueError(f"Expected 0 < q < 1, got {self.q}")
        if self.method not in QUANTILE_METHODS:
            raise ValueError(f"Expected method in {QUANTILE_METHODS}, got {self.method!r}")

    @property
    def key(self) -> str:
        return f"{self.q:.10g}/{self.method}"

    @classmethod
    def parse(cls, key: str) -> QuantileSpec:
        q, _, method = key.partition("/")
        # __post_init__ rejects a method outside QUANTILE_METHODS
        return cls(q=float(q), method=cast(QuantileMethod, method or "linear"))


NETDISSECT_QUANTILE = QuantileSpec(q=994 / 999, method="hazen")
MILAN_QUANTILE = QuantileSpec(q=0.99, method="linear")


@dataclass(frozen=True, kw_only=True, slots=True)
class TopK:
    indices: np.ndarray
    values: np.ndarray
    maps: np.ndarray


@dataclass(kw_only=True)
class LayerEvidence:
    layer: str
    num_units: int
    map_shape: tuple[int, int]
    topk: dict[str, TopK]
    thresholds: dict[str, np.ndarray]
    pooled_max: np.ndarray
    pooled_mean: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: Every activation map ``[N, U, h, w]`` (evidence kind "maps"), or ``None``.
    maps: np.ndarray | None = None
    #: The layer's unit index of each row of the per-unit arrays (int64, ascending) when only
    #: those units were recorded; ``None``: every one of ``num_units`` units, row ``i`` is unit
    #: ``i``. Index the arrays through :meth:`rows`, never with a unit index directly.
    units: np.ndarray | None = None

    @property
    def whole(self) -> bool:
        """Whether every unit of the layer was recorded (row ``i`` is unit ``i``)."""
        return self.units is None

    @property
    def recorded_units(self) -> np.ndarray:
        """int64 [U]: the layer's unit index of each row (``arange(num_units)`` when whole)."""
        import numpy as np

        if self.units is None:
            return np.arange(self.num_units, dtype=np.int64)
        return np.asarray(self.units, dtype=np.int64)

    def rows(self, indices: Any) -> np.ndarray:
        """int64 rows of the per-unit arrays holding the layer's units ``indices`` (any int
        sequence). Raises :class:`~bench.errors.RequirementError` for a unit outside the layer
        or not recorded."""
        import numpy as np

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        outside = idx[(idx < 0) | (idx >= self.num_units)]
        if outside.size:
            from bench.errors import RequirementError

            raise RequirementError(
                f"Layer '{self.layer}' has {self.num_units} units (0-{self.num_units - 1}); "
                f"got unit {int(outside[0])}."
            )
        if self.units is None:
            return idx
        held = np.asarray(self.units, dtype=np.int64)
        pos = np.searchsorted(held, idx)
        found = (pos < held.size) & (held[np.minimum(pos, held.size - 1)] == idx)
        if not found.all():
            from bench.errors import RequirementError

            missing = idx[~found]
            raise RequirementError(
                f"Unit {int(missing[0])} of layer '{self.layer}' was not recorded (the evidence "
                f"holds units {format_unit_ranges(held)}); record it (bench run --units) or "
                "the whole layer."
            )
        return pos.astype(np.int64)

    def row(self, index: int) -> int:
        """The row of the per-unit arrays holding unit ``index`` (see :meth:`rows`)."""
        return int(self.rows([index])[0])

    def require_maps(self) -> np.ndarray:
        if self.maps is None:
            from bench.errors import RequirementError

            raise RequirementError(
                f"Layer '{self.layer}' was recorded without its full activation maps; "
                "record with store_maps=True (methods that need them declare the evidence "
                "kind 'maps', and bench.api.run asks for it)."
            )
        return self.maps

    def top(self, by: str = "max") -> TopK:
        if by not in self.topk:
            raise UnknownNameError(f"top-k mode recorded for layer '{self.layer}'", by, self.topk)
        return self.topk[by]

    def threshold(self, spec: QuantileSpec) -> np.ndarray:
        if spec.key not in self.thresholds:
            raise UnknownNameError(
                f"quantile recorded for layer '{self.layer}'", spec.key, self.thresholds
            )
        return self.thresholds[spec.key]

    # --- persistence (safetensors + JSON; no pickles) -----------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "pooled_max": self.pooled_max,
            "pooled_mean": self.pooled_mean,
        }
        for mode, t in self.topk.items():
            out[f"topk.{mode}.indices"] = t.indices
            out[f"topk.{mode}.values"] = t.values
            out[f"topk.{mode}.maps"] = t.maps
        for key, thr in self.thresholds.items():
            out[f"threshold.{key}"] = thr
        for key, arr in self.extras.items():
            out[f"extra.{key}"] = arr
        if self.units is not None:
            out["units"] = self.units
        return out

    def save(self, directory: Path, stem: str) -> None:
        from bench.cache import save_arrays
        from bench.schema import write_json

        save_arrays(directory / f"{stem}.safetensors", self.arrays())
        if self.maps is not None:
            import numpy as np

            target = directory / f"{stem}.maps.npy"
            in_place = (
                isinstance(self.maps, np.memmap)
                and self.maps.filename is not None
                and Path(self.maps.filename) == target
            )
            if not in_place:
                np.save(target, np.ascontiguousarray(self.maps, dtype=np.float32))
        write_json(
            directory / f"{stem}.json",
            {
                "layer": self.layer,
                "num_units": self.num_units,
                "map_shape": list(self.map_shape),
                "topk_modes": sorted(self.topk),
                "thresholds": sorted(self.thresholds),
                "extras": sorted(self.extras),
                "maps": self.maps is not None,
                "units": self.units is not None,
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, directory: Path, stem: str) -> LayerEvidence:
        from bench.cache import load_arrays

        try:
            info = json.loads((directory / f"{stem}.json").read_text())
        except (OSError, ValueError) as e:
            raise CacheError(
                f"Could not read evidence metadata {directory / stem}.json: {e}"
            ) from e
        arrays = load_arrays(directory / f"{stem}.safetensors")
        maps = None
        if info.get("maps"):
            import numpy as np

            try:
                maps = np.load(directory / f"{stem}.maps.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CacheError(
                    f"Could not read activation maps {directory / stem}.maps.npy: {e}"
                ) from e
        try:
            topk = {
                m: TopK(
                    indices=arrays[f"topk.{m}.indices"],
                    values=arrays[f"topk.{m}.values"],
                    maps=arrays[f"topk.{m}.maps"],
                )
                for m in info["topk_modes"]
            }
            return cls(
                layer=info["layer"],
                num_units=info["num_units"],
                map_shape=tuple(info["map_shape"]),
                topk=topk,
                thresholds={k: arrays[f"threshold.{k}"] for k in info["thresholds"]},
                pooled_max=arrays["pooled_max"],
                pooled_mean=arrays["pooled_mean"],
                extras={k: arrays[f"extra.{k}"] for k in info["extras"]},
                meta=info.get("meta", {}),
                maps=maps,
                units=arrays["units"] if info.get("units") else None,
            )
        except KeyError as e:
            raise CacheError(f"Evidence file {directory / stem} lacks array {e}.") from e


def format_unit_ranges(indices: Any) -> str:
    """Unit indices as inclusive ranges, ``"0-31,40"`` (sorted, duplicates dropped; ``""`` for
    none): the form of ``--units`` and of a record's cache key."""
    values = sorted({int(i) for i in indices})
    parts = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:  # type: ignore[operator]
            prev = v
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def parse_unit_ranges(spec: str) -> list[int]:
    """The sorted unit indices of ``format_unit_ranges``' form (``"0-31,40"``)."""
    out: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        lo, _, hi = item.partition("-")
        try:
            start, stop = int(lo), int(hi) if hi else int(lo)
        except ValueError as e:
            raise ValueError(f"Expected unit ranges like '0-31,40', got {spec!r}") from e
        if start < 0 or stop < start:
            raise ValueError(f"Expected unit ranges like '0-31,40', got {spec!r}")
        out.update(range(start, stop + 1))
    return sorted(out)


@dataclass(kw_only=True)
class Evidence:
    """Recorded evidence for several layers of one target on one probe set."""

    target: Target | None
    probe: ProbeSet
    layers: dict[str, LayerEvidence]
    key: str = ""
    #: True when the evidence was served from the cache rather than recorded now.
    cached: bool = False

    def layer(self, name: str) -> LayerEvidence:
        if name not in self.layers:
            raise UnknownNameError("recorded layer", name, self.layers)
        return self.layers[name]
