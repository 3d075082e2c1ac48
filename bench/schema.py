"""Run values and their JSON form: units, descriptions, canonical JSON, atomic writes.

Everything written to a run directory goes through here: JSON with sorted keys and stable float
formatting, so the same run gives byte-identical files, written atomically (:func:`atomic_write`,
:func:`atomic_path`). Suite results and reading result files live in :mod:`bench.results`;
``leaderboard/`` imports only those two modules and :mod:`bench.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.errors import DataError, UsageError

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


# --- run.json -------------------------------------------------------------------------------

RUN_FILE = "run.json"
RunKind = Literal["run", "import"]
RUN_STATUSES: tuple[str, ...] = ("running", "complete", "failed")


@dataclass(kw_only=True)
class RunState:
    """What ``run.json`` holds; written by :meth:`save` only, read by :meth:`open`.

    ``kind``: ``"run"`` (``bench run``) or ``"import"`` (labels of another tool scored by
    ``bench score``); ``config``: the resolved configuration (its hash is ``run_id``);
    ``provenance``: python, platform, package versions, target and probe identities;
    ``stages``: per stage (``record``, ``method:<name>``) its status, timing and counts;
    ``status``: ``running``, ``complete`` or ``failed`` (with ``error``).
    """

    run_id: str
    kind: RunKind = "run"
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    created: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    seconds: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.status not in RUN_STATUSES:
            raise ValueError(f"Expected a run status in {RUN_STATUSES}, got {self.status!r}")
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "status": self.status,
            "config": self.config,
            "provenance": self.provenance,
        }
        if self.kind != "run":
            out["kind"] = self.kind
        optional = {
            "created": self.created,
            "stages": self.stages if self.kind == "run" else None,
            "summary": self.summary,
            "seconds": self.seconds,
            "error": self.error,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunState:
        return cls(
            run_id=str(d.get("run_id")),
            kind="import" if d.get("kind") == "import" else "run",
            config=dict(d.get("config") or {}),
            provenance=dict(d.get("provenance") or {}),
            status=str(d.get("status") or "running"),
            created=d.get("created"),
            stages={k: dict(v) for k, v in (d.get("stages") or {}).items()},
            summary=d.get("summary"),
            seconds=d.get("seconds"),
            error=d.get("error"),
        )

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike[str],
        run_id: str,
        *,
        kind: RunKind = "run",
        replace_failed: bool = False,
    ) -> RunState:
        """The state of ``run_dir`` for run ``run_id``: the one there (resuming), or a new one.

        A directory that holds another run (another configuration) is refused with a
        :class:`UsageError` saying what to do; so is an unreadable ``run.json``. With
        ``replace_failed``, another run that *failed* is replaced instead: its ``run.json``, its
        methods' ``units.jsonl`` and its ``suites/`` results are removed, nothing else."""
        import time

        path = Path(run_dir) / RUN_FILE
        if not path.exists():
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return cls(run_id=run_id, kind=kind, created=created if kind == "run" else None)
        try:
            state = cls.from_json(read_json(path))
        except (OSError, ValueError, AttributeError) as e:
            raise UsageError(
                f"{path} is not readable JSON ({e}); delete it or choose another --out."
            ) from e
        if state.run_id not in ("None", run_id) and replace_failed and state.status == "failed":
            import logging
            import shutil

            logging.getLogger(__name__).warning(
                "%s held run %s, which failed; replacing it with run %s.",
                run_dir,
                state.run_id,
                run_id,
            )
            for stage in state.stages:
                if stage.startswith("method:"):
                    (Path(run_dir) / stage.split(":", 1)[1] / "units.jsonl").unlink(missing_ok=True)
            shutil.rmtree(Path(run_dir) / "suites", ignore_errors=True)
            path.unlink(missing_ok=True)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return cls(run_id=run_id, kind=kind, created=created)
        if state.run_id not in ("None", run_id):
            raise UsageError(
                f"{run_dir} holds run {state.run_id} with a different configuration; "
                "choose another --out, or delete that directory."
            )
        state.run_id = run_id
        state.kind = kind
        return state

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run.json`` atomically; returns its path."""
        path = Path(run_dir) / RUN_FILE
        write_json(path, self.to_json())
        return path


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
    atomic_write(path, dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- Atomic writes ----------------------------------------------------------------------------


def _reserve_temp(path: Path) -> Path:
    """Create an empty, unique temporary file beside ``path`` and return its name.

    The name is ``.<stem>.tmp-<pid>-<random><suffix>``: unique per writer (threads and
    processes), hidden, and ending in ``path``'s suffix so that writers which choose a format by
    the extension (PIL, ``np.save``) write the right one. Created with ``O_EXCL`` and mode 0o666
    less the umask, so the final file has the permissions a plain ``open`` would give it.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(6)}{path.suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"Could not create a unique temporary file beside {path}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path``, for writers that need a file name
    (``np.save``, safetensors, PIL, memory maps); when the block ends, the file replaces ``path``
    in one step, so a reader sees the old content or the new, never half of either.

    The temporary file exists (empty) when the block starts; the writer overwrites it. Its name is
    unique per call, so concurrent writers of the same ``path`` never share a temporary file (the
    last to finish wins, whole). If the block raises, the temporary file is removed and ``path``
    is left as it was. ``fsync`` flushes the new file to disk before the rename (a crash then
    leaves the old or the new content, never an empty file). Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_temp(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) in one step; see
    :func:`atomic_path`. On failure ``path`` keeps its old content and no temporary file stays."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"Expected bytes or str to write, got {type(data).__name__}")
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


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
