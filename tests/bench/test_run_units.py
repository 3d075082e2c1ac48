"""``bench run --units``: the recording keeps only the units asked for, and the methods label them
exactly as a run over every unit does (NetDissect, CompExp, INVERT on the synthetic world)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.api import RunConfig, run
from bench.cache import Cache
from bench.record import STAGE
from bench.schema import read_descriptions

METHODS = ("netdissect", "compexp", "invert")
PROBE = {"max_images": "24"}
LAYERS = ("layer2", "layer3")  # 32 and 64 units
UNITS = "layer2:5,layer2:9,layer3:14"
# A short formula search: the same in every run, and the full run labels 96 units.
SHORT = {"compexp": {"beam_size": 2, "max_length": 2, "search_limit": 8}}


def _labels(out: Path, method: str) -> dict[str, tuple[str, float | None]]:
    return {
        str(d.unit): (d.label, d.score) for d in read_descriptions(out / method / "units.jsonl")
    }


def _config(tmp_path: Path, name: str, cache: str, **kw) -> RunConfig:
    return RunConfig(
        methods=METHODS,
        layers=LAYERS,
        probe_options=PROBE,
        out=str(tmp_path / name),
        cache_dir=cache,
        method_config=SHORT,
        **kw,
    )


def test_units_run_records_only_them_and_labels_them_as_the_full_run(tmp_path: Path) -> None:
    full_cache = str(tmp_path / "full-cache")
    assert run(_config(tmp_path, "full", full_cache)).exit_code == 0
    sub_cache = str(tmp_path / "sub-cache")
    result = run(_config(tmp_path, "sub", sub_cache, units=UNITS))
    assert result.exit_code == 0 and not result.record_cached
    wanted = {"layer2:5", "layer2:9", "layer3:14"}
    for method in METHODS:
        full, sub = _labels(tmp_path / "full", method), _labels(tmp_path / "sub", method)
        assert set(sub) == wanted and set(full) > wanted
        assert sub == {u: full[u] for u in wanted}, method
        assert any(label for label, _ in sub.values())  # labels, not empty strings

    # run.json says what was recorded; the entry holds those units' maps only.
    state = json.loads((tmp_path / "sub" / "run.json").read_text())
    assert state["config"]["record"]["units"] == {"layer2": "5,9", "layer3": "14"}
    (entry,) = Cache(sub_cache).entries(STAGE)
    maps = {p.name: np.load(p, mmap_mode="r").shape for p in entry.path.glob("*.maps.npy")}
    assert sorted(maps.values()) == sorted([(24, 2, 16, 16), (24, 1, 8, 8)]), maps

    # A cache holding the whole layers serves the subset without recording again.
    again = run(_config(tmp_path, "served", full_cache, units=UNITS))
    assert again.record_cached
    for method in METHODS:
        assert _labels(tmp_path / "served", method) == _labels(tmp_path / "sub", method)


def test_a_method_without_evidence_records_nothing(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    config = RunConfig(
        methods=("depictions",),
        layers=("layer2",),
        units="0-3",
        probe_options=PROBE,
        out=str(tmp_path / "run"),
        cache_dir=cache,
    )
    assert run(config).exit_code == 0
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["stages"]["record"]["skipped"] == "no method reads evidence"
    assert Cache(cache).entries(STAGE) == []


def test_a_method_that_reads_the_whole_layer_gets_it() -> None:
    """CLIP-Dissect's prior over the layer makes a unit's label depend on every unit of it:
    with it in the run, --units records whole layers (only those with units to describe)."""
    from bench.runner import _record_units, build_method, method_classes, parse_units

    sizes = {"layer2": 32, "layer3": 64}
    units = parse_units("layer2:5,layer2:7-8", sizes)

    def methods(*names: str, **config: dict) -> list:
        return [build_method(c, config.get(c.name)) for c in method_classes(list(names))]

    assert _record_units(None, units, sizes, methods("netdissect")) is None
    assert _record_units("x", units, sizes, methods("netdissect")) == {"layer2": "5,7-8"}
    whole = methods("netdissect", "clip-dissect")
    assert _record_units("x", units, sizes, whole) == {"layer2": "0-31"}
    described = methods("netdissect", "clip-dissect", **{"clip-dissect": {"prior": "described"}})
    assert _record_units("x", units, sizes, described) == {"layer2": "5,7-8"}
