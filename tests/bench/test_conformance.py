"""Every registered method passes the conformance suite that ships as bench.testing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench.registry import METHODS
from bench.schema import Description
from bench.testing import (
    TinyProbe,
    check_method,
    tiny_evidence,
    tiny_target,
    write_tiny_milannotations,
)
from methods.base import Method, make_config


@pytest.fixture(scope="module")
def milan_annotations(tmp_path_factory) -> dict:
    """MILAN trains in its fit: on a tiny MILANNOTATIONS key in the released format, briefly."""
    root = tmp_path_factory.mktemp("milannotations")
    key = write_tiny_milannotations(root)
    return dict(
        train_keys=key,
        annotations_root=str(root),
        encoder="synthetic",
        max_epochs=8,
        patience=5,
        batch_size=16,
        beam_size=5,
    )


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_conforms(name: str, tmp_path, request) -> None:
    cls = METHODS.get(name)
    config = None
    if name.startswith("milan"):
        config = make_config(cls.Config, request.getfixturevalue("milan_annotations"))
    check_method(cls, tmp_path, config=config)


def test_tiny_world_is_what_it_claims(tmp_path) -> None:
    """The red/green/blue detectors fire on their colour's squares: the kit's ground truth."""
    from bench.cache import Cache

    ev = tiny_evidence(Cache(tmp_path))
    conv = ev.layer("conv")
    probe = TinyProbe()
    for unit, colour in enumerate(("red", "green", "blue")):
        top = conv.top("max").indices[unit]
        assert all(probe._colour(int(i)) == colour for i in top[:5]), (unit, colour)
    assert tiny_target().class_names == ("red", "green", "blue")


def test_conformance_catches_a_nondeterministic_method(tmp_path) -> None:
    class Dice(Method):
        name = "dice"

        def _describe(self, units, evidence, ctx):
            return [Description(unit=u, label=f"face {random.randint(1, 10**9)}") for u in units]

    with pytest.raises(AssertionError, match="same seed gave different labels"):
        check_method(Dice, tmp_path)


def test_conformance_catches_an_empty_label(tmp_path) -> None:
    class Mute(Method):
        name = "mute"

        def _describe(self, units, evidence, ctx):
            return [Description(unit=u, label=" ") for u in units]

    with pytest.raises(AssertionError, match="empty label"):
        check_method(Mute, tmp_path)


ENTRY_POINT_PLUGIN = """
from dataclasses import dataclass

from bench.schema import Description
from methods.base import Method, Requirements


@dataclass(frozen=True, kw_only=True, slots=True)
class TopConfig:
    prefix: str = "top"


class Top(Method[TopConfig]):
    name = "ep-top"
    requires = Requirements(evidence=frozenset({"topk"}))

    def _describe(self, units, evidence, ctx):
        tops = {u: evidence.layer(u.layer).top("max").indices[u.index, 0] for u in units}
        return [Description(unit=u, label=f"{self.config.prefix} #{tops[u]}") for u in units]
"""


def test_an_entry_point_plugin_conforms(tmp_path) -> None:
    """A third-party package registered only through the entry-point group ``bench.methods``
    (written against ``methods.base``) is found by name and passes the conformance suite, in a
    fresh interpreter where nothing registered it by hand."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "ep_top_plugin.py").write_text(ENTRY_POINT_PLUGIN)
    dist = site / "ep_top_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-top-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.methods]\nep-top = ep_top_plugin:Top\n")
    code = (
        "import sys\n"
        "from bench.registry import METHODS\n"
        "from bench.testing import check_method\n"
        "cls = METHODS.get('ep-top')\n"
        "out = check_method(cls, sys.argv[1])\n"
        "print(cls.__module__, len(out), sorted({d.label.split(' #')[0] for d in out}))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, n, prefixes = proc.stdout.split(maxsplit=2)
    assert module == "ep_top_plugin" and int(n) > 0 and prefixes.strip() == "['top']"
