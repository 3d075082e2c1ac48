"""A cache at a URL (bench.cache with ``root`` "scheme://..."): entries are mirrored through a
node-local staging directory to a store every node reaches. A fresh staging directory (another
node) gets the same, verified entries from the store; a corrupt or torn remote entry is never
used; the URL reaches the cache intact from the command line, RunConfig, range jobs and shards.

fsspec's in-process ``memory://`` store stands in for a bucket in the fast tests (each test its
own path); ``file://`` URLs serve processes that share a directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cache import MANIFEST, Cache, sha256_file
from bench.errors import CacheError

REPO = Path(__file__).resolve().parents[2]
STAGE = "demo"
PARTS = {"input": 1}


def _write(directory: Path) -> None:
    (directory / "a.txt").write_text("alpha")
    (directory / "sub").mkdir()
    (directory / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)


def _files(entry: Path) -> dict[str, tuple[int, str, int]]:
    """rel -> (size, sha256, mtime_ns) of an entry's files, the manifest aside."""
    return {
        p.relative_to(entry).as_posix(): (p.stat().st_size, sha256_file(p), p.stat().st_mtime_ns)
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"memory://bench-test/{tmp_path.name}/store"


def _remote_manifest(cache: Cache, key: str) -> dict[str, Any]:
    assert cache.remote is not None
    raw = cache.remote.fs.cat_file(cache.remote._join(STAGE, key, MANIFEST))
    return dict(json.loads(raw))


def test_a_fresh_staging_directory_gets_an_identical_verified_entry(url, tmp_path) -> None:
    writer = Cache(url, staging=tmp_path / "node1")
    assert writer.is_remote and writer.location == url
    assert writer.root.is_relative_to(tmp_path / "node1")  # datasets, models stay local
    first, hit = writer.get_or_create(STAGE, PARTS, _write)
    assert not hit
    calls: list[Path] = []
    reader = Cache(url, staging=tmp_path / "node2")
    assert not reader.entry_dir(STAGE, writer.key(STAGE, PARTS)).exists()
    second, hit = reader.get_or_create(STAGE, PARTS, calls.append)
    assert hit and calls == []  # served by the store, not recomputed
    assert second.is_relative_to(tmp_path / "node2")
    # same bytes, and the writer's modification times (a Broden probe's identity hashes them)
    assert _files(second) == _files(first)
    assert (
        json.loads((second / MANIFEST).read_text())["files"]
        == json.loads((first / MANIFEST).read_text())["files"]
    )
    # the store lists the one entry; each node's staging holds its copy
    (entry,) = reader.entries()
    assert (entry.stage, entry.key, entry.remote) == (STAGE, reader.key(STAGE, PARTS), True)
    assert entry.path == f"{url}/{STAGE}/{entry.key}"
    assert [e.key for e in reader.staged_entries()] == [entry.key]
    assert reader.temporaries() == []


def test_a_corrupt_remote_file_is_not_used_and_is_recomputed(url, tmp_path, caplog) -> None:
    writer = Cache(url, staging=tmp_path / "node1")
    writer.get_or_create(STAGE, PARTS, _write)
    key = writer.key(STAGE, PARTS)
    assert writer.remote is not None
    payload = _remote_manifest(writer, key)["remote"]["payload"]
    writer.remote.fs.pipe_file(writer.remote._join(STAGE, key, payload, "a.txt"), b"alphA")
    reader = Cache(url, staging=tmp_path / "node2")
    with caplog.at_level(logging.WARNING, logger="bench.cache"):
        assert reader.load(STAGE, key) is None
    assert "a.txt does not match its checksum" in caplog.text
    assert not reader.entry_dir(STAGE, key).exists()  # nothing corrupt was placed
    calls: list[Path] = []

    def write(directory: Path) -> None:
        calls.append(directory)
        _write(directory)

    path, hit = reader.get_or_create(STAGE, PARTS, write)
    assert not hit and len(calls) == 1
    # the store now names the recomputed payload; a third node gets a good entry
    assert _remote_manifest(reader, key)["remote"]["payload"] != payload
    third = Cache(url, staging=tmp_path / "node3").load(STAGE, key)
    assert third is not None and (third / "a.txt").read_text() == "alpha"
    # the corrupt payload, named by no manifest any more, is listed as left over
    (left,) = reader.temporaries()
    assert left.remote and left.key == f"{key}/{payload}"


def test_a_torn_upload_is_a_miss(url, tmp_path, monkeypatch) -> None:
    """An upload that dies after its first file (a kill, a lost connection) leaves a payload
    without a manifest: the store has no entry; the writer reports the failure."""
    writer = Cache(url, staging=tmp_path / "node1")
    assert writer.remote is not None
    fs = writer.remote.fs
    real_put = fs.put_file
    puts: list[str] = []

    def dies_after_one(lpath: str, rpath: str, **kwargs: Any) -> None:
        if puts:
            raise ConnectionError("connection reset")
        puts.append(rpath)
        real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", dies_after_one)
    with pytest.raises(CacheError, match=f"Could not write {STAGE}/.* {url}.*connection reset"):
        writer.get_or_create(STAGE, PARTS, _write)
    monkeypatch.undo()
    key = writer.key(STAGE, PARTS)
    assert len(puts) == 1 and fs.exists(puts[0])  # the torn payload is there
    reader = Cache(url, staging=tmp_path / "node2")
    assert reader.load(STAGE, key) is None
    assert reader.entries() == []
    (torn,) = reader.temporaries()
    assert torn.remote and torn.key.startswith(f"{key}/")
    # a later writer completes the entry
    reader.get_or_create(STAGE, PARTS, _write)
    assert Cache(url, staging=tmp_path / "node3").load(STAGE, key) is not None


def test_interleaved_writers_of_one_key_never_mix_their_files(url, tmp_path, monkeypatch) -> None:
    """Writer B stores the key (other bytes: equivalent content need not be identical) while
    writer A is half way through its upload: each uploads its own payload, so the manifest
    written last (A's) names A's complete files and a reader gets A's entry, verified."""
    a = Cache(url, staging=tmp_path / "a")
    b = Cache(url, staging=tmp_path / "b")
    assert a.remote is not None
    fs = a.remote.fs
    real_put = fs.put_file
    interleaved: list[bool] = []

    def put_then_let_b_write(lpath: str, rpath: str, **kwargs: Any) -> None:
        real_put(lpath, rpath, **kwargs)
        if not interleaved:
            interleaved.append(True)
            monkeypatch.setattr(fs, "put_file", real_put)
            b.get_or_create(STAGE, PARTS, lambda d: (d / "a.txt").write_text("from b"))

    monkeypatch.setattr(fs, "put_file", put_then_let_b_write)
    a.get_or_create(STAGE, PARTS, _write)
    assert interleaved
    got = Cache(url, staging=tmp_path / "reader").load(STAGE, a.key(STAGE, PARTS))
    assert got is not None
    assert _files(got) == _files(a.entry_dir(STAGE, a.key(STAGE, PARTS)))
    (left,) = b.temporaries()  # b's payload, named by no manifest
    assert left.remote


def test_a_staged_entry_missing_from_the_store_is_uploaded_again(url, tmp_path) -> None:
    node1 = Cache(url, staging=tmp_path / "node1")
    node1.get_or_create(STAGE, PARTS, _write)
    key = node1.key(STAGE, PARTS)
    assert node1.remote is not None
    node1.remote.remove(STAGE, key)  # e.g. cleared from another node
    assert not Cache(url, staging=tmp_path / "node2").exists(STAGE, key)
    assert node1.load(STAGE, key) is not None  # a local hit, uploaded again
    assert Cache(url, staging=tmp_path / "node3").load(STAGE, key) is not None


def test_clear_removes_the_store_and_the_staging_copies(url, tmp_path) -> None:
    cache = Cache(url, staging=tmp_path / "node1")
    cache.get_or_create(STAGE, PARTS, _write)
    cache.get_or_create("other", PARTS, _write)
    assert cache.clear(STAGE) == 1
    assert [e.stage for e in cache.entries()] == ["other"]
    assert [e.stage for e in cache.staged_entries()] == ["other"]
    assert cache.clear() == 1
    assert cache.entries() == [] and cache.staged_entries() == []


def test_bench_cache_dir_may_be_a_url(url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", url)
    monkeypatch.setenv("BENCH_CACHE_STAGING", str(tmp_path / "staging"))
    cache = Cache()
    assert cache.is_remote and cache.location == url
    assert cache.root.parent == tmp_path / "staging"
    assert cache.datasets_dir().is_relative_to(tmp_path / "staging")
    # a plain path keeps today's behaviour: no store, no staging copy
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "plain"))
    plain = Cache()
    assert not plain.is_remote and plain.root == tmp_path / "plain"
    assert plain.location == str(tmp_path / "plain")


