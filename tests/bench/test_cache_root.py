"""One cache root: a run given a cache directory writes nothing outside it and its run directory,
from Python (``RunConfig(cache_dir=X)``) and from the command line (``bench --cache-dir X``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = {"n_images": "60"}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty HOME and working directory, no cache variables set."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    for var in ("BENCH_CACHE_DIR", "XDG_CACHE_HOME", "MILAN_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return {"home": home, "work": work, "cache": tmp_path / "X", "out": tmp_path / "out"}


def _outside(paths: dict[str, Path]) -> list[str]:
    inside = (paths["cache"], paths["out"])
    found = _files(paths["home"]) | _files(paths["work"])
    return sorted(str(p) for p in found if not any(p.is_relative_to(r) for r in inside))


def test_python_run_with_a_cache_dir_writes_only_there(sandbox: dict[str, Path]) -> None:
    from bench.api import RunConfig, run

    result = run(
        RunConfig(
            methods=("netdissect", "depictions"),
            layers=("layer1",),
            units="0-3",
            probe_options=PROBE,
            cache_dir=str(sandbox["cache"]),
            out=str(sandbox["out"]),
        )
    )
    assert result.exit_code == 0
    assert (sandbox["out"] / "netdissect" / "units.jsonl").is_file()
    # the stage caches and the synthetic probe's export are all under X
    stages = {p.name for p in sandbox["cache"].iterdir()}
    assert {"record", "synth-broden"} <= stages, stages
    assert _outside(sandbox) == []


def test_cli_with_cache_dir_writes_only_there(sandbox: dict[str, Path]) -> None:
    drop = ("BENCH_CACHE_DIR", "XDG_CACHE_HOME", "MPLCONFIGDIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HOME"] = str(sandbox["home"])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench.cli", "--cache-dir", str(sandbox["cache"]), "run"]
    cmd += ["--methods", "netdissect,depictions", "--layers", "layer1,fc", "--units", "0-3"]
    cmd += ["--probe-option", "n_images=60", "--out", str(sandbox["out"])]
    cmd += ["--suites", "final-layer,planted", "--bootstrap", "200"]
    proc = subprocess.run(
        cmd, cwd=sandbox["work"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sandbox["out"] / "run.json").is_file()
    assert (sandbox["out"] / "suites" / "planted.json").is_file()  # scoring ran too
    assert (sandbox["cache"] / "record").is_dir()
    assert _outside(sandbox) == []
