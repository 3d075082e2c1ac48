"""The Method template: requirement checks, validation, per-unit failure isolation, configs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from bench.cache import Cache
from bench.errors import ConfigError, RequirementError, UsageError
from bench.evidence import Evidence, LayerEvidence, TopK
from bench.schema import Description, UnitRef
from bench.testing import TinyProbe
from methods.base import Method, MethodContext, Requirements


def _evidence(n_units: int = 4, has_segs: bool = True) -> Evidence:
    k, n = 3, 5
    le = LayerEvidence(
        layer="conv",
        num_units=n_units,
        map_shape=(2, 2),
        topk={
            "max": TopK(
                indices=np.zeros((n_units, k), np.int64),
                values=np.zeros((n_units, k), np.float32),
                maps=np.zeros((n_units, k, 2, 2), np.float32),
            )
        },
        thresholds={},
        pooled_max=np.zeros((n, n_units), np.float32),
        pooled_mean=np.zeros((n, n_units), np.float32),
    )
    probe = TinyProbe(n=n)
    probe.has_segmentations = has_segs
    return Evidence(target=None, probe=probe, layers={"conv": le}, key="ev")


def _units(n: int = 4) -> list[UnitRef]:
    return [UnitRef(layer="conv", index=i) for i in range(n)]


@dataclass(frozen=True, kw_only=True, slots=True)
class EchoConfig:
    prefix: str = "unit"
    fail_on: int = -1
    nan_on: int = -1


class Echo(Method):
    name = "echo"
    Config = EchoConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.calls: list[list[int]] = []

    def _describe(self, units, evidence, ctx):
        self.calls.append([u.index for u in units])
        if any(u.index == self.config.fail_on for u in units):
            raise RuntimeError(f"cannot describe unit {self.config.fail_on}")
        return [
            Description(
                unit=u,
                label=f"{self.config.prefix} {u.index}",
                score=math.nan if u.index == self.config.nan_on else 1.0,
            )
            for u in units
        ]


def _ctx(tmp_path) -> MethodContext:
    return MethodContext(cache=Cache(tmp_path))


def test_describe_is_final() -> None:
    with pytest.raises(TypeError, match="final"):

        class Bad(Method):  # noqa: F841
            name = "bad"

            def describe(self, units, evidence, ctx):
                return []

            def _describe(self, units, evidence, ctx):
                return []


def test_one_description_per_unit_with_timing(tmp_path) -> None:
    out = Echo().describe(_units(), _evidence(), _ctx(tmp_path))
    assert [d.label for d in out] == ["unit 0", "unit 1", "unit 2", "unit 3"]
    assert all(d.ok and d.seconds is not None and d.seconds >= 0 for d in out)


def test_failure_is_isolated_to_its_unit(tmp_path) -> None:
    m = Echo(fail_on=2)
    out = m.describe(_units(), _evidence(), _ctx(tmp_path))
    assert [d.status for d in out] == ["ok", "ok", "error", "ok"]
    assert "cannot describe unit 2" in out[2].error
    assert out[2].label == ""
    assert m.calls[0] == [0, 1, 2, 3] and sorted(m.calls[1:]) == [[0], [1], [2], [3]]


def test_non_finite_score_becomes_an_error(tmp_path) -> None:
    out = Echo(nan_on=1).describe(_units(), _evidence(), _ctx(tmp_path))
    assert out[1].status == "error" and "non-finite" in out[1].error
    assert out[0].ok


def test_wrong_output_is_caught(tmp_path) -> None:
    class Short(Method):
        name = "short"

        def _describe(self, units, evidence, ctx):
            return [Description(unit=UnitRef(layer="conv", index=0), label="x")]

    out = Short().describe(_units(2), _evidence(), _ctx(tmp_path))
    # the batch broke the contract; unit by unit, unit 0 succeeds and unit 1 gets a foreign unit
    assert out[0].ok
    assert out[1].status == "error" and "conv:0" in out[1].error


def test_config_overrides_and_unknown_fields() -> None:
    assert Echo(prefix="neuron").config.prefix == "neuron"
    with pytest.raises(ConfigError, match=r"Unknown config field\(s\) \['beam'\]"):
        Echo(beam=3)
    assert Echo().identity() == {
        "name": "echo",
        "version": "1",
        "config": {"prefix": "unit", "fail_on": -1, "nan_on": -1},
    }


def test_requirement_checks(tmp_path) -> None:
    class NeedsSegs(Echo):
        name = "needs-segs"
        requires = Requirements(evidence=frozenset({"segmentations"}))

    class NeedsCaptioner(Echo):
        name = "needs-captioner"
        requires = Requirements(components=frozenset({"captioner"}))

    with pytest.raises(RequirementError, match="per-pixel concept segmentations"):
        NeedsSegs().describe(_units(), _evidence(has_segs=False), _ctx(tmp_path))
    with pytest.raises(RequirementError, match="needs components \\['captioner'\\]"):
        NeedsCaptioner().describe(_units(), _evidence(), _ctx(tmp_path))
    with pytest.raises(RequirementError, match="has 4 units"):
        Echo().describe([UnitRef(layer="conv", index=9)], _evidence(), _ctx(tmp_path))
    with pytest.raises(RequirementError, match="not recorded"):
        Echo().describe([UnitRef(layer="fc", index=0)], _evidence(), _ctx(tmp_path))


# --- the contract in the core; old-style plug-ins; the baseline through the registry -----------


def test_old_style_plugin_through_methods_base_conforms(tmp_path) -> None:
    """A third-party plug-in written against ``methods.base`` with ``Config = ...`` (no type
    parameter) still builds its config and passes the conformance suite."""
    import methods.base as mb
    from bench import method as core
    from bench.testing import check_method

    assert mb.Method is core.Method and mb.MethodContext is core.MethodContext

    @dataclass(frozen=True, kw_only=True, slots=True)
    class TagConfig:
        tag: str = "top"

    class Tag(mb.Method):
        name = "tag-plugin"
        Config = TagConfig
        requires = mb.Requirements(evidence=frozenset({"topk"}))

        def _describe(self, units, evidence, ctx):
            tops = {u: evidence.layer(u.layer).top("max").indices[u.index, 0] for u in units}
            return [Description(unit=u, label=f"{self.config.tag} #{tops[u]}") for u in units]

    assert Tag().config == TagConfig() and Tag(tag="x").config.tag == "x"
    with pytest.raises(ConfigError, match="tagg"):
        Tag(tagg="x")
    out = check_method(Tag, tmp_path)
    assert all(d.label.startswith("top #") for d in out)


def test_config_comes_from_the_type_parameter() -> None:
    from bench.method import Method as CoreMethod
    from bench.method import NoConfig

    class Param(CoreMethod[EchoConfig]):
        name = "param"

        def _describe(self, units, evidence, ctx):
            return []

    assert Param.Config is EchoConfig
    assert Param(prefix="p").config == EchoConfig(prefix="p")
    assert Echo.Config is EchoConfig and Method.Config is NoConfig
    with pytest.raises(ConfigError, match="Expected a EchoConfig for method 'param'"):
        Param(config=NoConfig())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not its type parameter"):

        class Mismatch(CoreMethod[EchoConfig]):
            name = "mismatch"
            Config = NoConfig  # type: ignore[assignment]

            def _describe(self, units, evidence, ctx):
                return []


def test_the_baseline_is_found_through_the_registry() -> None:
    from bench.method import Baseline
    from bench.registry import METHODS
    from bench.suites.scoring import BASELINE, baseline_labels, method_kind

    @dataclass(frozen=True, kw_only=True, slots=True)
    class BlankConfig:
        label: str = "anything"

    class Blank(Baseline[BlankConfig]):
        name = "blank-baseline"

        def constant_label(self) -> str:
            return self.config.label

    assert method_kind("depictions") == "baseline" and method_kind("netdissect") == "method"
    METHODS.register("blank-baseline", Blank)
    METHODS.register("echo", Echo)
    try:
        assert method_kind("blank-baseline") == "baseline"
        assert method_kind("echo") == "method"
        labels = baseline_labels("blank-baseline")
        assert labels.constant == "anything" and labels.info.kind == "baseline"
        assert labels.info.name == "blank-baseline"
        with pytest.raises(UsageError, match="bench.method.Baseline"):
            baseline_labels("echo")
    finally:
        METHODS.unregister("blank-baseline")
        METHODS.unregister("echo")
    # The suites' default baseline is whatever "depictions" resolves to in the registry.
    original = METHODS._entries[BASELINE]
    METHODS.unregister(BASELINE)

    class Other(Baseline[BlankConfig]):
        name = BASELINE

        def constant_label(self) -> str:
            return "replaced"

    METHODS.register(BASELINE, Other)
    try:
        assert baseline_labels().constant == "replaced"
    finally:
        METHODS.unregister(BASELINE)
        METHODS.register(BASELINE, original)
    assert baseline_labels().constant == "depiction"