def test_a_missing_protocol_package_is_a_clear_error() -> None:
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here: the error for a missing package cannot occur")
    with pytest.raises(CacheError, match=r"needs s3fs.*pip install s3fs"):
        Cache("s3://bucket/cache")
    with pytest.raises(CacheError, match="Expected --cache-dir to be a directory or a URL"):
        Cache("nosuchprotocol://bucket/cache")


def test_the_command_line_keeps_the_url(tmp_path, monkeypatch, capsys) -> None:
    """`bench cache ls --cache-dir URL` reaches the store (a Path would have made the URL
    "file:/..."), and a missing package is exit 2 with the package named."""
    from bench.cli import main

    store = tmp_path / "store"
    monkeypatch.setenv("BENCH_CACHE_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    url = f"file://{store}"
    Cache(url).get_or_create(STAGE, PARTS, _write)
    assert main(["cache", "ls", "--cache-dir", url]) == 0
    out = capsys.readouterr().out
    assert "1 entries" in out and f"in {url}\n" in out
    assert str(tmp_path / "staging") in out
    assert (store / STAGE).is_dir()  # the store is the URL's directory, nothing else
    assert main(["--cache-dir", url, "cache", "clear"]) == 0
    assert "removed 1 entry from " + url in capsys.readouterr().out
    assert Cache(url).entries() == []
    if importlib.util.find_spec("s3fs") is None:
        assert main(["cache", "ls", "--cache-dir", "s3://bucket/cache"]) == 2
        assert "pip install s3fs" in capsys.readouterr().err


def test_range_jobs_carry_the_url_and_merge_through_the_store(url, tmp_path) -> None:
    """The recording split by image ranges, each part computed by a cache with its own staging
    directory (a worker on another node): the driver merges them from the store into the
    one-pass entry; the parts leave the store; a third node reads the record without
    recording."""
    from bench.record import PART_STAGE, RangeJob, _run_part, plan_range_jobs, record_cached
    from tests.bench.test_record import QUANTILES, ArrayProbe, make_images, tiny_target
    from tests.bench.test_record_ranges import LAYERS, assert_same_entry, entry_files

    probe = ArrayProbe(make_images(24))
    kwargs: dict[str, Any] = dict(k=5, topk_by=("max",), quantiles=QUANTILES, batch_size=8)
    one = record_cached(Cache(tmp_path / "one"), tiny_target(), probe, LAYERS, **kwargs)
    driver = Cache(url, staging=tmp_path / "driver")
    jobs = plan_range_jobs(driver, tiny_target(), probe, LAYERS, images_per_job=8, **kwargs)
    assert len(jobs) == 3 and {j.cache_root for j in jobs} == {url}
    assert RangeJob.from_json(json.loads(json.dumps(jobs[0].to_json()))).cache_root == url

    def on_other_nodes(fn, jobs):
        out = []
        for i, job in enumerate(jobs):
            worker = Cache(job.cache_root, staging=tmp_path / f"worker{i}")
            out.append(str(_run_part(job, worker, tiny_target(), probe)))
        return out

    merged = record_cached(
        driver, tiny_target(), probe, LAYERS, images_per_job=8, map_jobs=on_other_nodes, **kwargs
    )
    assert_same_entry(one, merged)
    assert entry_files(driver, merged.key) == entry_files(Cache(tmp_path / "one"), one.key)
    assert driver.entries(PART_STAGE) == []  # merged parts are removed from the store too
    third, target = Cache(url, staging=tmp_path / "third"), tiny_target()
    again = record_cached(third, target, probe, LAYERS, **kwargs)
    assert again.cached and target.model.calls == 0
    assert_same_entry(one, again)


def _run_config(tmp_path: Path, url: str, out: str, **extra: Any):
    from bench.api import RunConfig

    return RunConfig(
        methods=("netdissect",),
        layers=("layer1",),
        units="0-3",
        probe_options={"n_images": "20"},
        cache_dir=url,
        out=str(tmp_path / out),
        **extra,
    )


def test_a_run_on_a_url_cache_is_served_to_a_fresh_node(tmp_path, monkeypatch) -> None:
    """`bench run` (in-process) with a file:// cache, then the same run from another staging
    directory: the probe export, the recording and every description come from the store (the
    same record key: the probe's identity survives the copy), with equal records."""
    from bench.api import run
    from tests.bench.test_executors import records

    url = f"file://{tmp_path}/store"
    monkeypatch.setenv("BENCH_CACHE_STAGING", str(tmp_path / "node1"))
    first = run(_run_config(tmp_path, url, "run1"))
    assert not first.record_cached and first.exit_code == 0
    assert [(m.ok, m.computed, m.cached) for m in first.methods] == [(4, 4, 0)]
    state = json.loads((tmp_path / "run1" / "run.json").read_text())
    assert state["provenance"]["cache_dir"] == url  # the URL, not a mangled path
    monkeypatch.setenv("BENCH_CACHE_STAGING", str(tmp_path / "node2"))
    second = run(_run_config(tmp_path, url, "run2"))
    assert second.record_cached
    assert [(m.ok, m.computed, m.cached) for m in second.methods] == [(4, 0, 4)]
    keys = [
        json.loads((tmp_path / r / "run.json").read_text())["stages"]["record"]["key"]
        for r in ("run1", "run2")
    ]
    assert keys[0] == keys[1]
    assert records(tmp_path / "run2", "netdissect") == records(tmp_path / "run1", "netdissect")
    staged = {e.stage for e in Cache(url, staging=tmp_path / "node2").staged_entries()}
    assert {"synth-broden", "record"} <= staged


@pytest.mark.slow
def test_bench_run_with_two_workers_shares_a_file_url_cache(tmp_path) -> None:
    """The command line with --workers 2 (the recording as range jobs and the shards in spawned
    processes, all through the file:// store), then again from another staging directory."""
    url = f"file://{tmp_path}/store"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    outs, stdout = [], []
    for node in ("node1", "node2"):
        cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", "netdissect,depictions"]
        cmd += ["--layers", "layer1", "--probe-option", "n_images=40", "--no-suites"]
        cmd += ["--workers", "2", "--cache-dir", url, "--out", str(tmp_path / node)]
        done = subprocess.run(
            cmd,
            env={**env, "BENCH_CACHE_STAGING": str(tmp_path / f"staging-{node}")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(json.loads((tmp_path / node / "run.json").read_text()))
        stdout.append(done.stdout)
    from tests.bench.test_executors import records

    assert outs[0]["stages"]["record"]["key"] == outs[1]["stages"]["record"]["key"]
    assert [o["stages"]["record"]["cached"] for o in outs] == [False, True]
    # the second node computes no unit: every description (layer1's 16 units) is a store hit
    rows = {
        line.split()[0]: [int(v) for v in line.split()[1:6]]
        for line in stdout[1].splitlines()
        if line.split()[:1] in (["netdissect"], ["depictions"])
    }
    # ok, failed, computed, resumed, cached
    assert rows == {"netdissect": [16, 0, 0, 0, 16], "depictions": [16, 0, 0, 0, 16]}
    for method in ("netdissect", "depictions"):
        assert records(tmp_path / "node2", method) == records(tmp_path / "node1", method)
    store = Cache(url, staging=tmp_path / "inspect")
    stages = {e.stage for e in store.entries()}
    assert {"synth-broden", "record", "describe"} <= stages, stages
    assert "record-part" not in stages  # merged and removed
    assert store.temporaries() == []
