"""Content-addressed cache of stage outputs.

An entry is a directory ``<root>/<stage>/<key>/`` holding the stage's files and a
``manifest.json`` with the key's inputs and each file's size and SHA-256. The key is the SHA-256
of everything that changes the stage's output (DESIGN section 7). Entries are written into a
temporary directory and renamed into place, so a reader never sees half an entry; a corrupt entry
(missing file, wrong size or hash, unreadable manifest) is detected, removed and recomputed,
never trusted because it exists. No pickles: arrays are safetensors, tables JSON/JSONL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import CacheError
from bench.schema import dumps, read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1
#: Entries are written into ``<stage>/.tmp-<key12>-<pid>-<random>/`` and renamed into place.
TMP_PREFIX = ".tmp-"
#: A temporary directory is stale when the process that writes it is gone (same host: its pid
#: is in the name) and it is older than this; one without a pid (older versions) after a day.
STALE_GRACE_S = 60.0
STALE_NO_PID_S = 86400.0


#: The one environment variable that moves the cache (the CLI's --cache-dir wins over it).
ENV_CACHE_DIR = "BENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuron-bench``, else ``~/.cache/neuron-bench``.

    The only place that reads the environment for the cache: everything else receives a
    :class:`Cache` and asks it for its directories."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuron-bench"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_key(stage: str, parts: Mapping[str, Any]) -> str:
    """SHA-256 of the stage name and its inputs in canonical JSON."""
    return sha256_bytes(
        dumps({"cache_format": CACHE_FORMAT, "stage": stage, "parts": parts}).encode()
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    stage: str
    key: str
    path: Path
    size: int
    created: float


class Cache:
    """A directory of content-addressed entries. Safe for concurrent writers of the same key."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root).expanduser().absolute() if root is not None else default_cache_dir()

    def key(self, stage: str, parts: Mapping[str, Any]) -> str:
        return content_key(stage, parts)

    def datasets_dir(self) -> Path:
        """Where datasets are fetched and looked for without an explicit root
        (``<root>/datasets``): Broden, CIFAR, MILANNOTATIONS."""
        return self.root / "datasets"

    def models_dir(self) -> Path:
        """Where downloaded model weights go (``<root>/models``)."""
        return self.root / "models"

    def entry_dir(self, stage: str, key: str) -> Path:
        if not stage.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise CacheError(
                f"Expected a stage name of letters, digits, '-', '_' or '.', got {stage!r}."
            )
        return self.root / stage / key

    def load(self, stage: str, key: str) -> Path | None:
        """The entry's directory if it exists and is intact; ``None`` otherwise.

        A corrupt entry is logged, removed, and reported as missing so the caller recomputes it.
        """
        path = self.entry_dir(stage, key)
        if not path.is_dir():
            self._no_plain_file(path)
            return None
        problem = self._verify(path, stage, key)
        if problem is None:
            return path
        log.warning("Cache entry %s/%s is corrupt (%s); recomputing it.", stage, key[:12], problem)
        shutil.rmtree(path, ignore_errors=True)
        return None

    def store(
        self,
        stage: str,
        key: str,
        parts: Mapping[str, Any],
        write: Callable[[Path], None],
    ) -> Path:
        """Create the entry by calling ``write(tmpdir)``, then move it into place atomically."""
        final = self.entry_dir(stage, key)
        self._no_plain_file(final.parent)
        self._no_plain_file(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:12]}-{os.getpid()}-", dir=final.parent)
        )
        try:
            write(tmp)
            files = {}
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = f.relative_to(tmp).as_posix()
                files[rel] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
            write_json(
                tmp / MANIFEST,
                {
                    "cache_format": CACHE_FORMAT,
                    "stage": stage,
                    "key": key,
                    "parts": parts,
                    "files": files,
                    "created": time.time(),
                },
            )
            try:
                os.replace(tmp, final)
            except OSError:
                # Another writer finished the same key first; its entry is equivalent.
                if self.load(stage, key) is None:
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def get_or_create(
        self,
        stage: str,
        parts: Mapping[str, Any],
        write: Callable[[Path], None],
    ) -> tuple[Path, bool]:
        """``(entry_dir, hit)``: the cached entry, or a new one made by ``write``."""
        key = self.key(stage, parts)
        hit = self.load(stage, key)
        if hit is not None:
            log.info("cache hit: %s %s", stage, key[:12])
            return hit, True
        log.info("cache miss: %s %s", stage, key[:12])
        return self.store(stage, key, parts, write), False

    def entries(self, stage: str | None = None) -> list[Entry]:
        if not self.root.is_dir():
            return []
        out = []
        stages = (
            [self.root / stage] if stage else sorted(p for p in self.root.iterdir() if p.is_dir())
        )
        for sdir in stages:
            if not sdir.is_dir():
                continue
            for edir in sorted(sdir.iterdir()):
                if not edir.is_dir() or edir.name.startswith("."):
                    continue
                size = sum(f.stat().st_size for f in edir.rglob("*") if f.is_file())
                out.append(
                    Entry(
                        stage=sdir.name,
                        key=edir.name,
                        path=edir,
                        size=size,
                        created=edir.stat().st_mtime,
                    )
                )
        return out

    def clear(self, stage: str | None = None) -> int:
        """Remove every entry (of ``stage``) and every temporary directory not held by a live
        process; return how many were removed."""
        entries = self.entries(stage)
        for e in entries:
            shutil.rmtree(e.path, ignore_errors=True)
        return len(entries) + self.clean_stale(stage, grace=0.0, no_pid_grace=STALE_GRACE_S)

    def temporaries(self, stage: str | None = None) -> list[Entry]:
        """Temporary directories of entries being written, or left by a killed writer; their
        ``key`` is the directory name."""
        if not self.root.is_dir():
            return []
        stages = (
            [self.root / stage] if stage else sorted(p for p in self.root.iterdir() if p.is_dir())
        )
        out = []
        for sdir in stages:
            if not sdir.is_dir():
                continue
            for tdir in sorted(sdir.iterdir()):
                if not tdir.name.startswith(TMP_PREFIX) or not tdir.is_dir():
                    continue
                try:
                    size = sum(f.stat().st_size for f in tdir.rglob("*") if f.is_file())
                    created = tdir.stat().st_mtime
                except OSError:  # removed meanwhile by its writer
                    continue
                out.append(
                    Entry(stage=sdir.name, key=tdir.name, path=tdir, size=size, created=created)
                )
        return out

    @staticmethod
    def writer_alive(tmp: Entry | Path) -> bool | None:
        """Whether the process named in a temporary directory's name runs (on this host);
        ``None`` when the name holds no pid."""
        name = tmp.path.name if isinstance(tmp, Entry) else tmp.name
        parts = name[len(TMP_PREFIX) :].split("-")
        if len(parts) < 3 or not parts[1].isdigit():
            return None
        pid = int(parts[1])
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # exists, owned by someone else
            return True
        return True

    def clean_stale(
        self,
        stage: str | None = None,
        *,
        grace: float = STALE_GRACE_S,
        no_pid_grace: float = STALE_NO_PID_S,
    ) -> int:
        """Remove temporary directories left by killed writers: not held by a live process and
        older than ``grace`` seconds (a day when the name holds no pid). Returns how many."""
        now = time.time()
        removed = 0
        for t in self.temporaries(stage):
            alive = self.writer_alive(t)
            age = now - t.created
            if alive or age < (grace if alive is False else no_pid_grace):
                continue
            shutil.rmtree(t.path, ignore_errors=True)
            log.info("removed a stale temporary cache directory %s (%.1f MB)", t.path, t.size / 1e6)
            removed += 1
        return removed

    def _no_plain_file(self, path: Path) -> None:
        for p in (path, *path.parents):
            if p == self.root.parent:
                break
            if p.exists() and not p.is_dir():
                raise CacheError(
                    f"A plain file occupies the cache path {p}, where a directory belongs. "
                    f"Remove it (it is not a cache entry) or choose another --cache-dir."
                )

    @staticmethod
    def _verify(path: Path, stage: str, key: str) -> str | None:
        try:
            manifest = read_json(path / MANIFEST)
        except (OSError, ValueError) as e:
            return f"manifest unreadable: {e}"
        if manifest.get("stage") != stage or manifest.get("key") != key:
            return "manifest names another entry"
        files = manifest.get("files")
        if not isinstance(files, dict):
            return "manifest has no file list"
        for rel, meta in files.items():
            f = path / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != meta.get("size"):
                return f"{rel} has the wrong size"
            if sha256_file(f) != meta.get("sha256"):
                return f"{rel} does not match its checksum"
        return None


# --- arrays -----------------------------------------------------------------------------------


def save_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save numpy arrays as safetensors (contiguous copies; no pickles)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        str(path),
        metadata=dict(metadata) if metadata else None,
    )


def load_arrays(path: str | os.PathLike[str]) -> dict[str, Any]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated headers etc.
        raise CacheError(
            f"Could not read arrays from {path}: {e}. Delete the file and rerun."
        ) from e
