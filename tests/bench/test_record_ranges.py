"""Recording split by image ranges (bench.record's RangeJob, plan_range_jobs, run_range_job and
record_cached(images_per_job=, map_jobs=)): the merged parts are the one-pass entry, array for
array and file for file, under the one-pass key.

The hand-weighted TinyNet of test_record (ReLU outputs: many ties at zero among the top-k) runs
the in-process path; the shipped synthetic target on the synthetic probe runs the path a remote
worker takes (loading both by name from the job alone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cache import MANIFEST, Cache
from bench.errors import ConfigError, UsageError
from bench.record import (
    PART_STAGE,
    STAGE,
    RangeJob,
    WorkerSource,
    _merge_parts,
    _part_key_parts,
    _run_part,
    plan_range_jobs,
    record_cached,
    record_key_parts,
    run_range_job,
)
from bench.schema import read_json
from tests.bench.test_record import QUANTILES, ArrayProbe, make_images, tiny_target

LAYERS = ["relu1", "conv2", "fc"]
N_IMAGES = 30
SYNTH_IMAGES = 20
REPO = Path(__file__).resolve().parents[2]


def assert_same_entry(one, merged) -> None:
    """``merged`` is ``one`` for anything downstream: same key, same arrays (dtype and bits),
    same maps, same metadata but for the recording's duration, and byte-identical files."""
    assert merged.key == one.key
    assert list(merged.layers) == list(one.layers)
    for name, a in one.layers.items():
        b = merged.layer(name)
        arrays_a, arrays_b = a.arrays(), b.arrays()
        assert sorted(arrays_a) == sorted(arrays_b)
        for key, arr in arrays_a.items():
            assert arrays_b[key].dtype == arr.dtype, (name, key)
            assert np.array_equal(arrays_b[key], arr), (name, key)
        assert (a.maps is None) == (b.maps is None)
        if a.maps is not None:
            assert b.maps.shape == a.maps.shape and np.array_equal(b.maps, a.maps)
        meta_a = {k: v for k, v in a.meta.items() if k != "seconds"}
        meta_b = {k: v for k, v in b.meta.items() if k != "seconds"}
        assert meta_b == meta_a
        assert (b.num_units, b.map_shape, b.layer) == (a.num_units, a.map_shape, a.layer)


def entry_files(cache: Cache, key: str) -> dict[str, str]:
    """sha256 of every file of a record entry except the per-layer JSON (it holds seconds)."""
    manifest = read_json(cache.entry_dir(STAGE, key) / MANIFEST)
    return {
        rel: meta["sha256"] for rel, meta in manifest["files"].items() if not rel.endswith(".json")
    }


@pytest.fixture
def probe() -> ArrayProbe:
    return ArrayProbe(make_images(N_IMAGES))


# --- the in-process path ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images_per_job", "batch_size", "store_maps", "n_jobs"),
    [(16, 8, False, 2), (12, 4, True, 3), (9, 3, True, 4), (10, 4, False, 3)],
)
def test_merged_ranges_equal_one_pass(
    tmp_path, probe, images_per_job, batch_size, store_maps, n_jobs
):
    kwargs = dict(
        k=15,
        topk_by=("max", "mean"),
        quantiles=QUANTILES,
        batch_size=batch_size,
        store_maps=store_maps,
    )
    one = record_cached(Cache(tmp_path / "one"), tiny_target(), probe, LAYERS, **kwargs)
    cache = Cache(tmp_path / "ranged")
    jobs = plan_range_jobs(
        cache, tiny_target(), probe, LAYERS, images_per_job=images_per_job, **kwargs
    )
    assert len(jobs) == n_jobs
    assert [j.start for j in jobs][1:] == [j.stop for j in jobs][:-1]
    assert jobs[0].start == 0 and jobs[-1].stop == N_IMAGES
    assert all(j.start % batch_size == 0 for j in jobs)  # 10 per job rounds up to 12
    calls: list[tuple[int, int]] = []

    def serial(fn, jobs):  # what an executor does, here in this process
        calls.extend((j.start, j.stop) for j in jobs)
        return [str(_run_part(j, cache, target, probe)) for j in jobs]

    target = tiny_target()
    merged = record_cached(
        cache, target, probe, LAYERS, images_per_job=images_per_job, map_jobs=serial, **kwargs
    )
    assert calls == [(j.start, j.stop) for j in jobs]
    assert not merged.cached
    assert_same_entry(one, merged)
    assert entry_files(cache, merged.key) == entry_files(Cache(tmp_path / "one"), one.key)
    # The case the tie rule is for: equal pooled scores inside some unit's top k.
    top = one.layer("relu1").top("max").values
    assert any(len(set(row.tolist())) < len(row) for row in top)
    # The parts are gone once merged; the entry is a plain hit afterwards, ranged or not.
    assert cache.entries(PART_STAGE) == []
    calls_before = target.model.calls
    again = record_cached(cache, target, probe, LAYERS, images_per_job=images_per_job, **kwargs)
    plain = record_cached(cache, target, probe, LAYERS, **kwargs)
    assert again.cached and plain.cached and target.model.calls == calls_before
    assert_same_entry(one, plain)


