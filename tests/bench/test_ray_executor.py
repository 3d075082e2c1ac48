"""The Ray executor (``bench run --executor ray``) on a private local Ray started once per session.

What it must show: the same records and suite numbers as the local executor; a recording split
into image ranges on Ray workers merges into the one-pass entry; a worker killed mid-shard or a
driver killed mid-run costs only the shards in flight, and every unit is recorded once. The
multi-node checks (a node with a fake GPU, a node removed mid-run) are ``slow``.

Ray 2.60 turns token authentication on by default: the session's Ray runs with
``RAY_AUTH_MODE=disabled`` and a private ``RAY_TMPDIR`` (short: Ray's socket paths are limited to
about 107 bytes). Shards name their method by class path; the test methods
(``tests/bench/ray_plugin.py``) reach workers as a plug-in installed on every node would: the
repository and an entry-point file are on the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip(
    "ray",
    reason="Ray is not installed: pip install 'neuron-bench[ray]' (the dev extra includes it)",
)

from bench.api import RunConfig, ScoreOptions, run, score_run  # noqa: E402
from bench.cache import Cache  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.errors import UsageError  # noqa: E402
from bench.executors import RayExecutor  # noqa: E402
from bench.registry import METHODS  # noqa: E402
from bench.schema import read_descriptions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GATE = "ray-test-gate"
ACTOR_GATE = "ray-test-actor"
PLUGIN_METHODS = {
    GATE: "tests.bench.ray_plugin:Gate",
    ACTOR_GATE: "tests.bench.ray_plugin:ActorGate",
    "ray-test-gpu": "tests.bench.ray_plugin:GpuGate",
    "ray-test-greedy": "tests.bench.ray_plugin:GreedyGate",
}
#: The synthetic probe, smaller than its default 2,000 images (a cheaper recording).
PROBE_OPTIONS = {"n_images": "100"}


@dataclass(frozen=True)
class LocalRay:
    address: str  # the GCS address a driver in a subprocess connects to (--address)
    env: dict[str, str]  # environment for drivers in subprocesses


def plugin_site(root: Path) -> Path:
    """A directory that makes the test methods an installed plug-in (group bench.methods)."""
    site = root / "site"
    dist = site / "bench_ray_test_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: bench-ray-test-plugin\nVersion: 0.1\n"
    )
    lines = "".join(f"{name} = {path}\n" for name, path in PLUGIN_METHODS.items())
    (dist / "entry_points.txt").write_text(f"[bench.methods]\n{lines}")
    return site


def short_tmpdir() -> str:
    """A private temporary directory with a short path (Ray puts its sockets inside)."""
    return tempfile.mkdtemp(prefix="rt", dir="/tmp" if os.path.isdir("/tmp") else None)


def set_env(values: dict[str, str]) -> dict[str, str | None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def local_ray() -> Iterator[LocalRay]:
    """One local Ray for the session: 2 CPUs, loopback only, no dashboard, shut down at the end.
    Its workers inherit this environment: the repository and the plug-in on PYTHONPATH."""
    tmp = short_tmpdir()
    site = plugin_site(Path(tmp))
    path = [str(site), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    saved = set_env(
        {"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tmp, "PYTHONPATH": os.pathsep.join(path)}
    )
    for name, target in PLUGIN_METHODS.items():
        METHODS.register(name, target)
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=128 * 2**20,
            # Loopback: the tests' network guard (conftest) refuses Python sockets to other
            # addresses, which Ray would use to find this node's address.
            _node_ip_address="127.0.0.1",
        )
        address = ray.get_runtime_context().gcs_address
        yield LocalRay(address=address, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        ray.shutdown()
        for name in PLUGIN_METHODS:
            METHODS.unregister(name)
        restore_env(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def records(run_dir: Path, method: str) -> dict[str, dict[str, Any]]:
    """The method's units.jsonl as JSON by unit, timings aside. (Records are appended as shards
    complete, so their order depends on the executor.)"""
    out = {}
    for d in read_descriptions(run_dir / method / "units.jsonl"):
        j = d.to_json()
        j.pop("seconds", None)
        assert str(d.unit) not in out, f"{d.unit} twice in {method}/units.jsonl"
        out[str(d.unit)] = j
    return out


def unit_counts(run_dir: Path, method: str) -> Counter[str]:
    return Counter(str(d.unit) for d in read_descriptions(run_dir / method / "units.jsonl"))


def suite_numbers(run_dir: Path, suite: str) -> dict[str, Any]:
    """A suite result's numbers: per-method metrics and per-unit scores (no costs, no paths)."""
    result = json.loads((run_dir / "suites" / f"{suite}.json").read_text())
    return {"metrics": result["metrics"], "units": result["units"]}


