"""The one atomic-write helper (``bench.schema.atomic_write`` / ``atomic_path``) and the module
borders of ``bench.schema`` / ``bench.results``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bench.schema import atomic_path, atomic_write

ROOT = Path(__file__).resolve().parents[2]


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_bytes_and_str(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, "héllo\n")  # parent directories are created
    assert target.read_bytes() == "héllo\n".encode()
    atomic_write(target, b"\x00\x01", fsync=False)
    assert target.read_bytes() == b"\x00\x01"
    assert _listing(target.parent) == ["a.json"]
    with pytest.raises(TypeError, match="Expected bytes or str"):
        atomic_write(target, 3)  # type: ignore[arg-type]
    assert target.read_bytes() == b"\x00\x01"
    assert _listing(target.parent) == ["a.json"]


def test_failure_inside_the_writer_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "units.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new", encoding="utf-8")
            raise RuntimeError("writer died")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert _listing(tmp_path) == ["units.jsonl"]


def test_failure_before_the_first_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "new.png"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target):
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_temporary_name_is_hidden_unique_and_keeps_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "images.npy"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        assert a.parent == b.parent == tmp_path
        assert a.name.startswith(".images.") and a.suffix == ".npy"
        assert a.exists() and b.exists()  # reserved before the writer runs
        # np.save adds ".npy" to a name without it; with the suffix kept it writes in place.
        np.save(a, np.arange(3), allow_pickle=False)
        np.save(b, np.arange(4), allow_pickle=False)
    assert _listing(tmp_path) == ["images.npy"]
    assert np.load(target).tolist() == [0, 1, 2]  # ``a``'s block ends last: it wins, whole


def test_pil_writes_by_extension(tmp_path: Path) -> None:
    from PIL import Image

    target = tmp_path / "strip.png"
    with atomic_path(target) as tmp:
        Image.new("RGB", (2, 1), (255, 0, 0)).save(tmp)  # format chosen from ".png"
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert _listing(tmp_path) == ["strip.png"]


def test_permissions_are_those_of_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    atomic_write(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_concurrent_threads_never_raise_and_leave_one_whole_content(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    contents = [bytes([65 + i]) * (50_000 + i) for i in range(8)]
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def write(data: bytes) -> None:
        try:
            for _ in range(25):
                atomic_write(target, data, fsync=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(target.read_bytes())
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert errors == []
    assert target.read_bytes() in contents
    assert seen <= set(contents)  # a reader never saw a partial file
    assert _listing(tmp_path) == ["run.json"]


_WRITER = """
import sys
from bench.schema import atomic_write
path, byte, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    atomic_write(path, bytes([byte]) * 200_000)
"""


def test_two_processes_writing_the_same_path(tmp_path: Path) -> None:
    target = tmp_path / "exemplars" / "layer1-0.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), str(byte), "150"],
            env=env,
            stderr=subprocess.PIPE,
        )
        for byte in (65, 66)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert target.read_bytes() in (b"A" * 200_000, b"B" * 200_000)
    assert _listing(target.parent) == ["layer1-0.png"]


# --- module borders -------------------------------------------------------------------------


def _bench_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n == "bench" or n.startswith("bench.")}
    return out


def test_leaderboard_imports_only_results_schema_and_errors() -> None:
    used = set().union(*(_bench_imports(p) for p in (ROOT / "leaderboard").rglob("*.py")))
    assert used, "expected the leaderboard to import from bench at all"
    assert used <= {"bench.results", "bench.schema", "bench.errors"}, sorted(used)


def test_rename_into_place_lives_in_one_helper() -> None:
    """Single files are replaced only through ``bench.schema.atomic_path``; directory-level
    stores (a temporary directory from ``tempfile.mkdtemp`` renamed into place) and the download's
    verified ``.part`` file are the other ``os.replace`` callers."""
    allowed = {
        "bench/schema.py",  # atomic_path
        "bench/cache.py",  # Cache.store: temporary directory -> entry
        "bench/synth/broden_export.py",  # temporary directory -> export
        "bench/download.py",  # verified .part -> dest (resume); extracted directory entries
    }
    found = []
    for package in ("bench", "methods", "metrics", "leaderboard"):
        for p in sorted((ROOT / package).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            text = p.read_text(encoding="utf-8")
            if rel in allowed:
                continue
            if "os.replace(" in text or "os.rename(" in text or "mkstemp(" in text:
                found.append(rel)
            if ".tmp" in text:
                found.append(f"{rel} (a '.tmp' name)")
    assert found == []