def test_uneven_ranges_merge_exactly(tmp_path, probe):
    """Ranges of 4, 16 and 10 images (batch boundaries), merged in their order."""
    kwargs = dict(k=7, topk_by=("mean",), quantiles=QUANTILES, batch_size=2, store_maps=True)
    target = tiny_target()
    one = record_cached(Cache(tmp_path / "one"), target, probe, LAYERS, **kwargs)
    cache = Cache(tmp_path / "parts")
    (base,) = plan_range_jobs(cache, target, probe, LAYERS, images_per_job=N_IMAGES, **kwargs)
    jobs = [
        dataclasses.replace(
            base,
            start=a,
            stop=b,
            key=cache.key(PART_STAGE, _part_key_parts(base.record_parts, a, b)),
        )
        for a, b in [(0, 4), (4, 20), (20, 30)]
    ]
    for job in jobs:
        _run_part(job, cache, target, probe)
    out = tmp_path / "merged"
    out.mkdir()
    _merge_parts(cache, jobs, out, seconds=0.0)
    from bench.record import _load_entry

    merged = _load_entry(out, LAYERS)
    for name in LAYERS:
        a, b = one.layer(name), merged[name]
        for key, arr in a.arrays().items():
            assert np.array_equal(b.arrays()[key], arr), (name, key)
        assert np.array_equal(a.maps, b.maps)


def test_default_recording_keeps_its_key(tmp_path, probe):
    """Without images_per_job nothing changes: the key is the one-pass key of record_key_parts,
    and a ranged recording lands under the same key."""
    cache = Cache(tmp_path)
    target = tiny_target()
    plain = record_cached(cache, target, probe, ["relu1"], quantiles=QUANTILES)
    parts = record_key_parts(
        target,
        probe,
        ["relu1"],
        k=15,
        topk_by=("max",),
        quantiles=QUANTILES,
        device="cpu",
    )
    assert plain.key == cache.key(STAGE, parts)
    assert "maps" not in parts and cache.entries(PART_STAGE) == []
    (job,) = plan_range_jobs(
        cache, target, probe, ["relu1"], images_per_job=64, quantiles=QUANTILES
    )
    assert job.record_key == plain.key and job.record_parts == json.loads(json.dumps(parts))


def test_accumulators_are_refused_with_ranges(tmp_path, probe):
    with pytest.raises(ConfigError, match="no merge"):
        record_cached(
            Cache(tmp_path),
            tiny_target(),
            probe,
            ["relu1"],
            images_per_job=10,
            accumulators={"relu1": [lambda: None]},
            accumulator_identity={"x": 1},
        )


def test_missing_or_corrupt_parts_are_recomputed(tmp_path, probe, caplog):
    kwargs = dict(k=5, quantiles=QUANTILES, batch_size=5, store_maps=True)
    one = record_cached(Cache(tmp_path / "one"), tiny_target(), probe, LAYERS, **kwargs)
    cache = Cache(tmp_path / "ranged")
    target = tiny_target()
    ran: list[int] = []

    def lossy(fn, jobs):
        """Runs every job, then loses the first part, stores the second's files as the third
        (checksums intact: only its contents tell) and flips a byte of the second."""
        paths = [str(_run_part(j, cache, target, probe)) for j in jobs]
        ran.append(len(jobs))
        shutil.rmtree(paths[0])
        shutil.rmtree(paths[2])

        def copy(directory: Path) -> None:
            for f in Path(paths[1]).iterdir():
                if f.name != MANIFEST:
                    shutil.copy(f, directory / f.name)

        parts = _part_key_parts(jobs[2].record_parts, jobs[2].start, jobs[2].stop)
        cache.store(PART_STAGE, jobs[2].key, parts, copy)
        blob = Path(paths[1]) / "1.safetensors"
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))
        return paths

    with caplog.at_level(logging.WARNING, logger="bench"):
        merged = record_cached(
            cache, target, probe, LAYERS, images_per_job=10, map_jobs=lossy, **kwargs
        )
    assert ran == [3]
    assert_same_entry(one, merged)
    text = caplog.text
    assert "Part [0, 10)" in text and "missing or corrupt" in text
    assert "Part [10, 20)" in text
    assert "Part [20, 30)" in text and "does not fit its job" in text


def test_map_jobs_must_run_every_job(tmp_path, probe):
    with pytest.raises(UsageError, match="one entry path per job"):
        record_cached(
            Cache(tmp_path),
            tiny_target(),
            probe,
            ["relu1"],
            images_per_job=10,
            map_jobs=lambda fn, jobs: [],
        )


