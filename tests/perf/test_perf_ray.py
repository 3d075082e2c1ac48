"""The executor benchmark (perf/ray_perf.py) at tiny sizes: its simulated method goes through the
real runner and its record check catches a wrong run; the whole script runs on a local Ray cluster
of one node (two in the slow run). Outputs only, not timings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf import ray_perf
from perf.simulated_method import registered

ROOT = Path(ray_perf.__file__).resolve().parent.parent


@pytest.fixture()
def bench(tmp_path: Path) -> ray_perf.Bench:
    return ray_perf.Bench(root=tmp_path, sizes={"layer1": 3, "layer2": 4})


def test_unit_specs_take_the_first_units_in_layer_order(bench: ray_perf.Bench) -> None:
    assert bench.units(2) == ("layer1:0-1", ("layer1",))
    assert bench.units(5) == ("layer1:0-2,layer2:0-1", ("layer1", "layer2"))
    with pytest.raises(SystemExit, match="1 to 7 units"):
        bench.units(8)


def test_the_simulated_method_runs_through_the_local_runner(tmp_path: Path) -> None:
    bench = ray_perf.Bench(root=tmp_path, sizes=ray_perf._target_sizes(tmp_path))
    with registered():
        first = bench.run("local", 3, 0.0)
        second = bench.run("local", 3, 0.0)
    first.check(3, "first")
    second.check(3, "second")  # a new seed: computed again, not served by the describe cache
    assert first.nodes == 1


def test_the_record_check_catches_a_duplicate_or_a_cached_unit() -> None:
    ray_perf.Result(seconds=1, units=3, distinct=3, ok=3, nodes=1, computed=3).check(3, "fine")
    with pytest.raises(ray_perf.RecordsError, match="3 records of 2 units"):
        ray_perf.Result(seconds=1, units=3, distinct=2, ok=3, nodes=1, computed=3).check(3, "dup")
    with pytest.raises(ray_perf.RecordsError, match="1 computed"):
        ray_perf.Result(seconds=1, units=3, distinct=3, ok=3, nodes=1, computed=1).check(3, "hit")


@pytest.mark.parametrize("nodes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_the_benchmark_runs_on_a_local_cluster(nodes: int) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'neuron-bench[ray]')")
    # In a process of its own: the benchmark starts and shuts down its own Ray cluster, which
    # must not meet a Ray session of this test process.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    args = ["--overhead-units", "2", "--rounds", "1", "--scaling-units", "2"]
    args += ["--seconds-per-unit", "0.05", "--nodes", str(nodes)]
    proc = subprocess.run(
        [sys.executable, "-m", "perf.ray_perf", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "--executor ray (1 node)" in out and "ms per shard" in out
    for n in range(1, nodes + 1):
        assert f"{n} node(s):" in out and f"units described on {n} node(s)" in out
    assert ("2 nodes / 1 node: speed-up" in out) == (nodes == 2)