# --- one run, two executors ---------------------------------------------------------------------


def test_ray_run_equals_local_run(local_ray: LocalRay, tmp_path: Path) -> None:
    """NetDissect and the depictions baseline on the embedded default target, once in-process
    and once on Ray (recording and shards on Ray workers, separate caches so that nothing is a
    cache hit): the same records and the same suite numbers."""
    from tests.bench.test_record_ranges import entry_files

    common: dict[str, Any] = {
        "methods": ("netdissect", "depictions"),
        "probe_options": PROBE_OPTIONS,
    }
    runs = {}
    for executor in ("local", "ray"):
        cache = tmp_path / f"cache-{executor}"
        out = tmp_path / executor
        if executor == "ray":
            # The same probe set: its identity hashes its files' modification times, so the
            # second cache gets a copy of the first one's export (copytree keeps the times).
            shutil.copytree(tmp_path / "cache-local" / "synth-broden", cache / "synth-broden")
        result = run(RunConfig(**common, executor=executor, out=str(out), cache_dir=str(cache)))
        assert not result.record_cached
        assert [(m.ok, m.error, m.computed, m.cached) for m in result.methods] == [
            (160, 0, 160, 0)
        ] * 2
        state = json.loads((out / "run.json").read_text())
        assert state["stages"]["method:netdissect"]["executor"] == executor
        runs[executor] = (out, Cache(cache), state["stages"]["record"]["key"])
    (local_dir, local_cache, key), (ray_dir, ray_cache, ray_key) = runs["local"], runs["ray"]
    for method in ("netdissect", "depictions"):
        assert records(ray_dir, method) == records(local_dir, method)
    # The recording ran as a range job on a Ray worker and is the one-pass entry, file for file.
    assert ray_key == key
    assert entry_files(ray_cache, key) == entry_files(local_cache, key)
    suites = ["faithfulness", "generated"]  # the first: NetDissect; the second: both methods
    for out, cache, _ in (runs["local"], runs["ray"]):
        options = ScoreOptions(cache_dir=str(cache.root), n_resamples=500, exemplars=False)
        report = score_run(out, suites, options=options)
        assert sorted(report.results) == suites, report.skipped
    for suite in suites:
        assert suite_numbers(ray_dir, suite) == suite_numbers(local_dir, suite)


def test_recording_in_ranges_on_ray_equals_one_pass(local_ray: LocalRay, tmp_path: Path) -> None:
    """record_cached(map_jobs=RayExecutor.map): three image ranges recorded by Ray workers (the
    target and the probe loaded by name from each job) merge into the one-pass entry: same key,
    identical arrays and files."""
    from bench.evidence import QuantileSpec
    from bench.probes import load_probe
    from bench.record import WorkerSource, record_cached, run_range_job
    from bench.targets import load_target
    from tests.bench.test_record_ranges import assert_same_entry, entry_files

    options = {"n_images": "20"}
    kwargs: dict[str, Any] = {
        "k": 4,
        "batch_size": 4,
        "topk_by": ("max", "mean"),
        "quantiles": (QuantileSpec.parse("0.99/linear"), QuantileSpec.parse("0.9/hazen")),
        "store_maps": True,
    }
    # The jobs' cache holds the probe's export: workers load it from there (its identity hashes
    # its files' modification times, so another export would be another probe set).
    cache = Cache(tmp_path / "ranged")
    target = load_target("synth.resnet", cache=cache)
    probe = load_probe("synthetic", None, options=options, cache=cache)
    one_cache = Cache(tmp_path / "one")
    one = record_cached(one_cache, target, probe, None, **kwargs)

    mapped: list[int] = []
    with RayExecutor() as ex:

        def on_ray(fn: Any, jobs: Any) -> list[Any]:
            assert fn is run_range_job
            mapped.append(len(jobs))
            return ex.map(fn, jobs)

        merged = record_cached(
            cache,
            target,
            probe,
            None,
            images_per_job=8,
            map_jobs=on_ray,
            source=WorkerSource(probe="synthetic", probe_options=options),
            **kwargs,
        )
    assert mapped == [3]
    assert not merged.cached
    assert_same_entry(one, merged)
    assert entry_files(cache, merged.key) == entry_files(one_cache, one.key)


