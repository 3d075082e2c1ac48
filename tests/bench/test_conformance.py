"""Every registered method passes the conformance suite that ships as bench.testing."""

from __future__ import annotations

import random

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
