"""run.json has one typed writer (bench.schema.RunState) for runs and imported labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.errors import UsageError
from bench.results import RunIdentity
from bench.schema import RUN_FILE, SCHEMA_VERSION, RunState


def test_a_new_run_state_is_saved_and_resumed(tmp_path: Path) -> None:
    state = RunState.open(tmp_path, "abc123")
    assert state.created and state.stages == {} and state.status == "running"
    state.config = {"target": "synth.resnet", "probe": "synthetic", "seed": 0}
    state.stages["record"] = {"status": "done", "cached": False}
    state.save(tmp_path)
    raw = json.loads((tmp_path / RUN_FILE).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["run_id"] == "abc123"
    assert "kind" not in raw  # runs keep the file's established shape
    again = RunState.open(tmp_path, "abc123")
    assert again.stages == {"record": {"status": "done", "cached": False}}
    assert again.created == state.created
    ident = RunIdentity.from_run_state(again.to_json())
    assert (ident.run_id, ident.target, ident.probe) == ("abc123", "synth.resnet", "synthetic")


def test_another_configuration_in_the_directory_is_refused(tmp_path: Path) -> None:
    RunState.open(tmp_path, "first").save(tmp_path)
    with pytest.raises(UsageError, match="holds run first with a different configuration"):
        RunState.open(tmp_path, "second")


def test_an_unreadable_run_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        RunState.open(tmp_path, "x")


def test_imports_are_marked_and_carry_no_stages(tmp_path: Path) -> None:
    state = RunState.open(tmp_path, "imp1", kind="import")
    state.status = "complete"
    state.config = {"name": "milan", "target": "resnet50", "probe": None}
    state.save(tmp_path)
    raw = json.loads((tmp_path / RUN_FILE).read_text())
    assert raw["kind"] == "import" and "stages" not in raw and "created" not in raw


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="run status"):
        RunState(run_id="x", status="done").to_json()
