"""The one parser of command-line ``KEY=VALUE`` items (``--config``, ``--suite-option``,
``--probe-option``, ``--component``, ``--component-option``, ``bench milan --config``).

Two shapes: ``FIELD=VALUE`` (:func:`parse_fields`) and ``OWNER.FIELD=VALUE``
(:func:`parse_owned_fields`, e.g. ``milan.beam_size=10``). A VALUE is parsed as JSON when it is
JSON (``10``, ``true``, ``[1, 2]``) and kept as text otherwise, unless ``text=True`` keeps every
value as text (probe options: their factory says how to parse them). A key given twice is an
error naming the flag; so is an item without ``=`` or without a key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.errors import UsageError

__all__ = ["parse_fields", "parse_owned_fields", "parse_value"]


def parse_value(raw: str) -> Any:
    """A command-line VALUE: parsed as JSON when it is JSON, else the text itself (stripped)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip()


def _split(item: str, flag: str, shape: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"Expected {flag} {shape}, got '{item}'.")
    return key, raw


def parse_fields(
    items: Sequence[str], flag: str, *, text: bool = False, shape: str = "FIELD=VALUE"
) -> dict[str, Any]:
    """``["beam_size=10", "strategy=beam"]`` -> ``{"beam_size": 10, "strategy": "beam"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, raw = _split(item, flag, shape)
        if key in out:
            raise UsageError(
                f"{flag} {key} is given twice; give it once (lists are comma-separated: {key}=a,b)."
            )
        out[key] = raw if text else parse_value(raw)
    return out


def parse_owned_fields(
    items: Sequence[str], flag: str, owner: str, *, field: str = "FIELD"
) -> dict[str, dict[str, Any]]:
    """``["milan.beam_size=10", "depictions.label=thing"]`` -> ``{"milan": {"beam_size": 10},
    "depictions": {"label": "thing"}}``; ``owner`` names the part before the dot in errors."""
    shape = f"{owner}.{field}=VALUE"
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, raw = _split(item, flag, shape)
        name, dot, rest = (s.strip() for s in key.partition("."))
        if not dot or not name or not rest:
            raise UsageError(f"Expected {flag} {shape}, got '{item}'.")
        fields = out.setdefault(name, {})
        if rest in fields:
            raise UsageError(f"{flag} {name}.{rest} is given twice; give it once.")
        fields[rest] = parse_value(raw)
    return out
