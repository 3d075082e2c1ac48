"""run.json tells the truth (issue 19, item 4): running / failed with the error / complete only
once the suites are scored; a failed run can be replaced; stale cache temporaries are cleaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cache import Cache
from bench.cli import main
from bench.errors import DataError

REPO = Path(__file__).resolve().parents[2]
FAST = ["run", "--methods", "depictions", "--no-progress"]


def _state(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_run_json_says_failed_with_the_error_and_a_failed_run_can_be_replaced(
    tmp_path, capsys, monkeypatch
) -> None:
    import bench.runner

    out = tmp_path / "run"

    def boom(*args: object, **kwargs: object) -> None:
        raise DataError("the disk ate the probe")

    monkeypatch.setattr(bench.runner, "_run_method", boom)
    assert main([*FAST, "--no-suites", "--out", str(out), "--units", "0-3"]) == 2
    state = _state(out)
    assert state["status"] == "failed"
    assert "the disk ate the probe" in state["error"]
    monkeypatch.undo()
    capsys.readouterr()
    # Another configuration in the same --out: the failed run is replaced, not a refusal.
    assert main([*FAST, "--no-suites", "--out", str(out), "--units", "0-1"]) == 0
    state = _state(out)
    assert state["status"] == "complete" and "error" not in state
    assert state["config"]["units"] == "0-1"
    lines = (out / "depictions" / "units.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(state["config"]["layers"])
    # A complete run of another configuration is still protected.
    assert main([*FAST, "--no-suites", "--out", str(out), "--units", "0-2"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_run_json_is_not_complete_when_scoring_is_killed(tmp_path) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "scoring"
    script = (
        "import sys, time, pathlib, bench.api\n"
        "def slow(*a, **k):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('x')\n"
        "    time.sleep(120)\n"
        "bench.api.score_run = slow\n"
        "from bench.cli import main\n"
        f"sys.exit(main({[*FAST, '--units', '0-1', '--out', str(out)]!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail("the run ended before scoring")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = _state(out)
    assert state["status"] == "running"  # never "complete": the suites did not finish
    assert state["stages"]["method:depictions"]["status"] == "done"


def test_stale_temporaries_are_cleaned_counted_and_cleared(tmp_path, capsys) -> None:
    cache_dir = tmp_path / "cache"
    stage = cache_dir / "record"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    old = time.time() - 3600
    stale = stage / f".tmp-abcdefabcdef-{dead_pid}-x1"
    fresh = stage / f".tmp-abcdefabcdef-{dead_pid}-x2"  # just killed: within the grace period
    held = stage / f".tmp-abcdefabcdef-{os.getpid()}-x3"  # a live writer
    for d in (stale, fresh, held):
        d.mkdir(parents=True)
        (d / "0.safetensors").write_bytes(b"\0" * 1000)
    os.utime(stale, (old, old))
    os.utime(held, (old, old))

    assert main(["cache", "ls", "--cache-dir", str(cache_dir)]) == 0
    listing = capsys.readouterr().out
    assert "3 temporary" in listing and "left by a killed run" in listing

    # The next run removes the stale one only.
    out = tmp_path / "run"
    assert main([*FAST, "--no-suites", "--units", "0", "--out", str(out),
                 "--cache-dir", str(cache_dir)]) == 0  # fmt: skip
    assert not stale.exists() and fresh.exists() and held.exists()

    # clear removes what no live process holds.
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert not fresh.exists() and held.exists()
    assert [t.path for t in Cache(cache_dir).temporaries()] == [held]
