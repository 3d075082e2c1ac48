"""The Ray executor: its overhead per shard against the local one, and its scaling over nodes.

Both parts run real ``bench run`` describe stages (:func:`bench.runner.run`) of a method whose
cost per unit is simulated (:class:`perf.simulated_method.SleepPerUnit`: a fixed sleep per unit,
one unit per shard) on ``synth.resnet``: the runner plans the shards, the executor runs them
(:func:`bench.shards.run_shard` on a worker) and the driver merges their partial files into
``units.jsonl``, whose records are checked (every unit once, on the expected number of nodes).
Ray runs as a cluster on this machine (``ray.cluster_utils.Cluster``: a head without CPUs, where
the driver sits, and worker nodes of ``--cpus-per-node`` CPUs each), with token authentication
off and a private ``RAY_TMPDIR``; the repository root reaches the workers through Ray's
``runtime_env``. Every run uses its own seed, so the describe cache serves none of them.

1. **Overhead per shard**: ``--overhead-units`` one-unit shards of a method that does nothing,
   in the driver's process (``--executor local``) and on one Ray node (``--executor ray``), one
   shard at a time on both sides. Seconds per shard are the describe stage's seconds (planning,
   executing, merging) over the shards, median of ``--rounds`` runs after a warm-up run (worker
   processes started, torch imported). On Ray the driver merges one shard's records while the
   worker runs the next, which hides part of either side's cost. Target: Ray adds under 0.05 s
   per shard, under 0.2 % of a shard of Describe-and-Dissect (32 units at the 4 s per unit of
   ``perf/dnd_perf.py``'s target) and under 5 % of a one-second shard.
2. **Scaling**: ``--scaling-units`` units of ``--seconds-per-unit`` each on 1, 2, ...
   ``--nodes`` nodes (nodes are added between runs; each new node's worker is warmed first).
   Speed-up is the one-node time over the n-node time; the ideal is n (linear). Target: a
   parallel efficiency (speed-up / n) of at least 0.8.

Prints ``MISSED`` for a missed target (exit 0: a report, not a test); exits 1 when a run's
records are wrong (a unit missing or twice). Skips with a message when Ray is not installed.

    python -m perf ray                       # defaults, about a minute
    python -m perf.ray_perf --overhead-units 160 --scaling-units 48 --seconds-per-unit 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_TARGET_S = 0.05
EFFICIENCY_TARGET = 0.8
TARGET = "synth.resnet"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


@contextlib.contextmanager
def ray_environment(tmp: Path) -> Iterator[None]:
    """Token authentication off (Ray 2.60 turns it on) and a private ``RAY_TMPDIR``, for the
    duration; the previous values come back after."""
    wanted = {"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(tmp)}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runtime_env() -> dict[str, Any]:
    """What Ray workers need to import ``perf.simulated_method``: the repository root on their
    ``PYTHONPATH``, ahead of whatever the driver's environment had."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


