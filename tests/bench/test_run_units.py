"""``bench run --units``: the recording keeps only the units asked for, and the methods label them
exactly as a run over every unit does (NetDissect, CompExp, INVERT on the synthetic world)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bench.api import RunConfig, run
from bench.cache import Cache
from bench.record import STAGE
from bench.schema import read_descriptions

METHODS = ("netdissect", "compexp", "invert")
# The session's cache (tests/conftest.py): the synthetic export and the target are shared with
# other tests; a probe size no other test uses keeps the recordings this test's own.
PROBE = {"max_images": "23"}
LAYERS = ("layer2", "layer3")  # 32 and 64 units
UNITS = "layer2:5,layer2:9,layer3:14"
# A short formula search: the same in every run, and the full run labels 96 units.
SHORT = {"compexp": {"beam_size": 2, "max_length": 2, "search_limit": 8}}


def _labels(out: Path, method: str) -> dict[str, tuple[str, float | None]]:
    return {
        str(d.unit): (d.label, d.score) for d in read_descriptions(out / method / "units.jsonl")
    }


def _config(out: Path, methods: tuple[str, ...] = METHODS, **kw) -> RunConfig:
    return RunConfig(methods=methods, layers=LAYERS, probe_options=PROBE, out=str(out), **kw)


def _record_entry(out: Path) -> Path:
    state = json.loads((out / "run.json").read_text())
    return Cache().entry_dir(STAGE, state["stages"]["record"]["key"])


def test_units_run_records_only_them_and_labels_them_as_the_full_run(tmp_path: Path) -> None:
    # First, so that no whole-layer recording is there to serve it: the units alone.
    result = run(_config(tmp_path / "sub", units=UNITS, method_config=SHORT))
    assert result.exit_code == 0 and not result.record_cached
    state = json.loads((tmp_path / "sub" / "run.json").read_text())
    assert state["config"]["record"]["units"] == {"layer2": "5,9", "layer3": "14"}
    entry = _record_entry(tmp_path / "sub")  # it holds those units' maps only
    maps = {p.name: np.load(p, mmap_mode="r").shape for p in entry.glob("*.maps.npy")}
    assert sorted(maps.values()) == sorted([(23, 2, 16, 16), (23, 1, 8, 8)]), maps

    full = run(_config(tmp_path / "full", method_config=SHORT))  # every unit, recorded anew
    assert full.exit_code == 0 and not full.record_cached
    assert _record_entry(tmp_path / "full") != entry  # the selection is in the key
    wanted = {"layer2:5", "layer2:9", "layer3:14"}
    for method in METHODS:
        whole, sub = _labels(tmp_path / "full", method), _labels(tmp_path / "sub", method)
        assert set(sub) == wanted and set(whole) > wanted
        assert sub == {u: whole[u] for u in wanted}, method
        assert any(label for label, _ in sub.values())  # labels, not empty strings

    # Without the subset's entry, the whole layers' entry serves it (row i is unit i there).
    os.replace(entry, tmp_path / "moved-away")
    again = run(_config(tmp_path / "served", units=UNITS, method_config=SHORT))
    assert again.record_cached and not entry.exists()
    assert _record_entry(tmp_path / "served") == _record_entry(tmp_path / "full")
    for method in METHODS:
        assert _labels(tmp_path / "served", method) == _labels(tmp_path / "sub", method)

    # A method that reads no evidence records nothing, --units or not.
    before = {e.key for e in Cache().entries(STAGE)}
    assert run(_config(tmp_path / "depictions", ("depictions",), units="0-3")).exit_code == 0
    state = json.loads((tmp_path / "depictions" / "run.json").read_text())
    assert state["stages"]["record"]["skipped"] == "no method reads evidence"
    assert {e.key for e in Cache().entries(STAGE)} == before


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
