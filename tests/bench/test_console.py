"""The console: warnings and errors by default, INFO with -v, DEBUG with -vv; the libraries'
progress bars (huggingface_hub, transformers' "Loading weights") silenced below -v. Only the CLI
configures logging; each case runs in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, logging, sys
from bench.cli import configure_logging
configure_logging(verbose=int(sys.argv[1]))
log = logging.getLogger("bench.probe")
log.debug("a debug line")
log.info("an info line")
log.warning("a warning line")
from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils.logging import is_progress_bar_enabled
hub = not are_progress_bars_disabled()
print(json.dumps({"hub_bars": hub, "hf_bars": is_progress_bar_enabled()}))
"""


@pytest.mark.parametrize(
    ("verbose", "shown", "bars"),
    [
        (0, {"a warning line"}, False),
        (1, {"an info line", "a warning line"}, True),
        (2, {"a debug line", "an info line", "a warning line"}, True),
    ],
)
def test_verbosity_levels_and_library_bars(verbose: int, shown: set[str], bars: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(verbose)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {"a debug line", "an info line", "a warning line"}
    assert {line for line in lines if line in proc.stderr} == shown
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"hub_bars": bars, "hf_bars": bars}


def test_verbose_is_accepted_before_and_after_the_command() -> None:
    from bench.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["run"]).verbose == 0
    assert parse(["-v", "run"]).verbose == 1
    assert parse(["run", "-vv"]).verbose == 2
    assert parse(["-vv", "cache", "ls"]).verbose == 2
