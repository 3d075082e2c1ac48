"""Result value types and their JSON form.

Everything written to a run directory goes through here: JSON with sorted keys and stable float
formatting, so the same run gives byte-identical files. ``leaderboard/`` imports only this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1

Status = Literal["ok", "error"]
STATUSES: tuple[str, ...] = ("ok", "error")


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class UnitRef:
    """A unit: channel ``index`` (0-based) of layer ``layer``."""

    layer: str
    index: int

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"Expected a non-empty layer name, got {self.layer!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"Expected a unit index >= 0, got {self.index!r}")

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "index": self.index}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnitRef:
        return cls(layer=d["layer"], index=int(d["index"]))

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Description:
    """One method's description of one unit.

    ``label`` is the text shown and scored. ``score`` is the method's own confidence (IoU for
    NetDissect, log-probability for MILAN, ...), named by ``score_name``. ``extras`` is JSON.
    A failed unit has ``status="error"``, an empty label and the reason in ``error``.
    """

    unit: UnitRef
    label: str
    score: float | None = None
    score_name: str | None = None
    status: Status = "ok"
    extras: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.unit, UnitRef):
            raise ValueError(f"Expected unit to be a UnitRef, got {type(self.unit).__name__}")
        if not isinstance(self.label, str):
            raise ValueError(f"Expected label to be str, got {type(self.label).__name__}")
        if self.status not in STATUSES:
            raise ValueError(f"Expected status in {STATUSES}, got {self.status!r}")
        if self.status == "error" and not self.error:
            raise ValueError("A description with status='error' needs an error message")
        if self.score is not None and not isinstance(self.score, (int, float)):
            raise ValueError(f"Expected score to be a number or None, got {self.score!r}")
        if not isinstance(self.extras, dict):
            raise ValueError(f"Expected extras to be a dict, got {type(self.extras).__name__}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def replace(self, **changes: Any) -> Description:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit.to_json(),
            "label": self.label,
            "score": self.score,
            "score_name": self.score_name,
            "status": self.status,
            "extras": self.extras,
            "error": self.error,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Description:
        return cls(
            unit=UnitRef.from_json(d["unit"]),
            label=d["label"],
            score=d.get("score"),
            score_name=d.get("score_name"),
            status=d.get("status", "ok"),
            extras=d.get("extras") or {},
            error=d.get("error"),
            seconds=d.get("seconds"),
        )


# --- JSON -----------------------------------------------------------------------------------


def _normalise(obj: Any) -> Any:
    """Make ``obj`` JSON-safe with stable floats (repr-exact, NaN/inf as strings)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, dict):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_json"):
            return _normalise(obj.to_json())
        return _normalise(dataclasses.asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    # numpy scalars and arrays without importing numpy here
    if hasattr(obj, "tolist"):
        return _normalise(obj.tolist())
    if isinstance(obj, (set, frozenset)):
        return sorted(_normalise(v) for v in obj)
    raise TypeError(f"Expected a JSON-serialisable value, got {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Canonical JSON: sorted keys, no NaN literals, compact unless ``indent``."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(
        _normalise(obj),
        sort_keys=True,
        indent=indent,
        separators=separators,
        ensure_ascii=False,
        allow_nan=False,
    )


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write canonical, indented JSON atomically."""
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- JSONL of descriptions --------------------------------------------------------------------


def append_descriptions(path: str | os.PathLike[str], descriptions: Iterable[Description]) -> None:
    """Append descriptions to a JSONL file, one line each, flushed to disk before returning."""
    lines = "".join(dumps(d.to_json()) + "\n" for d in descriptions)
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read_descriptions(path: str | os.PathLike[str], *, repair: bool = False) -> list[Description]:
    """Read a ``units.jsonl`` file.

    A process killed mid-write can leave a truncated last line; with ``repair=True`` that line is
    dropped from the file (everything before it was fsynced whole). Any other bad line is an error.
    """
    from bench.errors import DataError

    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out: list[Description] = []
    good_bytes = 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
            continue
        try:
            out.append(Description.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            is_last = i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :])
            if repair and is_last and not raw.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
                break
            raise DataError(f"{path}: line {i + 1} is not a valid description ({e}).") from e
        good_bytes += len(line) + 1
    return out


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
