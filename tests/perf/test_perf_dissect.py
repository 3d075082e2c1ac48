"""The dissection benchmarks' baselines (perf/netdissect_perf.py, perf/compexp_perf.py) agree
with ``bench.dissect`` and ``methods.compexp.search`` at a tiny size. Outputs only, not timings."""

from __future__ import annotations

import numpy as np
import pytest

from perf import compexp_perf, netdissect_perf
from perf.netdissect_perf import LAYERS, counted_layers, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> netdissect_perf.World:
    return make_world(tmp_path_factory.mktemp("perf-dissect"), 24)


@pytest.mark.parametrize("layer", LAYERS)
def test_netdissect_baseline_equals_ours(world, layer: str) -> None:
    base = netdissect_perf.baseline_netdissect(world, layer)
    ours = netdissect_perf.ours_netdissect(world, layer)
    assert ours[:, 1:].max() > 0  # something to compare
    assert netdissect_perf.max_difference(world, base, ours) <= netdissect_perf.IOU_TOLERANCE


@pytest.mark.parametrize("layer", LAYERS)
def test_compexp_baseline_equals_ours(world, layer: str) -> None:
    result = compexp_perf.compare(world, layer, 2, repeats=1)
    assert len(result["checks"]) == 2
    for check in result["checks"]:
        assert compexp_perf.check_ok(check), check
        assert check["baseline_iou"] > 0


def test_counted_layers_set_semantics() -> None:
    pixels = np.array([[1, 2, 3, 0], [1, 5, 0, 3], [7, 2, 7, 4]])
    out = counted_layers(pixels, [4])
    # Repeats of an earlier layer's label at the same pixel and whole-image labels are dropped.
    assert out.tolist() == [[1, 2, 3, 0], [0, 5, 0, 3], [7, 0, 7, 0]]


@pytest.mark.parametrize("module", [netdissect_perf, compexp_perf])
def test_benchmark_main_runs(module, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--images", "16", "--repeats", "1"]
    if module is compexp_perf:
        args += ["--units", "1"]
    assert module.main(args) == 0
    out = capsys.readouterr().out
    assert "equality:" in out and "ok" in out.splitlines()[-1]


def test_numba_start_up_loads_the_table_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up step, timed apart from our table build, leaves the table build's compiled
    shard reduction loaded (compiled if it never was), so a first run after a code change does
    not time numba's compilation as part of the cold table build."""
    from bench import dissect as D

    monkeypatch.setattr(D, "_SHARD_KERNEL", None)
    netdissect_perf.numba_start_up()
    assert D._SHARD_KERNEL is not None and len(D._SHARD_KERNEL.signatures) >= 1
