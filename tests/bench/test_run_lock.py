"""Concurrent runs: a run directory is written by one process at a time (the second gets a clear
error naming the holder, exit 2), a stale lock is taken over, and runs sharing one cache (with
different run directories) both succeed. Real processes throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import RunLockedError
from bench.runlock import LOCK_FILE, file_lock, read_holder, run_lock
from bench.schema import read_descriptions

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--probe-option",
    "n_images=120",
    "--layers",
    "layer1",
    "--units",
    "0-3",
    "--no-suites",
    "--no-progress",
]

GATE_PLUGIN = '''
import os, time
from bench.schema import Description
from methods.base import Method


class Gate(Method):
    """Waits until the file $GATE_FILE exists, then labels its units."""
    name = "gate"

    def _describe(self, units, evidence, ctx):
        deadline = time.monotonic() + 300
        while not os.path.exists(os.environ["GATE_FILE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [Description(unit=u, label="gated") for u in units]
'''


def _env(tmp_path: Path, cache: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "bench_gate_plugin.py").write_text(GATE_PLUGIN)
    dist = site / "bench_gate_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-gate-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.methods]\ngate = bench_gate_plugin:Gate\n")
    return {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
        "BENCH_CACHE_DIR": str(cache),
        "GATE_FILE": str(tmp_path / "gate-open"),
    }


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_to_exit(procs: list[subprocess.Popen[str]], timeout: float) -> subprocess.Popen[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.05)
    for p in procs:
        p.kill()
    raise AssertionError("neither run exited")


def test_two_runs_on_one_directory_one_wins_the_other_exits_2(tmp_path: Path) -> None:
    env = _env(tmp_path, tmp_path / "cache")
    out = tmp_path / "run"
    args = ["--methods", "netdissect,gate", "--out", str(out), *SMALL]
    procs = [_start(args, env), _start(args, env)]
    try:
        # The winner blocks in `gate` until the gate opens, so the loser must meet its lock.
        loser = _first_to_exit(procs, timeout=300)
        winner = procs[1 - procs.index(loser)]
        _, err = loser.communicate()
        assert loser.returncode == 2, err
        assert "Traceback" not in err
        assert f"is being written by process {winner.pid} on host" in err, err
        assert winner.poll() is None  # still holding the directory
        holder = read_holder(out / LOCK_FILE)
        assert holder is not None and holder["pid"] == winner.pid
    finally:
        (tmp_path / "gate-open").touch()
    w_out, w_err = winner.communicate(timeout=300)
    assert winner.returncode == 0, w_err
    assert not (out / LOCK_FILE).exists()  # released on exit
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "complete"
    for method in ("netdissect", "gate"):
        units = read_descriptions(out / method / "units.jsonl")
        assert sorted(u.unit.index for u in units) == [0, 1, 2, 3]
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name]


def test_two_runs_sharing_a_cache_both_succeed(tmp_path: Path) -> None:
    env = _env(tmp_path, tmp_path / "shared-cache")
    (tmp_path / "gate-open").touch()
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        _start(["--methods", "netdissect,depictions", "--out", str(o), *SMALL], env) for o in outs
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "I bench" not in err  # INFO messages only with -v
    for method in ("netdissect", "depictions"):
        a, b = (read_descriptions(o / method / "units.jsonl") for o in outs)
        # the same labels, scores and evidence (only the timing may differ)
        assert [_timeless(d.to_json()) for d in a] == [_timeless(d.to_json()) for d in b]
        assert len(a) == 4
    cache = tmp_path / "shared-cache"
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]


def _timeless(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "seconds"}


HOLD = """
import sys, time
from bench.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_lock_held_by_a_live_process_is_refused_and_a_dead_ones_is_taken_over(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on host") as e:
            with run_lock(run_dir):
                pass
        assert e.value.exit_code == 2
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock file stays, with its details, but nobody holds it any more.
    stale = read_holder(run_dir / LOCK_FILE)
    assert stale is not None and stale["pid"] == holder.pid
    with run_lock(run_dir):
        mine = read_holder(run_dir / LOCK_FILE)
        assert mine is not None and mine["pid"] == os.getpid()
        with run_lock(run_dir):  # re-entrant within a process
            pass
        assert (run_dir / LOCK_FILE).exists()
    assert not (run_dir / LOCK_FILE).exists()


def test_file_lock_makes_a_second_process_wait(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import sys, time; from bench.runlock import file_lock\n"
        "with file_lock(sys.argv[1]):\n"
        "    open(sys.argv[2], 'a').write('in\\n'); time.sleep(0.5)\n"
        "    open(sys.argv[2], 'a').write('out\\n')\n"
    )
    trace = tmp_path / "trace.txt"
    with file_lock(lock):
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(lock), str(trace)], env=env)
            for _ in range(2)
        ]
        time.sleep(1.0)
        assert not trace.exists()  # both wait for this process
    for p in procs:
        assert p.wait(timeout=120) == 0
    # never two holders at once: entries strictly alternate
    assert trace.read_text().split() == ["in", "out", "in", "out"]
