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
            )
        except KeyError as e:
            raise CacheError(f"Evidence file {directory / stem} lacks array {e}.") from e


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
