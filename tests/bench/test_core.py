"""Registry, errors, schema and cache: the contracts everything else stands on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.cache import Cache, content_key, load_arrays, save_arrays
from bench.errors import CacheError, DataError, UnknownNameError, UsageError
from bench.registry import METHODS, Registry
from bench.schema import (
    Description,
    UnitRef,
    append_descriptions,
    dumps,
    read_descriptions,
)
from methods.base import Method, Requirements

# --- registry -----------------------------------------------------------------------------------


def test_registry_lazy_entry_and_did_you_mean() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("json-dumps", "json:dumps")
    assert reg.get("json-dumps") is json.dumps
    with pytest.raises(UnknownNameError) as e:
        reg.get("json-dump")
    msg = str(e.value)
    assert "Unknown widget 'json-dump'" in msg
    assert "Did you mean 'json-dumps'?" in msg
    assert "Available: json-dumps" in msg


def test_registry_duplicate_name_is_an_error() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("a", int)
    reg.register("a", int)  # the same object again is harmless
    with pytest.raises(UsageError, match="already registered"):
        reg.register("a", float)


def test_registry_decorator_and_base_class_check() -> None:
    reg = Registry("method", check=lambda name, obj: None)

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing
    with pytest.raises(UsageError, match="subclass of bench.method.Method"):
        METHODS.register("not-a-method", dict)
    assert "not-a-method" not in METHODS


def test_method_name_must_match_key() -> None:
    class Named(Method):
        name = "named"

        def _describe(self, units, evidence, ctx):  # pragma: no cover - never called
            return []

    with pytest.raises(UsageError, match="must equal the registry key"):
        METHODS.register("other-name", Named)


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError) as e:
        METHODS.get("depictoins")
    assert "Did you mean 'depictions'?" in str(e.value)


def test_entry_point_discovery(tmp_path) -> None:
    """A third-party package's method in the group ``bench.methods`` is found by name."""
    pkg = tmp_path / "thirdparty_methods.py"
    pkg.write_text(
        "from methods.base import Method\n"
        "from bench.schema import Description\n"
        "class Plugin(Method):\n"
        "    name = 'plugin-method'\n"
        "    def _describe(self, units, evidence, ctx):\n"
        "        return [Description(unit=u, label='plugged') for u in units]\n"
    )
    dist = tmp_path / "thirdparty_methods-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-methods\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[bench.methods]\nplugin-method = thirdparty_methods:Plugin\n"
    )
    code = (
        "from bench.registry import METHODS\n"
        "cls = METHODS.get('plugin-method')\n"
        "print(cls.__module__, cls.name, 'plugin-method' in METHODS.names())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["thirdparty_methods", "plugin-method", "True"]


# --- schema ---------------------------------------------------------------------------------


def test_unitref_validation() -> None:
    assert str(UnitRef(layer="layer4", index=3)) == "layer4:3"
    with pytest.raises(ValueError):
        UnitRef(layer="layer4", index=-1)
    with pytest.raises(ValueError):
        UnitRef(layer="", index=0)


def test_description_round_trip_and_validation() -> None:
    d = Description(
        unit=UnitRef(layer="l", index=1),
        label="red",
        score=0.25,
        score_name="iou",
        extras={"per_category": {"color": 0.25}},
    )
    assert Description.from_json(json.loads(dumps(d.to_json()))) == d
    with pytest.raises(ValueError, match="needs an error message"):
        Description(unit=UnitRef(layer="l", index=1), label="", status="error")
    with pytest.raises(ValueError, match="status"):
        Description(unit=UnitRef(layer="l", index=1), label="x", status="fine")  # type: ignore[arg-type]


def test_dumps_is_canonical() -> None:
    a = dumps({"b": 1.5, "a": [np.float32(0.5), np.int64(3)], "c": float("nan")})
    b = dumps({"c": float("nan"), "a": [0.5, 3], "b": 1.5})
    assert a == b == '{"a":[0.5,3],"b":1.5,"c":"NaN"}'


def test_jsonl_repair_drops_only_a_truncated_tail(tmp_path) -> None:
    path = tmp_path / "units.jsonl"
    ds = [Description(unit=UnitRef(layer="l", index=i), label=f"u{i}") for i in range(3)]
    append_descriptions(path, ds)
    with open(path, "a") as f:
        f.write('{"unit": {"layer": "l", "ind')  # a kill mid-write
    with pytest.raises(DataError, match="line 4"):
        read_descriptions(path)
    assert read_descriptions(path, repair=True) == ds
    assert read_descriptions(path) == ds  # the file itself was repaired
    path.write_text(path.read_text() + "not json\n" + dumps(ds[0].to_json()) + "\n")
    with pytest.raises(DataError):  # a bad line in the middle is never silently dropped
        read_descriptions(path, repair=True)


# --- cache ------------------------------------------------------------------------------------


def test_cache_key_changes_with_every_part() -> None:
    parts = {"target": {"weights_sha256": "abc"}, "layers": ["a", "b"], "k": 15, "seed": 0}
    base = content_key("record", parts)
    assert content_key("record", dict(parts)) == base
    assert content_key("describe", parts) != base
    for key, new in [
        ("target", {"weights_sha256": "abd"}),
        ("layers", ["a"]),
        ("k", 16),
        ("seed", 1),
    ]:
        assert content_key("record", {**parts, key: new}) != base, key
    assert content_key("record", {**parts, "extra": None}) != base


def test_cache_store_load_and_corruption(tmp_path, caplog) -> None:
    cache = Cache(tmp_path)
    calls = []

    def write(d):
        calls.append(1)
        save_arrays(d / "x.safetensors", {"x": np.arange(10, dtype=np.float32)})
        (d / "meta.json").write_text('{"ok": true}')

    path, hit = cache.get_or_create("record", {"a": 1}, write)
    assert not hit and len(calls) == 1
    path2, hit = cache.get_or_create("record", {"a": 1}, write)
    assert hit and path2 == path and len(calls) == 1
    np.testing.assert_array_equal(load_arrays(path / "x.safetensors")["x"], np.arange(10))

    # Flip one byte: detected, removed, recomputed.
    f = path / "x.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        _, hit = cache.get_or_create("record", {"a": 1}, write)
    assert not hit and len(calls) == 2
    assert "corrupt" in caplog.text

    # A missing manifest is corruption too.
    (path / "manifest.json").unlink()
    _, hit = cache.get_or_create("record", {"a": 1}, write)
    assert not hit and len(calls) == 3

    assert [e.stage for e in cache.entries()] == ["record"]
    assert cache.clear() == 1 and cache.entries() == []


def test_cache_write_failure_leaves_nothing(tmp_path) -> None:
    cache = Cache(tmp_path)

    def broken(d):
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cache.get_or_create("record", {"a": 2}, broken)
    assert cache.entries() == []
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "record").iterdir())


def test_unreadable_arrays_are_a_cache_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CacheError, match="Delete the file"):
        load_arrays(bad)


# --- requirements -----------------------------------------------------------------------------


def test_requirements_reject_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="Unknown evidence kinds"):
        Requirements(evidence=frozenset({"telepathy"}))
    with pytest.raises(ValueError, match="Unknown components"):
        Requirements(components=frozenset({"oracle"}))
