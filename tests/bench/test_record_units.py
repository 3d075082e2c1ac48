"""Recording a subset of a layer's units (``units=``, ``bench run --units``): each recorded row is
the whole layer's row of that unit, bit for bit; the selection is in the cache key; a whole-layer
entry serves a subset; readers map unit indices to rows (``LayerEvidence.rows``)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cache import Cache
from bench.errors import ConfigError, RequirementError
from bench.evidence import LayerEvidence, format_unit_ranges, parse_unit_ranges
from bench.record import (
    normalize_units,
    record,
    record_cached,
    record_key_parts,
)
from tests.bench.test_record import QUANTILES, ArrayProbe, make_images, tiny_target
from tests.bench.test_record_ranges import assert_same_entry

LAYERS = ["relu1", "conv2", "fc"]  # 4, 3 and 2 units
# relu1: two units apart (a gather of channels); conv2: two consecutive ones (a channel view);
# fc is not named, so it is recorded whole.
UNITS = {"relu1": [3, 1], "conv2": [1, 0]}
KWARGS = dict(k=15, topk_by=("max", "mean"), quantiles=QUANTILES, batch_size=7, store_maps=True)


@pytest.fixture
def probe() -> ArrayProbe:
    return ArrayProbe(make_images(30))


def assert_rows_of(sub: LayerEvidence, whole: LayerEvidence, units: list[int]) -> None:
    """Every per-unit array of ``sub`` is ``whole``'s rows of ``units``, exactly."""
    assert sub.num_units == whole.num_units and sub.map_shape == whole.map_shape
    assert sub.units is not None and sub.units.tolist() == units
    assert sub.rows(units).tolist() == list(range(len(units)))
    idx = np.asarray(units)
    for mode, top in whole.topk.items():
        for name in ("indices", "values", "maps"):
            got, want = getattr(sub.topk[mode], name), getattr(top, name)[idx]
            assert got.dtype == want.dtype and np.array_equal(got, want), (mode, name)
    assert sorted(sub.thresholds) == sorted(whole.thresholds)
    for key, thr in whole.thresholds.items():
        assert np.array_equal(sub.thresholds[key], thr[idx]), key
    assert np.array_equal(sub.pooled_max, whole.pooled_max[:, idx])
    assert np.array_equal(sub.pooled_mean, whole.pooled_mean[:, idx])
    assert sub.maps is not None and whole.maps is not None
    assert np.array_equal(sub.maps, whole.maps[:, idx])
    assert sub.meta["exact_quantiles"] and whole.meta["exact_quantiles"]


def test_subset_recording_equals_the_rows_of_the_whole_recording(probe):
    whole = record(tiny_target(), probe, LAYERS, **KWARGS)
    sub = record(tiny_target(), probe, LAYERS, units=UNITS, **KWARGS)
    for layer, units in UNITS.items():
        assert_rows_of(sub[layer], whole[layer], sorted(units))
    fc_sub, fc_whole = sub["fc"], whole["fc"]
    assert fc_sub.units is None and fc_sub.whole
    for key, arr in fc_whole.arrays().items():
        assert np.array_equal(fc_sub.arrays()[key], arr), key
    # Only the recorded units' maps are kept.
    assert sub["relu1"].maps.shape[1] == 2 and whole["relu1"].maps.shape[1] == 4


def test_subset_entry_reads_back_and_ranges_merge_into_it(tmp_path, probe):
    """Through the cache: the entry reads back with its units; recorded in image ranges, the
    merged entry is the one-pass entry (same key, same arrays)."""
    one = record_cached(
        Cache(tmp_path / "one"), tiny_target(), probe, LAYERS, units=UNITS, **KWARGS
    )
    assert not one.cached
    again = record_cached(
        Cache(tmp_path / "one"), tiny_target(), probe, LAYERS, units=UNITS, **KWARGS
    )
    assert again.cached and again.key == one.key
    whole = record(tiny_target(), probe, LAYERS, **KWARGS)
    for layer, units in UNITS.items():
        assert_rows_of(again.layer(layer), whole[layer], sorted(units))
    ranged = record_cached(
        Cache(tmp_path / "ranged"),
        tiny_target(),
        probe,
        LAYERS,
        units=UNITS,
        images_per_job=10,
        **KWARGS,
    )
    assert_same_entry(one, ranged)
    assert ranged.layer("relu1").units.tolist() == [1, 3]