# --- what a remote worker does ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The synthetic target and a small synthetic probe, exported into a module cache."""
    from bench.probes import load_probe
    from bench.targets import load_target

    cache = Cache(tmp_path_factory.mktemp("synth-cache"))
    target = load_target("synth.resnet", cache=cache)
    options = {"n_images": str(SYNTH_IMAGES)}
    probe = load_probe("synthetic", None, options=options, cache=cache)
    source = WorkerSource(probe="synthetic", probe_options=options)
    return cache, target, probe, source


def test_jobs_survive_a_json_round_trip(synth):
    cache, target, probe, source = synth
    kwargs = dict(images_per_job=8, batch_size=4, k=3, quantiles=QUANTILES, source=source)
    jobs = plan_range_jobs(cache, target, probe, None, **kwargs)
    assert jobs == plan_range_jobs(cache, target, probe, None, **kwargs)  # stable
    assert len(jobs) == 3 and len({j.key for j in jobs}) == 3
    for job in jobs:
        shipped = json.dumps(job.to_json())
        back = RangeJob.from_json(json.loads(shipped))
        assert back == job and hash(back) == hash(job)
        assert back.specs() == tuple(QUANTILES)  # q travels as the exact float
        assert back.cache_root == str(cache.root) and Path(back.cache_root).is_absolute()
        assert back.target == "synth.resnet" and back.probe == "synthetic"
        assert back.target_identity == target.identity()
    bad = jobs[0].to_json()
    del bad["cache_root"]
    with pytest.raises(ConfigError, match="cache_root"):
        RangeJob.from_json(bad)


def test_a_worker_with_other_weights_refuses_the_job(synth, tmp_path):
    cache, target, probe, source = synth
    (job,) = plan_range_jobs(cache, target, probe, None, images_per_job=64, source=source)
    parts = json.loads(json.dumps(job.record_parts))
    parts["target"]["weights_sha256"] = "0" * 64
    with pytest.raises(UsageError, match="weights_sha256|target"):
        run_range_job(dataclasses.replace(job, record_parts=parts))


def test_run_range_job_loads_everything_from_the_job(synth, tmp_path, monkeypatch):
    """run_range_job as map_jobs gets it, here in this process with no cache in the environment:
    it loads the target and the probe by name into the cache the jobs name, and the merge is the
    one-pass entry. (The same in a fresh interpreter: the slow test below.)"""
    cache, target, probe, source = synth
    kwargs = dict(k=4, batch_size=4, quantiles=QUANTILES, topk_by=("mean", "max"))
    one = record_cached(Cache(tmp_path / "one"), target, probe, None, **kwargs)
    monkeypatch.delenv("BENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen: list[str] = []

    def serial(fn, jobs):
        assert fn is run_range_job
        paths = [fn(RangeJob.from_json(json.loads(json.dumps(job.to_json())))) for job in jobs]
        seen.extend(paths)
        return paths

    merged = record_cached(
        cache, target, probe, None, images_per_job=8, map_jobs=serial, source=source, **kwargs
    )
    assert len(seen) == 3 and all(Path(p).parent == cache.root / PART_STAGE for p in seen)
    assert not (tmp_path / "xdg").exists()
    assert_same_entry(one, merged)


@pytest.mark.slow  # a fresh interpreter imports torch and torchvision: 15-35 s on a busy 2-core box
def test_jobs_run_in_a_clean_subprocess_merge_into_the_one_pass_entry(synth, tmp_path):
    """The jobs travel as JSON to a fresh interpreter whose environment names no cache (a HOME
    and XDG cache of its own, no BENCH_CACHE_DIR); it loads the target and the probe by name from
    the jobs, writes into the jobs' cache, and the merge is the one-pass entry."""
    cache, target, probe, source = synth
    kwargs = dict(k=4, batch_size=4, quantiles=QUANTILES, store_maps=True)
    one = record_cached(Cache(tmp_path / "one"), target, probe, None, **kwargs)
    home = tmp_path / "home"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "xdg"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    script = (
        "import json, sys\n"
        "from bench.record import RangeJob, run_range_job\n"
        "for job in json.load(sys.stdin):\n"
        "    print(run_range_job(RangeJob.from_json(job)))\n"
    )
    shipped: list[str] = []

    def in_a_subprocess(fn, jobs):
        """One fresh worker process (as a pool or an actor reuses one) takes every job."""
        assert fn is run_range_job
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps([job.to_json() for job in jobs]),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        paths = done.stdout.strip().splitlines()[-len(jobs) :]
        for job, path in zip(jobs, paths, strict=True):
            assert Path(path) == cache.entry_dir(PART_STAGE, job.key) and Path(path).is_dir()
        shipped.extend(paths)
        return paths

    merged = record_cached(
        cache,
        target,
        probe,
        None,
        images_per_job=12,
        map_jobs=in_a_subprocess,
        source=source,
        **kwargs,
    )
    assert len(shipped) == 2
    assert not (home / "xdg" / "neuron-bench").exists()  # nothing went to a default cache
    assert_same_entry(one, merged)
