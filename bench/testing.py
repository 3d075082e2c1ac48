"""A conformance suite for methods, shipped so that authors of new methods can run it on theirs.

    from bench.testing import check_method
    check_method(MyMethod, tmp_path)

It builds a tiny world (a hand-weighted target whose units detect red, green and blue, and a probe
of coloured squares with per-pixel labels), records evidence, and checks the contract: one valid
description per unit, the same output on a second run with the same seed, a cache hit on the
second run, and a cache miss when a config field changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.probes.base import Concept, ProbeSet, Segmentation
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from bench.cache import Cache
    from bench.evidence import Evidence
    from bench.method import Method
    from bench.targets import Target

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 50, 220),
    "grey": (128, 128, 128),
}
CONCEPTS = (
    Concept(number=1, name="red", raw_name="red-c", category="color", categories=("color",)),
    Concept(number=2, name="green", raw_name="green-c", category="color", categories=("color",)),
    Concept(number=3, name="blue", raw_name="blue-c", category="color", categories=("color",)),
    Concept(number=4, name="grey", raw_name="grey-c", category="color", categories=("color",)),
    Concept(number=5, name="square", raw_name="square", category="object", categories=("object",)),
    Concept(number=6, name="plain", raw_name="plain-s", category="scene", categories=("scene",)),
)


class TinyProbe(ProbeSet):
    """``n`` images of ``size`` px: a grey background and one coloured square, fully labelled.

    Image ``i`` has a square of colour ``("red", "green", "blue")[i % 3]`` whose position and size
    vary with ``i``; segmentations: ``color`` and ``object`` per pixel, ``scene`` per image.
    """

    name = "tiny"
    fixed_geometry = True
    has_segmentations = True

    def __init__(self, n: int = 24, size: int = 32):
        import numpy as np

        self.n, self.size = n, size
        rng = np.random.default_rng(1234)
        self._boxes = []
        for _ in range(n):
            side = int(rng.integers(size // 4, size // 2 + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            self._boxes.append((y, x, side))

    def __len__(self) -> int:
        return self.n

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "size": self.size, "version": 1}

    def _colour(self, i: int) -> str:
        return ("red", "green", "blue")[i % 3]

    def array(self, i: int) -> np.ndarray:
        import numpy as np

        img = np.empty((self.size, self.size, 3), np.uint8)
        img[:] = COLOURS["grey"]
        y, x, s = self._boxes[i]
        img[y : y + s, x : x + s] = COLOURS[self._colour(i)]
        return img

    def load_image(self, i: int) -> Image.Image:
        from PIL import Image

        return Image.fromarray(self.array(i))

    @property
    def seg_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def categories(self) -> list[str]:
        return ["color", "object", "scene"]

    def concepts(self) -> list[Concept]:
        return list(CONCEPTS)

    def segmentation(self, i: int) -> Segmentation:
        import numpy as np

        colour = np.full((1, self.size, self.size), 4, np.int32)
        obj = np.zeros((1, self.size, self.size), np.int32)
        y, x, s = self._boxes[i]
        colour[0, y : y + s, x : x + s] = {"red": 1, "green": 2, "blue": 3}[self._colour(i)]
        obj[0, y : y + s, x : x + s] = 5
        return Segmentation(pixel={"color": colour, "object": obj}, image={"scene": (6,)})


def tiny_target() -> Target:
    """A hand-weighted two-layer net. ``conv`` units 0, 1, 2 detect red, green, blue; unit 3
    responds to brightness. ``fc`` has three class units reading the pooled colour detectors."""
    import torch
    from torch import nn

    from bench.targets import Preprocessing, Target, TargetSpec

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, kernel_size=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu(self.conv(x))
            return self.fc(self.pool(h).flatten(1))

    net = TinyNet()
    with torch.no_grad():
        # Inputs are normalised with mean .5, std .5, so a channel at full intensity reads ~1.
        net.conv.weight.copy_(
            torch.tensor(
                [[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0], [1.0, 1.0, 1.0]]
            )[:, :, None, None]
        )
        assert net.conv.bias is not None and net.fc.bias is not None
        net.conv.bias.copy_(torch.tensor([-0.5, -0.5, -0.5, 0.0]))
        net.fc.weight.copy_(torch.eye(3, 4))
        net.fc.bias.zero_()
    spec = TargetSpec(
        name="tiny",
        family="testing",
        arch="tinynet",
        weights=None,
        preprocessing=Preprocessing(
            input_size=32, resize=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
        ),
        layers=("conv", "fc"),
        final_layer="fc",
        num_classes=3,
        description="hand-weighted colour detectors (tests)",
    )
    return Target(
        spec=spec,
        model=net.eval(),
        weights_sha256="hand-weighted-v1",
        class_names=("red", "green", "blue"),
    )


def tiny_evidence(cache: Cache, *, n: int = 24, **record_kwargs: Any) -> Evidence:
    """Record the tiny target on the tiny probe (cached in ``cache``)."""
    from bench.record import record_cached

    return record_cached(cache, tiny_target(), TinyProbe(n=n), None, **record_kwargs)


def changed_config(config: Any) -> Any | None:
    """A copy of ``config`` with one field changed, or ``None`` if it has no changeable field."""
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, bool):
            new: Any = not v
        elif isinstance(v, int):
            new = v + 1
        elif isinstance(v, float):
            new = v * 0.5 if v else 1.0
        elif isinstance(v, str):
            new = v + "x"
        else:
            continue
        try:
            return dataclasses.replace(config, **{f.name: new})
        except (TypeError, ValueError):
            continue
    return None


def check_method(
    cls: type[Method],
    tmp_path: str | Path,
    *,
    config: Any = None,
    components: dict[str, Any] | None = None,
    evidence: Evidence | None = None,
) -> list[Description]:
    """Run the conformance checks on ``cls``; raise AssertionError on the first violation.

    Returns the descriptions of the first run so callers can check quality on top.
    """
    from bench.api import describe_cached
    from bench.cache import Cache
    from bench.method import MethodContext

    tmp = Path(tmp_path)
    cache = Cache(tmp / "cache")
    ev = (
        evidence
        if evidence is not None
        else tiny_evidence(
            cache,
            store_maps="maps" in cls.requires.evidence,
            topk_by=tuple(sorted({"max", *cls.requires.topk_by})),
            k=max(15, cls.requires.k),
        )
    )
    if components is None and cls.requires.components:
        from bench.components import build_components, default_backends

        components = build_components(
            default_backends(sorted(cls.requires.components), synthetic=True)
        )
    units = [
        UnitRef(layer=l, index=int(i)) for l, le in ev.layers.items() for i in le.recorded_units
    ]

    def ctx_for(c: Cache) -> MethodContext:
        return MethodContext(
            cache=c, target=ev.target, seed=0, components=dict(components or {}), workdir=tmp
        )

    method = cls(config)
    ctx = ctx_for(cache)
    method.fit(ctx)
    first, hit = describe_cached(method, units, ev, ctx)
    assert not hit, f"{cls.name}: the first run was a cache hit on an empty cache"
    assert len(first) == len(units), f"{cls.name}: {len(first)} descriptions for {len(units)} units"
    for u, d in zip(units, first, strict=True):
        assert isinstance(d, Description), f"{cls.name}: got {type(d).__name__}, not a Description"
        assert d.unit == u, f"{cls.name}: description for {d.unit} where {u} was expected"
        assert d.ok, f"{cls.name}: unit {u} failed: {d.error}"
        assert d.label.strip(), f"{cls.name}: empty label for {u}"
        from bench.schema import dumps

        dumps(d.to_json())  # extras must be JSON

    again = cls(config)
    again.fit(ctx)
    second, hit = describe_cached(again, units, ev, ctx)
    assert hit, f"{cls.name}: the second identical run was not served from the cache"
    assert [d.to_json() for d in second] == [d.to_json() for d in first], (
        f"{cls.name}: the cached descriptions differ from the computed ones"
    )

    fresh_cache = Cache(tmp / "cache-fresh")
    fresh = cls(config)
    fresh_ctx = ctx_for(fresh_cache)
    fresh.fit(fresh_ctx)
    recomputed = fresh.describe(units, ev, fresh_ctx)
    assert [(d.label, d.score) for d in recomputed] == [(d.label, d.score) for d in first], (
        f"{cls.name}: a second run with the same seed gave different labels or scores"
    )

    changed = changed_config(method.config)
    if changed is not None:
        other = cls(changed)
        other.fit(ctx)
        _, hit = describe_cached(other, units, ev, ctx)
        assert not hit, f"{cls.name}: changing the config ({changed}) still hit the cache"
    return first


#: Annotations of :func:`write_tiny_milannotations`: unit colour -> three descriptions.
TINY_MILANNOTATIONS = {
    "red": (
        "red squares on a grey background",
        "red squares on grey",
        "small red squares on a grey background",
    ),
    "blue": (
        "blue squares on a grey background",
        "blue squares on grey",
        "small blue squares on a grey background",
    ),
}


def write_tiny_milannotations(root: str | Path, *, n_units: int = 40, k: int = 15) -> str:
    """A MILANNOTATIONS key in the exact released format under ``root`` (key
    ``alexnet/places365``, directory ``alexnet-places365``: ``annotations.csv`` and layer
    ``conv1`` with ``ids.csv``, ``masks.npy`` and ``images.npy``): units alternately detect red
    and blue squares on grey, annotated accordingly. As a :class:`TinyProbe` unit's top images
    do, about half of each unit's exemplars show its colour (masked), the rest another colour
    with an empty mask. Returns the key."""
    import csv

    import numpy as np

    root = Path(root)
    layer_dir = root / "alexnet-places365" / "conv1"
    layer_dir.mkdir(parents=True, exist_ok=True)
    size = 32
    images = np.full((n_units, k, 3, size, size), 128, dtype=np.uint8)
    masks = np.zeros((n_units, k, 1, size, size), dtype=np.uint8)
    rows = []
    rng = np.random.default_rng(0)
    for u in range(n_units):
        colour = "red" if u % 2 == 0 else "blue"
        for j in range(k):
            side = int(rng.integers(size // 4, size // 2 + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            shown = colour if j < (k + 1) // 2 else ("green", "blue", "red")[u % 2 + j % 2]
            rgb = np.array(COLOURS[shown], dtype=np.uint8)[:, None, None]
            images[u, j, :, y : y + side, x : x + side] = rgb
            masks[u, j, 0, y : y + side, x : x + side] = shown == colour
        rows += [("conv1", u, text) for text in TINY_MILANNOTATIONS[colour]]
    np.save(layer_dir / "images.npy", images)
    np.save(layer_dir / "masks.npy", masks)
    with open(layer_dir / "ids.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([[u * k + j for j in range(k)] for u in range(n_units)])
    with open(root / "alexnet-places365" / "annotations.csv", "w", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer", "unit", "summary"])
        w.writerows(rows)
    return "alexnet/places365"