def test_the_cache_key_says_which_units(probe):
    target = tiny_target()
    kw = dict(k=15, topk_by=("max",), quantiles=QUANTILES, device="cpu", store_maps=True)
    sizes = {"relu1": 4, "conv2": 3, "fc": 2}
    whole = record_key_parts(target, probe, LAYERS, **kw)
    a = record_key_parts(target, probe, LAYERS, **kw, units=normalize_units(UNITS, sizes))
    b = record_key_parts(target, probe, LAYERS, **kw, units=normalize_units({"relu1": [1]}, sizes))
    assert a["units"] == {"conv2": "0-1", "relu1": "1,3"}
    assert len({str(whole), str(a), str(b)}) == 3
    # Every unit of a layer is the whole layer: the same key as without a selection.
    every = normalize_units({"relu1": range(4), "conv2": [2, 0, 1, 1]}, sizes)
    assert every == {} and record_key_parts(target, probe, LAYERS, **kw, units=every) == whole


def test_a_whole_layer_entry_serves_a_subset(tmp_path, probe):
    cache = Cache(tmp_path)
    target = tiny_target()
    whole = record_cached(cache, target, probe, LAYERS, **KWARGS)
    calls = target.model.calls
    sub = record_cached(cache, target, probe, LAYERS, units=UNITS, **KWARGS)
    assert sub.cached and sub.key == whole.key
    assert target.model.calls <= calls + 1  # the layers' sizes on the meta device; no image
    le = sub.layer("relu1")
    assert le.whole and le.rows([3, 1]).tolist() == [3, 1]
    # Without the whole entry, the subset is recorded under its own key.
    other = record_cached(Cache(tmp_path / "fresh"), target, probe, LAYERS, units=UNITS, **KWARGS)
    assert not other.cached and other.key != whole.key
    assert target.model.calls > calls + 1


def test_rows_refuse_units_that_were_not_recorded(probe):
    sub = record(tiny_target(), probe, ["relu1"], units={"relu1": [1, 3]}, k=3)["relu1"]
    assert sub.row(3) == 1 and sub.rows([1, 3, 1]).tolist() == [0, 1, 0]
    assert sub.recorded_units.tolist() == [1, 3] and not sub.whole
    with pytest.raises(RequirementError, match=r"Unit 2 of layer 'relu1' was not recorded.*1,3"):
        sub.rows([1, 2])
    with pytest.raises(RequirementError, match="has 4 units"):
        sub.row(4)


def test_bad_selections_are_refused(probe):
    sizes = {"relu1": 4}
    with pytest.raises(ConfigError, match="has 4 units"):
        normalize_units({"relu1": [4]}, sizes)
    with pytest.raises(ConfigError, match="at least one unit"):
        normalize_units({"relu1": []}, sizes)
    with pytest.raises(ConfigError, match="only for recorded layers"):
        normalize_units({"fc": [0]}, sizes)
    with pytest.raises(ConfigError, match="has 4 units"):
        record(tiny_target(), probe, ["relu1"], units={"relu1": [0, 9]}, k=3)


def test_unit_ranges_round_trip():
    assert format_unit_ranges([5, 0, 1, 2, 9, 10, 2]) == "0-2,5,9-10"
    assert format_unit_ranges([]) == ""
    assert parse_unit_ranges("0-2,5,9-10") == [0, 1, 2, 5, 9, 10]
    with pytest.raises(ValueError, match="unit ranges"):
        parse_unit_ranges("3-1")
