"""Locks: a run directory is written by one process at a time; a download by one at a time.

:func:`run_lock` takes ``<run_dir>/.lock`` with ``fcntl.flock`` and writes into it who holds it
(pid, host, start time, command line). A second process asking for the same directory gets a
:class:`bench.errors.RunLockedError` naming the holder. The kernel drops a ``flock`` when its
process dies, so the lock file a killed run leaves behind is stale by construction: the next run
takes it over (and says so at INFO). The lock is re-entrant within a process (``bench run``
holds it from the describe stage through scoring). The lock file is removed on release; an
acquirer checks that the file it locked is still the one at the path, so a release racing with
an acquire never leaves two holders.

:func:`file_lock` is the blocking form for cache writers that share one fixed name (a download's
``.part`` file): the second process waits for the first, then finds its result.

Needs ``fcntl`` (POSIX). Where it is missing, locking is skipped with a debug message. A
filesystem without ``flock`` support (some network filesystems) makes it a no-op as well.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"

_guard = threading.Lock()
# realpath of a held lock file -> [fd, depth]
_held: dict[str, list[int]] = {}


def holder_info() -> dict[str, Any]:
    """What this process writes into a lock file it takes."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:500],
    }


def read_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder written into lock file ``path``; ``None`` when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not written its details yet)"
    return (
        f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"(started {holder.get('started', '?')}: {holder.get('command', '?')})"
    )


def _open_locked(path: Path, *, blocking: bool) -> int | None:
    """An fd of ``path`` holding an exclusive ``flock``; ``None`` when held elsewhere and not
    ``blocking``. Retries when the file it locked was replaced or removed meanwhile."""
    assert fcntl is not None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # released and removed by its holder meanwhile: lock the new file


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing drops the flock


@contextmanager
def _reentrant(path: Path, acquire: Any) -> Iterator[None]:
    key = os.path.realpath(path)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd = acquire()
            if fd is not None:
                _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            entry = _held.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[key]
                    _release(path, entry[0])


@contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (created with its parents if missing).

    Raises :class:`RunLockedError` (exit 2) naming the holding process when another process
    holds it. Re-entrant within this process.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE

    def acquire() -> int | None:
        if fcntl is None:  # pragma: no cover - not POSIX
            log.debug("no fcntl on this platform: %s is not locked", run_dir)
            return None
        try:
            fd = _open_locked(path, blocking=False)
        except OSError as e:  # a filesystem without flock
            log.debug("could not lock %s (%s); running without a lock", run_dir, e)
            return None
        if fd is None:
            raise RunLockedError(
                f"Run directory {run_dir} is being written by "
                f"{_describe_holder(read_holder(path))}. Wait for it to finish, or pass "
                "another --out."
            )
        stale = read_holder(path)
        if stale:
            log.info(
                "taking over the lock of %s left by %s, which no longer runs",
                run_dir,
                _describe_holder(stale),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info(), sort_keys=True).encode("utf-8"), 0)
        return fd

    with _reentrant(path, acquire):
        yield


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file beside what it guards), waiting for
    another process that holds it. Re-entrant within this process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def acquire() -> int | None:
        if fcntl is None:  # pragma: no cover - not POSIX
            return None
        try:
            fd = _open_locked(path, blocking=False)
            if fd is None:
                log.info("waiting for another process to finish with %s", path)
                fd = _open_locked(path, blocking=True)
            return fd
        except OSError as e:
            log.debug("could not lock %s (%s); going on without a lock", path, e)
            return None

    with _reentrant(path, acquire):
        yield