@dataclass
class Bench:
    """The runs of one benchmark: a scratch directory, one cache, distinct seeds."""

    root: Path
    sizes: dict[str, int]
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def capacity(self) -> int:
        return sum(self.sizes.values())

    def units(self, n: int) -> tuple[str, tuple[str, ...]]:
        """A ``--units`` spec of the first ``n`` units of the target, and their layers."""
        if not 0 < n <= self.capacity:
            raise SystemExit(f"error: expected 1 to {self.capacity} units ({TARGET}), got {n}")
        items, layers = [], []
        for layer, size in self.sizes.items():
            take = min(n, size)
            if take <= 0:
                break
            items.append(f"{layer}:0-{take - 1}")
            layers.append(layer)
            n -= take
        return ",".join(items), tuple(layers)

    def run(self, executor: str, n_units: int, seconds_per_unit: float) -> Result:
        """One describe stage through ``executor``; its seconds and where its units ran."""
        from bench.runner import RunConfig, run
        from perf.simulated_method import NAME

        spec, layers = self.units(n_units)
        seed = next(self.seeds)
        out = self.root / f"run-{executor}-{seed}"
        result = run(
            RunConfig(
                methods=(NAME,),
                target=TARGET,
                layers=layers,
                units=spec,
                probe="synthetic",
                probe_options={"n_images": "8"},
                device="cpu",
                seed=seed,
                method_config={NAME: {"seconds_per_unit": seconds_per_unit}},
                out=str(out),
                cache_dir=str(self.root / "cache"),
                executor=executor,
            )
        )
        lines = (out / NAME / "units.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        units = [f"{r['unit']['layer']}:{r['unit']['index']}" for r in records]
        summary = result.methods[0]
        return Result(
            seconds=summary.seconds,
            units=len(units),
            distinct=len(set(units)),
            ok=sum(r.get("status", "ok") == "ok" for r in records),
            nodes=len({r["extras"]["node"] for r in records}),
            computed=summary.computed,
        )


@dataclass(frozen=True)
class Result:
    seconds: float
    units: int  # records in units.jsonl
    distinct: int  # distinct units among them
    ok: int
    nodes: int  # distinct nodes that described them
    computed: int  # units the method computed (not served by the describe cache)

    def check(self, n_units: int, what: str) -> None:
        if not (self.units == self.distinct == self.ok == self.computed == n_units):
            raise RecordsError(
                f"{what}: expected {n_units} units computed and recorded once each, got "
                f"{self.units} records of {self.distinct} units ({self.ok} ok, "
                f"{self.computed} computed)"
            )


class RecordsError(RuntimeError):
    """A run's records are wrong: the benchmark stops (exit 1)."""


def _warm_worker() -> str:
    """Run on a node: import what a shard needs (a new worker's first cost), say where."""
    import ray
    import torch  # noqa: F401

    import bench.shards  # noqa: F401
    import bench.targets  # noqa: F401
    import perf.simulated_method  # noqa: F401

    return str(ray.get_runtime_context().get_node_id())


def warm(cpus: int) -> int:
    """Start ``cpus`` warm workers on every alive node with CPUs; the number of such nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(_warm_worker)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
    refs = [
        task.options(
            num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote()
        for node in nodes
        for _ in range(cpus)
    ]
    return len(set(ray.get(refs)))


# --- the two measurements -----------------------------------------------------------------------


def overhead(bench: Bench, n_units: int, rounds: int) -> tuple[float, float]:
    """Median seconds per shard with the local (in-process) and the Ray executor."""
    per_shard: dict[str, float] = {}
    for executor in ("local", "ray"):
        bench.run(executor, min(2, n_units), 0.0)  # warm-up
        times = []
        for _ in range(rounds):
            r = bench.run(executor, n_units, 0.0)
            r.check(n_units, f"overhead run with --executor {executor}")
            times.append(r.seconds / n_units)
        per_shard[executor] = statistics.median(times)
    return per_shard["local"], per_shard["ray"]


def scaling(
    bench: Bench, cluster: Any, n_units: int, seconds_per_unit: float, nodes: int, cpus: int
) -> list[tuple[int, float, int]]:
    """``(nodes, seconds, nodes used)`` of the same run on 1, 2, ... ``nodes`` nodes."""
    out = []
    for n in range(1, nodes + 1):
        while len(cluster.worker_nodes) < n:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        answered = warm(cpus)
        if answered != n:
            print(f"  (warm-up reached {answered} of {n} nodes)", flush=True)
        r = bench.run("ray", n_units, seconds_per_unit)
        r.check(n_units, f"scaling run on {n} node(s)")
        out.append((n, r.seconds, r.nodes))
        print(f"  {n} node(s): {r.seconds:.2f} s, units described on {r.nodes} node(s)", flush=True)
    return out


def _target_sizes(root: Path) -> dict[str, int]:
    from bench.cache import Cache
    from bench.record import layer_sizes
    from bench.targets import load_target

    target = load_target(TARGET, cache=Cache(root / "cache"))
    return layer_sizes(target, target.resolve_layers(None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.ray_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--overhead-units", type=int, default=60, help="one-unit shards")
    parser.add_argument("--rounds", type=int, default=3, help="overhead runs per executor")
    parser.add_argument("--scaling-units", type=int, default=18, help="units of the scaling run")
    parser.add_argument("--seconds-per-unit", type=float, default=0.2)
    parser.add_argument("--nodes", type=int, default=3, help="largest cluster (worker nodes)")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args([] if argv is None else argv)  # python -m perf passes none
    if args.nodes < 1 or args.cpus_per_node < 1 or args.rounds < 1:
        parser.error("--nodes, --cpus-per-node and --rounds must be >= 1")
    if importlib.util.find_spec("ray") is None:
        print("skipped: Ray is not installed (pip install 'neuron-bench[ray]')")
        return 0
    import ray

    if ray.is_initialized():
        print("error: this process is already connected to Ray; run the benchmark on its own")
        return 2
    from ray.cluster_utils import Cluster

    from perf.simulated_method import registered

    # A short path: Ray's socket names live under RAY_TMPDIR (at most 107 characters).
    with (
        tempfile.TemporaryDirectory(prefix="rayperf-", dir="/tmp", ignore_cleanup_errors=True) as t,
        ray_environment(Path(t) / "ray"),
        registered(),
    ):
        bench = Bench(root=Path(t) / "bench", sizes=_target_sizes(Path(t) / "bench"))
        t0 = time.perf_counter()
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
        )
        try:
            cluster.add_node(num_cpus=args.cpus_per_node)
            ray.init(
                address=cluster.address,
                runtime_env=runtime_env(),
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            print(
                f"Ray {ray.__version__}: a head without CPUs (the driver) and nodes of "
                f"{args.cpus_per_node} CPU(s), started in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            rc = _report(bench, cluster, args)
        except RecordsError as e:
            print(f"error: {e}")
            rc = 1
        finally:
            ray.shutdown()
            cluster.shutdown()
    return rc


def _report(bench: Bench, cluster: Any, args: argparse.Namespace) -> int:
    n = args.overhead_units
    local, on_ray = overhead(bench, n, args.rounds)
    extra = on_ray - local
    print(
        f"overhead: {n} one-unit shards of a method that does nothing, one at a time, "
        f"median of {args.rounds} runs"
    )
    print(f"  --executor local (in-process): {local * 1000:.1f} ms per shard")
    print(f"  --executor ray (1 node):       {on_ray * 1000:.1f} ms per shard")
    print(
        f"  ray / local = {on_ray / local:.2f}x; ray - local = {extra * 1000:+.1f} ms per shard "
        f"(target < {OVERHEAD_TARGET_S * 1000:.0f} ms): {_mark(extra < OVERHEAD_TARGET_S)}",
        flush=True,
    )
    s, u = args.seconds_per_unit, args.scaling_units
    print(
        f"scaling: {u} one-unit shards of {s} s each over nodes of {args.cpus_per_node} CPU(s) "
        f"(the sleeps alone: {u * s / args.cpus_per_node:.2f} s on one node)",
        flush=True,
    )
    rows = scaling(bench, cluster, u, s, args.nodes, args.cpus_per_node)
    one = rows[0][1]
    for nodes, seconds, _ in rows[1:]:
        speedup = one / seconds
        efficiency = speedup / nodes
        print(
            f"  {nodes} nodes / 1 node: speed-up {speedup:.2f}x (ideal {nodes}x), efficiency "
            f"{efficiency:.2f} (target >= {EFFICIENCY_TARGET}): "
            f"{_mark(efficiency >= EFFICIENCY_TARGET)}"
        )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
