"""The local executor: `bench run` in-process (the default) and with a pool of ``--workers``
processes. Neither imports Ray; the pool's records and recording equal the in-process run's.
(The Ray executor: tests/bench/test_ray_executor.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.api import RunConfig, run
from bench.cache import Cache
from bench.executors import ExecutorError, LocalExecutor
from bench.schema import read_descriptions
from tests.bench.ray_plugin import die_once
from tests.bench.test_record_ranges import entry_files

REPO = Path(__file__).resolve().parents[2]
#: The synthetic probe, smaller than its default 2,000 images (a cheaper recording).
PROBE_OPTIONS = {"n_images": "40"}


def test_bench_run_without_the_ray_executor_never_imports_ray(tmp_path: Path) -> None:
    """A whole `bench run` (recording, NetDissect, the baseline, a suite, the leaderboard) in a
    fresh interpreter: Ray is not in sys.modules afterwards."""
    script = (
        "import sys\n"
        "from bench.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('ray imported:', 'ray' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    args = [
        "run",
        "--methods", "netdissect,depictions",
        "--layers", "layer1",
        "--units", "0-3",
        "--probe-option", "n_images=20",
        "--suites", "faithfulness",
        "--out", str(tmp_path / "run"),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "run" / "suites" / "faithfulness.json").is_file()
    assert "ray imported: False" in done.stdout


def records(run_dir: Path, method: str) -> dict[str, dict[str, Any]]:
    """The method's units.jsonl as JSON by unit, timings aside (records are appended as shards
    complete: their order depends on the executor)."""
    out = {}
    for d in read_descriptions(run_dir / method / "units.jsonl"):
        j = d.to_json()
        j.pop("seconds", None)
        assert str(d.unit) not in out, f"{d.unit} twice in {method}/units.jsonl"
        out[str(d.unit)] = j
    return out


def test_a_pool_of_two_workers_equals_the_in_process_run(tmp_path: Path) -> None:
    """--workers 2: the recording runs as a range job and the shards in two spawned processes
    (separate caches: nothing is a cache hit); records and recording equal the in-process run's."""
    common: dict[str, Any] = {
        "methods": ("netdissect", "depictions"),
        "layers": ("layer1", "fc"),
        "probe_options": PROBE_OPTIONS,
    }
    keys = {}
    for workers in (None, 2):
        cache = tmp_path / f"cache-{workers}"
        if workers:
            # The same probe set: its identity hashes its files' modification times, so the
            # second cache gets a copy of the first one's export (copytree keeps the times).
            shutil.copytree(tmp_path / "cache-None" / "synth-broden", cache / "synth-broden")
        out = tmp_path / f"run-{workers}"
        result = run(RunConfig(**common, workers=workers, out=str(out), cache_dir=str(cache)))
        assert not result.record_cached
        assert [(m.ok, m.error, m.computed, m.cached) for m in result.methods] == [
            (64, 0, 64, 0)
        ] * 2
        keys[workers] = json.loads((out / "run.json").read_text())["stages"]["record"]["key"]
    assert keys[2] == keys[None]
    for method in ("netdissect", "depictions"):
        assert records(tmp_path / "run-2", method) == records(tmp_path / "run-None", method)
    assert entry_files(Cache(tmp_path / "cache-2"), keys[2]) == entry_files(
        Cache(tmp_path / "cache-None"), keys[None]
    )


def test_a_pool_replaces_a_worker_killed_mid_job(tmp_path: Path) -> None:
    """A pool process SIGKILLed under a job breaks the pool: a new one runs the jobs that had
    no result, every result arrives once, and the pool serves later calls. A job that kills
    every worker it meets gives up after max_attempts."""
    control = str(tmp_path)
    with LocalExecutor(workers=2) as ex:
        assert not ex.in_process
        assert ex.map(die_once, [(control, i, False) for i in range(6)]) == [0, 2, 4, 6, 8, 10]
        assert (tmp_path / "died").exists()  # a worker did die under job 0
        assert ex.map(die_once, [(control, 7, False)]) == [14]
    with LocalExecutor(workers=2, max_attempts=2) as ex:
        with pytest.raises(ExecutorError, match="died 2 times"):
            ex.map(die_once, [(control, 0, True), (control, 1, False)])
