"""The one exception hierarchy. Every user-facing failure is a :class:`BenchError`.

Messages say what was expected, what was got, and how to fix it. The CLI prints
``error: <message>`` on one line and exits with :attr:`BenchError.exit_code`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Base class of every error the harness reports to a user."""

    exit_code: int = 2


class UsageError(BenchError):
    """Bad arguments or configuration: the user must change what they asked for."""


class UnknownNameError(UsageError, KeyError):
    """A name (method, target, layer, probe, ...) that is not registered."""

    def __init__(
        self, kind: str, name: str, available: Iterable[str], *, where: str = "", note: str = ""
    ):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        self.where = where
        self.note = note
        super().__init__(self._message())

    def _message(self) -> str:
        close = difflib.get_close_matches(self.name, self.available, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = self.available if len(self.available) <= 40 else self.available[:40] + ["..."]
        where = f" {self.where}" if self.where else ""
        note = f" {self.note}" if self.note else ""
        listed = ", ".join(shown) or "(none)"
        return f"Unknown {self.kind} '{self.name}'{where}.{hint} Available: {listed}.{note}"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ConfigError(UsageError):
    """A configuration value is invalid (unknown field, wrong type, out of range)."""


class RequirementError(UsageError):
    """A method needs evidence or components that this run does not provide."""


class FormulaError(UsageError, ValueError):
    """A logical formula (:mod:`bench.formula`) that cannot be read: bad text or JSON tree, or
    nested too deeply. Also a ``ValueError``, as parse errors of the label importers were."""


class DataError(BenchError):
    """Input data is missing or malformed (a CSV without its columns, a broken image, ...)."""


class UnsafeArchiveError(DataError):
    """An archive holds a member that could be written outside its destination, or that a dataset
    archive never holds (a link, a device file, a FIFO, a duplicate name)."""


class RunLockedError(BenchError):
    """The run directory is being written by another process (:mod:`bench.runlock`)."""


class DownloadError(BenchError):
    """A download failed: offline, timed out, or the content did not match its checksum."""


class WeightsUnavailableError(DownloadError):
    """A target's weights could not be obtained."""


class CacheError(BenchError):
    """A cache entry is corrupt or cannot be written."""


class StorageError(BenchError):
    """The file system refused: read-only, no permission, disk full, a file where a directory
    belongs. Made from the ``OSError`` by :func:`storage_error`."""


def storage_error(e: OSError) -> StorageError:
    """A :class:`StorageError` for ``e`` that names the file and says how to fix it."""
    import errno

    where = e.filename if e.filename is not None else "(a file)"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    code = e.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        fix = (
            "The disk is full: free space, or put the cache (--cache-dir or $BENCH_CACHE_DIR) "
            "and the run directory (--out) on a disk with room"
        )
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = (
            "The location is read-only or not writable by you: choose a writable --out (the "
            "default is results/ in the working directory) and --cache-dir (default "
            "$BENCH_CACHE_DIR or ~/.cache/neuron-bench), or fix the permissions"
        )
    elif code == errno.ENOTDIR or code == errno.EEXIST:
        fix = (
            "A plain file occupies a path where a directory is expected: move or remove that "
            "file, or choose another --out / --cache-dir"
        )
    elif code == errno.ENOENT:
        fix = "The file or directory does not exist: check the path"
    else:
        fix = "Check the path, the permissions and the free space"
    reason = e.strerror or type(e).__name__
    return StorageError(f"{reason}: {where}. {fix}.")


class NonFiniteError(DataError):
    """Activations or scores contain NaN or infinity."""


class MethodError(BenchError):
    """A method broke its contract (wrong number of descriptions, wrong units, ...)."""

    exit_code = 1
