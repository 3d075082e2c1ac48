"""Which device a shard's work runs on, and what the Ray executor reserves for it: a GPU exactly
for work that runs torch on the run's device (bench.shards.work_device, bench.executors
.ray_options), checked without a GPU and without Ray.

* NetDissect and CompExp run their dissection tally on ``ctx.device`` (seen by a spy on the
  tally): on a GPU run their shards reserve a GPU.
* Invert and the depictions baseline never use ``ctx.device`` (their labels on the ``meta``
  device, where no tensor has values, equal those on the CPU): they reserve no GPU, and a worker
  runs them on the CPU, its target loaded there, even on a GPU run.
* A recording range job runs the target on the run's device: it reserves a GPU on a GPU run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench.dissect
from bench.cache import Cache
from bench.executors import RANGE_JOB_RESOURCES, ray_options
from bench.method import config_to_json, gpu_memory_resource
from bench.registry import METHODS
from bench.schema import UnitRef
from bench.shards import Shard, class_path, forget_state, work_device
from bench.testing import tiny_evidence
from methods.base import MethodContext


def resources(name: str) -> dict[str, Any]:
    return config_to_json(METHODS.get(name).requires.resources)


@pytest.mark.parametrize("name", ["netdissect", "compexp", "compexp-analysis"])
def test_dissection_methods_tally_on_the_device_and_reserve_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The tally runs on ``ctx.device`` (a spy records the device and computes on the CPU), so
    a shard on ``cuda`` works on ``cuda`` and its Ray options reserve one GPU; on the CPU none."""
    seen: list[str] = []
    real = bench.dissect.tally_units

    def spy(*args: Any, device: str = "cpu", **kwargs: Any) -> Any:
        seen.append(device)
        return real(*args, device="cpu", **kwargs)

    monkeypatch.setattr(bench.dissect, "tally_units", spy)
    cache = Cache(tmp_path)
    ev = tiny_evidence(cache, store_maps=True)
    units = [UnitRef(layer="conv", index=i) for i in range(4)]
    out = METHODS.get(name)().describe(units, ev, MethodContext(cache=cache, device="cuda"))
    assert all(d.ok for d in out), [d.error for d in out]
    assert seen == ["cuda"]
    res = resources(name)
    assert work_device(res, "cuda") == "cuda"
    assert ray_options(res, "cuda") == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ray_options(res, "cpu") == {"num_cpus": 1.0}
    assert work_device(res, "cpu") == "cpu"


@pytest.mark.parametrize("name", ["invert", "depictions"])
def test_cpu_methods_never_use_the_device_and_reserve_no_gpu(tmp_path: Path, name: str) -> None:
    """Labels and scores on the ``meta`` device equal those on the CPU: the method's work never
    puts a tensor on ``ctx.device``. Its shards on a GPU run work on the CPU and reserve no GPU."""
    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    units = [UnitRef(layer="conv", index=i) for i in range(4)]

    def labels(device: str) -> list[tuple[str | None, float | None]]:
        out = METHODS.get(name)().describe(units, ev, MethodContext(cache=cache, device=device))
        assert all(d.ok for d in out), [d.error for d in out]
        return [(d.label, d.score) for d in out]

    assert labels("meta") == labels("cpu")
    res = resources(name)
    assert work_device(res, "cuda") == "cpu"
    assert ray_options(res, "cuda") == {"num_cpus": 1.0}


def test_gpu_options_follow_the_declared_memory_class() -> None:
    """DnD on a GPU run: its CPUs, one GPU and its 24 GiB class; on the CPU only its CPUs."""
    res = resources("dnd")
    assert ray_options(res, "cuda") == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "resources": {gpu_memory_resource(24): 1.0},
    }
    assert ray_options(res, "cpu") == {"num_cpus": 2.0}


def test_recording_jobs_reserve_a_gpu_on_a_gpu_run() -> None:
    assert ray_options(RANGE_JOB_RESOURCES, "cuda") == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ray_options(RANGE_JOB_RESOURCES, "cuda:0")["num_gpus"] == 1.0
    assert ray_options(RANGE_JOB_RESOURCES, "cpu") == {"num_cpus": 1.0}


def test_a_worker_runs_a_cpu_method_on_the_cpu_on_a_gpu_run(tmp_path: Path) -> None:
    """A depictions shard of a ``cuda`` run, rebuilt as a worker rebuilds it (no GPU here, no
    GPU reserved on Ray): the target is loaded on the CPU and the method's context says ``cpu``;
    describing it works."""
    from bench.probes import load_probe
    from bench.shards import _build
    from bench.targets import load_target

    cache = Cache(tmp_path / "cache")
    target = load_target("synth.resnet", cache=cache)
    options = {"n_images": "8"}
    probe = load_probe("synthetic", None, options=options, cache=cache)
    method = METHODS.get("depictions")()
    shard = Shard(
        method="depictions",
        method_class=class_path(type(method)),
        method_config={},
        method_identity=method.identity(),
        target="synth.resnet",
        weights=None,
        target_identity=target.identity(),
        probe="synthetic",
        probe_root=None,
        probe_options=options,
        probe_identity=probe.identity(),
        layers=("layer1",),
        record=None,
        record_key="none-test",
        components={},
        component_options={},
        device="cuda",
        seed=0,
        cache_root=str(cache.root.resolve()),
        run_dir=str(tmp_path / "run"),
        units=("layer1:0", "layer1:1"),
        resources=resources("depictions"),
    )
    assert shard.work_device == "cpu"
    try:
        prepared = _build(shard)
        assert prepared.ctx.device == "cpu"
        assert prepared.ctx.target is not None
        assert {p.device.type for p in prepared.ctx.target.model.parameters()} == {"cpu"}
        out = prepared.method.describe(shard.unit_refs(), prepared.evidence, prepared.ctx)
        assert [d.ok for d in out] == [True, True]
    finally:
        forget_state()
