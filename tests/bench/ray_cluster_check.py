"""The driver of the multi-node test (test_ray_executor.py, ``slow``), run in a fresh interpreter
so that its connection to a ``ray.cluster_utils.Cluster`` never meets the session's local Ray:
``python -m tests.bench.ray_cluster_check WORKDIR`` prints one JSON report for the test to check.

The cluster on this machine: a head (1 CPU, no GPU), a node declaring a fake GPU and the 24 GiB
GPU-memory resource (:func:`bench.method.gpu_memory_resource`), and a CPU node (1 CPU each).

* GPU work: the executor's ``map`` on ``cuda`` (how recording jobs of a GPU run go), and Ray
  tasks with the options the executor gives a shard of a GPU method on a GPU run
  (:meth:`RayExecutor.options`). A real GPU shard cannot run here (its worker moves the target to
  CUDA), so the shards themselves are not run on the fake GPU.
* A node removed mid-run: ``bench.api.run`` with the executor on the cluster; shards that land on
  the CPU node hold there until the node is removed; the run completes elsewhere.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any


def gpu_shard_options(device: str) -> dict[str, Any]:
    """The executor's Ray options for a shard of the GPU test method on ``device``."""
    from bench.executors import RayExecutor

    return RayExecutor.options(gpu_shard(device))


def gpu_shard(device: str) -> Any:
    """A shard of the GPU test method (24 GiB class) on ``device`` (it names no real files)."""
    from bench.method import config_to_json
    from bench.shards import Shard
    from tests.bench.ray_plugin import GpuGate

    return Shard(
        method=GpuGate.name,
        method_class="tests.bench.ray_plugin:GpuGate",
        method_config={},
        method_identity=GpuGate().identity(),
        target="synth.resnet",
        weights=None,
        target_identity={},
        probe="synthetic",
        probe_root=None,
        probe_options={},
        probe_identity={},
        layers=("layer1",),
        record=None,
        record_key="",
        components={},
        component_options={},
        device=device,
        seed=0,
        cache_root="/nonexistent",
        run_dir="/nonexistent",
        units=("layer1:0",),
        resources=config_to_json(GpuGate.requires.resources),
    )


def main(workdir: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from bench.api import RunConfig, run
    from bench.executors import RayExecutor
    from bench.method import gpu_memory_resource
    from tests.bench.ray_plugin import Gate, node_of

    report: dict[str, Any] = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        gpu = cluster.add_node(num_cpus=1, num_gpus=1, resources={gpu_memory_resource(24): 1})
        cpu = cluster.add_node(num_cpus=1, num_gpus=0)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        report["nodes"] = {
            "head": cluster.head_node.node_id,
            "gpu": gpu.node_id,
            "cpu": cpu.node_id,
        }
        with RayExecutor(cluster.address) as ex:
            report["map_gpu_nodes"] = ex.map(node_of, list(range(6)), device="cuda")
            opts = gpu_shard_options("cuda")
            report["gpu_shard_options"] = opts
            report["cpu_run_options"] = gpu_shard_options("cpu")
            probe = ray.remote(node_of)
            report["gpu_shard_nodes"] = ray.get([probe.options(**opts).remote(i) for i in range(6)])
            report["gpu_actors"] = ex._actor_count(10, opts)

            # Work that no node offers (an 80 GiB GPU): refused at once; with a resource wait,
            # taken once a node that offers it joins during the wait (then removed again).
            from bench.errors import UsageError

            big = [
                ("A shard of an 80 GiB method", {"cpus": 1, "gpus": 1, "gpu_memory": 80}, "cuda")
            ]
            try:
                ex.check(big)
                report["refused"] = None
            except UsageError as e:
                report["refused"] = str(e)
            waited: dict[str, Any] = {}

            def wait_for_it() -> None:  # Ray adds nodes from the main thread only
                try:
                    ex.check(big)
                    waited["ok"] = True
                except UsageError as e:
                    waited["error"] = str(e)

            looked = threading.Event()
            nodes = ex._nodes

            def looking() -> list[dict[str, float]]:
                out = nodes()
                looked.set()
                return out

            ex._nodes = looking  # type: ignore[method-assign]
            ex.resource_wait = 240.0
            waiter = threading.Thread(target=wait_for_it, daemon=True)
            waiter.start()
            looked.wait(timeout=120)  # the node joins after the waiter found none
            joined = cluster.add_node(
                num_cpus=1, num_gpus=1, resources={gpu_memory_resource(80): 1}
            )
            waiter.join(timeout=300)
            report["waited"] = waited
            ex.resource_wait = 0.0
            ex._nodes = nodes  # type: ignore[method-assign]
            cluster.remove_node(joined)

            # A node removed while it holds shards.
            control = workdir / "control"
            control.mkdir(parents=True)
            removed: list[float] = []

            def remove_when_held() -> None:
                deadline = time.monotonic() + 300
                while not any(control.glob("holding.*")):
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.05)
                cluster.remove_node(cpu)
                removed.append(time.monotonic())

            remover = threading.Thread(target=remove_when_held, daemon=True)
            remover.start()
            t0 = time.monotonic()
            result = run(
                RunConfig(
                    methods=(Gate.name,),
                    # 0.5 s per shard keeps the head busy, so that shards spill to the other
                    # nodes (Ray's default policy fills the driver's node first).
                    method_config={
                        Gate.name: {
                            "control": str(control),
                            "hold_node": cpu.node_id,
                            "delay": 0.5,
                        }
                    },
                    layers=("layer1",),
                    units="0-11",
                    probe_options={"n_images": "20"},
                    executor="ray",
                    address=cluster.address,
                    out=str(workdir / "run"),
                    cache_dir=str(workdir / "cache"),
                )
            )
            remover.join(timeout=5)
            report["removed_after_s"] = removed[0] - t0 if removed else None
            report["held"] = sorted(p.name for p in control.glob("holding.*"))
            (summary,) = result.methods
            report["summary"] = {"ok": summary.ok, "error": summary.error}
            report["run_dir"] = str(result.run_dir)
            report["computed"] = (control / "computed.log").read_text().splitlines()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
