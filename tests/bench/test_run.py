"""End to end: `bench run` on the embedded default, resume after a real kill, exit codes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.api import RunConfig, run
from bench.cli import main
from bench.schema import read_descriptions

REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
import os, time
from dataclasses import dataclass
from bench.schema import Description
from methods.base import Method, Requirements

LOG = os.environ["PLUGIN_LOG"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SlowConfig:
    delay: float = 0.4


class SlowEcho(Method):
    """Labels units slowly and logs every unit it computes."""
    name = "slow-echo"
    Config = SlowConfig
    chunk_size = 2
    # reads evidence, so the run records (and a resumed run must find the recording cached)
    requires = Requirements(evidence=frozenset({"topk"}))

    def _describe(self, units, evidence, ctx):
        time.sleep(self.config.delay)
        with open(LOG, "a") as f:
            f.write("".join(f"{u}\\n" for u in units))
        return [Description(unit=u, label=f"unit {u.index}") for u in units]


class Flaky(Method):
    """Fails on unit 1 of every layer."""
    name = "flaky"

    def _describe(self, units, evidence, ctx):
        if any(u.index == 1 for u in units):
            raise RuntimeError("unit 1 is cursed")
        return [Description(unit=u, label="fine") for u in units]
'''


@pytest.fixture()
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """An installed-looking third-party package with two methods in the group bench.methods."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bench_test_plugin.py").write_text(PLUGIN)
    dist = site / "bench_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bench.methods]\nslow-echo = bench_test_plugin:SlowEcho\nflaky = bench_test_plugin:Flaky\n"
    )
    return {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
        "PLUGIN_LOG": str(tmp_path / "computed.log"),
        "PYTHONUNBUFFERED": "1",
    }


def _bench(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        **kw,
    )