def test_the_driver_takes_every_ready_result_per_wait(
    local_ray: LocalRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 jobs, all finished before the driver's first wait (the spy waits for them): the
    driver collects them in one batch (two calls of ray.wait, not one per job), and the results
    are the same, in order."""
    from tests.bench.ray_plugin import die_once

    real_wait = ray.wait
    calls: list[int] = []

    def spy(refs: list[Any], **kwargs: Any) -> Any:
        if not calls:
            real_wait(refs, num_returns=len(refs))  # every job done before the first wait
        calls.append(len(refs))
        return real_wait(refs, **kwargs)

    monkeypatch.setattr(ray, "wait", spy)
    items = [("/nonexistent", i, False) for i in range(1, 41)]
    with RayExecutor() as ex:
        assert ex.map(die_once, items) == [2 * i for i in range(1, 41)]
    assert calls == [40, 39]


def test_work_no_node_can_take_is_refused_before_it_is_submitted(
    local_ray: LocalRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the session's Ray (2 CPUs, no GPU): a GPU shard with a 24 GiB memory class, and a
    recording job of a GPU run, are refused with a usage error that names the missing resources
    and the `ray start` flags that offer them; nothing is submitted. With a resource wait, the
    same after the wait. The same shard on a CPU run is accepted."""
    from bench.method import gpu_memory_resource
    from tests.bench.ray_cluster_check import gpu_shard

    submitted: list[Any] = []
    monkeypatch.setattr(RayExecutor, "_loop", lambda self, items, *a, **k: submitted.append(items))
    mem = gpu_memory_resource(24)
    with RayExecutor() as ex:
        with pytest.raises(UsageError) as err:
            ex.run([gpu_shard("cuda")], lambda s, r: None)
        text = str(err.value)
        assert "A shard of method 'ray-test-gpu'" in text
        assert f"no node has GPU, {mem}" in text
        assert f"--num-gpus 1 --resources '{{\"{mem}\": 1}}'" in text
        assert "--resource-wait" in text
        with pytest.raises(UsageError, match="A recording job needs .*GPU: 1"):
            ex.map(str, [1], device="cuda")
        assert not submitted
        ex.run([gpu_shard("cpu")], lambda s, r: None)  # a CPU run asks for no GPU
        assert len(submitted) == 1
    with RayExecutor(resource_wait=0.2) as ex, pytest.raises(UsageError, match="Waited 0.2 s"):
        ex.check([("A shard", {"cpus": 1, "gpus": 1}, "cuda")])


def test_bench_run_exits_2_before_recording_when_no_node_can_take_a_method(
    local_ray: LocalRay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench run --executor ray` with NetDissect and a method whose shards need 64 CPUs (the
    session's Ray has 2): exit 2 with the missing resource named, before anything is recorded
    or described."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = [
        "run",
        "--executor", "ray",
        "--address", local_ray.address,
        "--methods", "netdissect,ray-test-greedy",
        "--layers", "layer1",
        "--units", "0-3",
        "--probe-option", "n_images=20",
        "--no-suites",
        "--out", str(out),
        "--cache-dir", str(cache),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "A shard of method 'ray-test-greedy' needs {CPU: 64}" in err
    assert "--num-cpus 64" in err
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "failed" and "record" not in state["stages"]
    assert not (cache / "record").exists()
    assert not list(out.glob("*/units.jsonl"))


# --- killed workers and drivers -----------------------------------------------------------------


def gate_fields(control: Path, **fields: Any) -> dict[str, Any]:
    """A Gate's config fields, its control directory created."""
    control.mkdir(parents=True, exist_ok=True)
    return {"control": str(control), **fields}


def computed_log(control: Path) -> list[tuple[str, int]]:
    """(unit, pid) for every unit a Gate computed, in order."""
    path = control / "computed.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        unit, pid, _node = line.split()
        out.append((unit, int(pid)))
    return out


def kill_when_held(control: Path, killed: list[int], timeout: float = 90.0) -> threading.Thread:
    """A thread that SIGKILLs the process holding a shard (its pid in ``holder.pid``)."""

    def watch() -> None:
        pid_file = control / "holder.pid"
        deadline = time.monotonic() + timeout
        while not pid_file.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("method", [GATE, ACTOR_GATE])
def test_a_worker_killed_mid_shard_costs_only_its_shard(
    local_ray: LocalRay, tmp_path: Path, method: str
) -> None:
    """The first shard's worker (a task's worker, or the actor) is SIGKILLed while it holds the
    shard: the shard runs again, the run completes, and units.jsonl has every unit once."""
    control = tmp_path / "control"
    killed: list[int] = []
    watcher = kill_when_held(control, killed)
    out = tmp_path / "run"
    result = run(
        RunConfig(
            methods=(method,),
            method_config={method: gate_fields(control, hold_first=True)},
            layers=("layer1",),
            units="0-7",
            probe_options={"n_images": "20"},
            executor="ray",
            # One actor (--workers 1 caps the actors): it loads the method once for all shards.
            workers=1 if method == ACTOR_GATE else None,
            out=str(out),
            cache_dir=str(tmp_path / "cache"),
        )
    )
    watcher.join(timeout=5)
    assert len(killed) == 1 and killed[0] != os.getpid()  # a worker, not this driver
    (summary,) = result.methods
    assert (summary.ok, summary.error, summary.computed) == (8, 0, 8)
    expected = {f"layer1:{i}" for i in range(8)}
    assert unit_counts(out, method) == dict.fromkeys(expected, 1)
    log = computed_log(control)
    assert sorted(u for u, _ in log) == sorted(expected)  # each unit computed once
    pids = {pid for _, pid in log}
    assert killed[0] not in pids  # the killed attempt wrote nothing
    assert os.getpid() not in pids  # every shard ran on a worker
    if method == ACTOR_GATE:
        # The actor was killed on its first shard; its restart took all 4 shards.
        assert len(pids) == 1
    assert not any((out / method / "shards").glob("*.jsonl"))  # every partial file merged


def units_in(path: Path) -> list[str]:
    """Units of the whole records of a units.jsonl that a killed driver may have torn."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            out.append(f"{j['unit']['layer']}:{j['unit']['index']}")
    return out


def test_a_killed_driver_reruns_without_recomputing(
    local_ray: LocalRay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench run --executor ray` in a subprocess, SIGKILLed once 4 of 12 units are merged
    (shards of units >= 4 wait on a file meanwhile); then the same command again (here, in this
    process, whose Ray workers are warm): it completes, the 4 units are not computed again, and
    units.jsonl has every unit once."""
    control = tmp_path / "control"
    control.mkdir()
    out = tmp_path / "run"
    units_file = out / GATE / "units.jsonl"
    args = [
        "run",
        "--executor", "ray",
        "--address", local_ray.address,
        "--methods", GATE,
        "--config", f"{GATE}.control={json.dumps(str(control))}",
        "--config", f"{GATE}.gate_from=4",
        "--layers", "layer1",
        "--units", "0-11",
        "--probe-option", "n_images=20",
        "--no-suites",
        "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        env=local_ray.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(units_in(units_file)) < 4:
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the first run merged no 4 units in 180 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    done_before = units_in(units_file)
    assert len(done_before) >= 4 and all(int(u.split(":")[1]) < 4 for u in done_before)
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    (control / "open").touch()
    capsys.readouterr()
    assert main(args) == 0
    output = capsys.readouterr().out
    row = next(line.split() for line in output.splitlines() if line.startswith(GATE))
    ok, failed, computed, resumed, cached = map(int, row[1:6])
    assert (ok, failed) == (12, 0)
    assert resumed >= len(done_before) and computed + resumed + cached == 12
    expected = {f"layer1:{i}" for i in range(12)}
    assert unit_counts(out, GATE) == dict.fromkeys(expected, 1)
    times = Counter(u for u, _ in computed_log(control))
    assert set(times) == expected
    assert all(times[u] == 1 for u in done_before), times  # done before the kill: not redone
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def ps_args() -> str:
    """The command lines of every process (Ray's name their session directory)."""
    return subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout


@pytest.mark.slow  # a fresh driver starts a Ray of its own, and its workers: 20-60 s
def test_without_an_address_the_executor_starts_and_stops_a_private_ray(tmp_path: Path) -> None:
    """`bench run --executor ray` without --address in a fresh interpreter: the executor starts
    a local Ray, runs the shards on it and shuts it down; no Ray process outlives the run."""
    ray_tmp = short_tmpdir()
    try:
        site = plugin_site(Path(ray_tmp))
        path = [str(site), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": ray_tmp,
            "PYTHONPATH": os.pathsep.join(path),
        }
        control = tmp_path / "control"
        args = [
            "run",
            "--executor", "ray",
            "--methods", GATE,
            "--config", f"{GATE}.control={json.dumps(str(control))}",
            "--layers", "layer1",
            "--units", "0-5",
            "--probe-option", "n_images=20",
            "--no-suites",
            "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"),
        ]  # fmt: skip
        control.mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "bench.cli", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        expected = {f"layer1:{i}" for i in range(6)}
        assert unit_counts(tmp_path / "run", GATE) == dict.fromkeys(expected, 1)
        log = computed_log(control)
        assert sorted(u for u, _ in log) == sorted(expected)
        nodes = {line.split()[2] for line in (control / "computed.log").read_text().splitlines()}
        assert "local" not in nodes  # every shard ran on a Ray worker
        deadline = time.monotonic() + 15  # processes may take a moment to exit
        while ray_tmp in ps_args() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray_tmp not in ps_args(), "Ray processes of the run are still alive"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --- several nodes ------------------------------------------------------------------------------


@pytest.mark.slow  # three Ray nodes on one machine, each with its workers: a minute or more
def test_gpu_work_lands_on_the_gpu_node_and_a_removed_node_costs_only_its_shards(
    tmp_path: Path,
) -> None:
    """A ray.cluster_utils.Cluster (head, a node with a fake GPU and the 24 GiB GPU-memory
    resource, a CPU node) driven by tests/bench/ray_cluster_check.py in a fresh interpreter:
    GPU jobs and GPU shard options land only on the GPU node; the CPU node is removed while it
    holds shards and the run completes with every unit once."""
    from bench.method import gpu_memory_resource

    ray_tmp = short_tmpdir()
    try:
        site = plugin_site(Path(ray_tmp))
        path = [str(site), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": ray_tmp,
            "PYTHONPATH": os.pathsep.join(path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "tests.bench.ray_cluster_check", str(tmp_path)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    nodes = report["nodes"]
    assert len(set(nodes.values())) == 3
    # GPU work: only on the GPU node.
    assert set(report["map_gpu_nodes"]) == {nodes["gpu"]}
    assert report["gpu_shard_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "resources": {gpu_memory_resource(24): 1.0},
    }
    assert set(report["gpu_shard_nodes"]) == {nodes["gpu"]}
    assert report["cpu_run_options"] == {"num_cpus": 1.0}  # a CPU run asks for no GPU
    assert report["gpu_actors"] == 1  # one GPU in the cluster: one actor
    # Work no node offers is refused; with a resource wait it is taken once such a node joins.
    assert report["refused"] and f"no node has {gpu_memory_resource(80)}" in report["refused"]
    assert report["waited"] == {"ok": True}
    # The CPU node held shards and was removed mid-run; the run completed elsewhere.
    assert report["held"] and report["removed_after_s"] is not None
    assert report["summary"] == {"ok": 12, "error": 0}
    expected = {f"layer1:{i}" for i in range(12)}
    assert unit_counts(Path(report["run_dir"]), GATE) == dict.fromkeys(expected, 1)
    computed = [line.split() for line in report["computed"]]
    assert {u for u, _, _ in computed} == expected
    assert nodes["cpu"] not in {node for _, _, node in computed}  # held there, never finished
    assert {node for _, _, node in computed} <= {nodes["head"], nodes["gpu"]}