def test_default_run_writes_a_run_directory_and_reruns_from_cache(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cache = str(tmp_path / "cache")
    first = run(RunConfig(methods=("depictions",), out=str(out), cache_dir=cache))
    state = json.loads((out / "run.json").read_text())
    assert state["schema_version"] == 1 and state["status"] == "complete"
    assert state["config"]["target"] == "synth.resnet" and state["config"]["probe"] == "synthetic"
    assert state["provenance"]["target"]["weights_sha256"]
    assert state["provenance"]["versions"]["torch"]
    descs = read_descriptions(out / "depictions" / "units.jsonl")
    n_units = first.methods[0].ok
    assert len(descs) == n_units > 0
    assert {d.label for d in descs} == {"depiction"}
    assert len({d.unit for d in descs}) == len(descs)
    assert not first.record_cached and first.methods[0].computed == n_units
    assert first.recording == "none"

    second = run(RunConfig(methods=("depictions",), out=str(tmp_path / "run2"), cache_dir=cache))
    assert not second.record_cached  # depictions reads no evidence: nothing is recorded
    assert second.methods[0].computed == 0  # every chunk came from the describe cache
    assert second.methods[0].cached == n_units  # and is counted as such: the counts add up
    assert read_descriptions(tmp_path / "run2" / "depictions" / "units.jsonl") == descs


def test_the_summary_says_when_nothing_was_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run of a method that reads no evidence records nothing: the console says so (not
    "computed"), the first time and again when its descriptions come from the describe cache."""
    cache = str(tmp_path / "cache")
    for i in range(2):
        args = ["run", "--methods", "depictions", "--layers", "layer1", "--units", "0-3"]
        args += ["--probe-option", "n_images=20"]
        args += ["--no-suites", "--out", str(tmp_path / f"run{i}"), "--cache-dir", cache]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "recording: none (no method of the run reads evidence)" in out
        assert "recording: computed" not in out


def test_probe_options_reach_the_probe_and_run_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = RunConfig(
        methods=("depictions",),
        layers=("layer1",),
        units="0-1",
        probe_options={"max_images": "40"},
        out=str(out),
        cache_dir=str(tmp_path / "cache"),
    )
    assert run(config).exit_code == 0
    state = json.loads((out / "run.json").read_text())
    assert state["config"]["probe_options"] == {"max_images": "40"}
    assert state["provenance"]["probe"]["max_images"] == 40
    assert state["provenance"]["probe"]["num_images"] == 40


def test_killed_run_resumes_without_duplicates_or_recomputation(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    out = tmp_path / "run"
    log = Path(plugin_env["PLUGIN_LOG"])
    args = [
        "run",
        "--methods",
        "slow-echo",
        "--units",
        "0-9",
        "--layers",
        "layer1",
        "--out",
        str(out),
        "--no-progress",
        "--no-suites",  # resumption is the describe stage's; scoring is tested elsewhere
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        env=plugin_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().split()) >= 4:  # two chunks done
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_descriptions(out / "slow-echo" / "units.jsonl", repair=True)
    assert 2 <= len(before) < 10, "the kill should land mid-way"
    computed_before = log.read_text().split()

    done = _bench(["-v", *args], plugin_env, timeout=300)  # -v: INFO shows the cache hit
    assert done.returncode == 0, done.stderr
    assert "cache hit: record" in done.stderr, "the recording stage was recomputed"
    after = read_descriptions(out / "slow-echo" / "units.jsonl")
    units = [str(d.unit) for d in after]
    assert sorted(units) == sorted(f"layer1:{i}" for i in range(10))
    assert len(units) == len(set(units)), "a unit was written twice"
    recomputed = log.read_text().split()[len(computed_before) :]
    assert not set(recomputed) & {str(d.unit) for d in before}, "a finished unit was recomputed"
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("slow-echo"))
    ok, failed, computed, resumed = (int(v) for v in row[1:5])
    assert (ok, failed, resumed) == (10, 0, len(before))
    assert 0 < computed <= 10 - len(before)


def test_failed_units_exit_1_and_are_retried(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    args = ["run", "--methods", "flaky", "--units", "0-3", "--layers", "layer1", "--out", str(out)]
    args.append("--no-suites")  # the exit code and the retry are the describe stage's
    res = _bench(args, plugin_env, timeout=300)
    assert res.returncode == 1, res.stderr
    descs = read_descriptions(out / "flaky" / "units.jsonl")
    assert [d.status for d in descs] == ["ok", "error", "ok", "ok"]
    assert "unit 1 is cursed" in descs[1].error
    res = _bench(args, plugin_env, timeout=300)
    assert res.returncode == 1
    again = read_descriptions(out / "flaky" / "units.jsonl")
    assert len(again) == 4 and sorted(str(d.unit) for d in again) == [
        f"layer1:{i}" for i in range(4)
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--methods", "depictons"], "Did you mean 'depictions'?"),
        (["run", "--methods", "depictions", "--target", "resnet5"], "Did you mean 'resnet50'"),
        (["run", "--methods", "depictions", "--layers", "layer9"], "Unknown layer"),
        (["run", "--methods", "depictions", "--units", "0-99999"], "units"),
        (
            ["run", "--methods", "depictions", "--config", "depictions.colour=red"],
            "Unknown config field",
        ),
        (["run", "--methods", "depictions", "--probe", "brodn"], "Did you mean 'broden'"),
        (
            ["run", "--methods", "depictions", "--probe", "broden", "--probe-option", "colour=red"],
            "accepts: categories, index_file, max_images, name",
        ),
        (["run", "--methods", "depictions", "--probe-option", "max_images=many"], "integer"),
        (["run", "--methods", "depictions", "--probe-option", "max_images"], "KEY=VALUE"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, expected, capsys, tmp_path) -> None:
    code = main([*args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1


def test_offline_real_weights_fail_fast_and_clean(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t0 = time.perf_counter()
    code = main(
        ["run", "--methods", "depictions", "--target", "resnet50", "--out", str(tmp_path / "r")]
    )
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < 15
    assert "ResNet50_Weights.IMAGENET1K_V1" in err and "download.pytorch.org" in err
    assert "--weights" in err
    leftovers = [p for p in (tmp_path / "torch").rglob("*") if p.is_file()]
    assert leftovers == []


def test_list_and_cache_commands(capsys, tmp_path) -> None:
    assert main(["list", "methods"]) == 0
    assert "depictions" in capsys.readouterr().out
    assert main(["list", "targets"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "resnet18",
        "resnet50",
        "resnet101",
        "resnet152",
        "alexnet",
        "vgg16",
        "vit_b_16",
        "resnet18.places365",
        "synth.resnet",
    ):
        assert f"\n{name} " in f"\n{listed}", name
    assert main(["list", "probes"]) == 0
    assert {"broden", "synthetic", "cifar10", "imagenet-val"} <= set(
        capsys.readouterr().out.split()
    )
    cache = tmp_path / "c"
    (cache / "record" / "abc").mkdir(parents=True)
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "record" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
