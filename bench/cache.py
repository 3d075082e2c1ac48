"""Content-addressed cache of stage outputs.

An entry is a directory ``<root>/<stage>/<key>/`` holding the stage's files and a
``manifest.json`` with the key's inputs and each file's size and SHA-256. The key is the SHA-256
of everything that changes the stage's output (DESIGN section 7). Entries are written into a
temporary directory and renamed into place, so a reader never sees half an entry; a corrupt entry
(missing file, wrong size or hash, unreadable manifest) is detected, removed and recomputed,
never trusted because it exists. No pickles: arrays are safetensors, tables JSON/JSONL.

A root given as a URL (``s3://bucket/cache``, ``gs://...``, ``file:///shared/cache``: anything
with ``://``, opened with fsspec) is a remote store shared by every node. The cache then works in
a node-local staging directory (:attr:`Cache.root`, where datasets and downloaded models also go)
and mirrors entries to the store: a local miss is fetched from the store when the store holds
the entry's manifest, verified file by file, and moved into place atomically; a stored entry is
uploaded. The remote layout is ``<url>/<stage>/<key>/manifest.json`` naming a payload directory
``<url>/<stage>/<key>/<payload>/`` that one writer uploaded completely before writing the
manifest (written last, and renamed into place where the store can rename). Each writer uploads
its own payload, so concurrent writers of one key never mix their files: the last manifest wins
and always names a complete payload. An upload torn by a kill has no manifest (or a manifest that
still names the previous, complete payload) and is ignored; a remote entry that fails
verification is logged, not used, recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import CacheError
from bench.schema import dumps, read_json, write_json

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1
#: Entries are written into ``<stage>/.tmp-<key12>-<pid>-<random>/`` and renamed into place.
TMP_PREFIX = ".tmp-"
#: A temporary directory is stale when the process that writes it is gone (same host: its pid
#: is in the name) and it is older than this; one without a pid (older versions) after a day.
STALE_GRACE_S = 60.0
STALE_NO_PID_S = 86400.0


#: The one environment variable that moves the cache (the CLI's --cache-dir wins over it): a
#: directory, or the URL of a remote store.
ENV_CACHE_DIR = "BENCH_CACHE_DIR"
#: Where caches at a URL keep their node-local copies: ``<this>/<hash of the URL>`` (default
#: ``<the local default cache>/remote``).
ENV_STAGING_DIR = "BENCH_CACHE_STAGING"
#: Name of the remote manifest's temporary copy, renamed to MANIFEST once complete.
REMOTE_PENDING = ".manifest-"


def is_url(root: str | os.PathLike[str] | None) -> bool:
    """Whether a cache root names a remote store (``scheme://...``) rather than a directory.
    Only strings: ``Path("s3://b/x")`` has already lost the URL (it reads ``s3:/b/x``)."""
    return isinstance(root, str) and "://" in root


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR`` when it is a directory, else ``$XDG_CACHE_HOME/neuron-bench``, else
    ``~/.cache/neuron-bench``: the local cache, and the base of URL caches' staging directories.

    With :func:`default_cache_root`, the only place that reads the environment for the cache:
    everything else receives a :class:`Cache` and asks it for its directories."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env and not is_url(env):
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuron-bench"


def default_cache_root() -> str | Path:
    """The cache of ``Cache()``: ``$BENCH_CACHE_DIR`` when it is a URL, else
    :func:`default_cache_dir`."""
    env = os.environ.get(ENV_CACHE_DIR)
    return env if env and is_url(env) else default_cache_dir()


def staging_dir(url: str) -> Path:
    """The node-local directory of the cache at ``url``: ``$BENCH_CACHE_STAGING`` (default
    ``<default_cache_dir()>/remote``) / the first 16 hex digits of the URL's SHA-256."""
    env = os.environ.get(ENV_STAGING_DIR)
    base = Path(env).expanduser().absolute() if env else default_cache_dir() / "remote"
    return base / sha256_bytes(url.encode())[:16]


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
    path: Path | str  # a URL for an entry of a remote store
    size: int
    created: float
    remote: bool = False


class Cache:
    """A directory of content-addressed entries, or a remote store mirrored through a node-local
    staging directory (``root`` a URL: module docstring). Safe for concurrent writers of the
    same key, on one machine and, through a store, on many.

    ``root``: a directory, or a URL opened with fsspec (its protocol's package, e.g. s3fs or
    gcsfs, must be installed); default :func:`default_cache_root`. ``staging``: for a URL, the
    base of its staging directory (default ``$BENCH_CACHE_STAGING`` or
    ``<default_cache_dir()>/remote``); the URL's directory under it is :attr:`root`.
    :attr:`location` is what rebuilds the same cache elsewhere (the URL, or the directory).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        staging: str | os.PathLike[str] | None = None,
    ):
        if root is None:
            root = default_cache_root()
        self.remote: _Remote | None = None
        if is_url(root):
            url = str(root).rstrip("/")
            self.remote = _Remote(url)
            self.location = url
            self.root = (
                Path(staging).expanduser().absolute() / sha256_bytes(url.encode())[:16]
                if staging is not None
                else staging_dir(url)
            )
        else:
            self.root = Path(root).expanduser().absolute()
            self.location = str(self.root)

    def __repr__(self) -> str:
        staged = f", staging={str(self.root)!r}" if self.remote else ""
        return f"Cache({self.location!r}{staged})"

    @property
    def is_remote(self) -> bool:
        """Whether entries live in a remote store (this node holds copies in :attr:`root`)."""
        return self.remote is not None

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
        """The entry's directory if it exists and is intact; ``None`` otherwise. For a remote
        cache: the staged copy, else the store's entry fetched into :attr:`root` (a staged entry
        the store lacks is uploaded again, since other nodes read the store).

        A corrupt entry is logged, removed, and reported as missing so the caller recomputes it.
        """
        path = self.entry_dir(stage, key)
        if path.is_dir():
            problem = self._verify(path, stage, key)
            if problem is None:
                if self.remote is not None and not self.remote.has(stage, key):
                    # Staged here but not (or no longer) in the store: other nodes need it.
                    self.remote.upload(stage, key, path)
                return path
            where = " (staged copy)" if self.remote else ""
            log.warning(
                "Cache entry %s/%s%s is corrupt (%s); %s.",
                stage,
                key[:12],
                where,
                problem,
                "fetching it again" if self.remote else "recomputing it",
            )
            shutil.rmtree(path, ignore_errors=True)
        else:
            self._no_plain_file(path)
        if self.remote is None:
            return None
        return self._fetch(stage, key)

    def exists(self, stage: str, key: str) -> bool:
        """Whether the entry is here or in the store (unverified: :meth:`load` verifies)."""
        if self.entry_dir(stage, key).is_dir():
            return True
        return self.remote is not None and self.remote.has(stage, key)

    def remove(self, stage: str, key: str) -> None:
        """Delete the entry here and, for a remote cache, from the store."""
        shutil.rmtree(self.entry_dir(stage, key), ignore_errors=True)
        if self.remote is not None:
            self.remote.remove(stage, key)

    def _fetch(self, stage: str, key: str) -> Path | None:
        """The store's entry, downloaded into a temporary directory, verified against its
        manifest and moved into place; ``None`` when the store has no complete entry or it fails
        verification (logged: the caller recomputes and replaces it)."""
        assert self.remote is not None
        manifest = self.remote.manifest(stage, key)
        if manifest is None:
            return None
        final = self.entry_dir(stage, key)
        self._no_plain_file(final.parent)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:12]}-{os.getpid()}-", dir=final.parent)
        )
        try:
            problem = self.remote.download(stage, key, manifest, tmp)
            if problem is None:
                write_json(tmp / MANIFEST, {k: v for k, v in manifest.items() if k != "remote"})
                problem = self._verify(tmp, stage, key)
            if problem is not None:
                log.warning(
                    "Cache entry %s/%s in %s is corrupt (%s); recomputing it.",
                    stage,
                    key[:12],
                    self.location,
                    problem,
                )
                return None
            # Consumers may hash modification times (a Broden probe's identity does): the copy
            # keeps the writer's, as `cp -p` would.
            for rel, ns in (manifest["remote"].get("mtime_ns") or {}).items():
                if isinstance(ns, int):
                    os.utime(tmp / rel, ns=(ns, ns))
            try:
                os.replace(tmp, final)
            except OSError:  # another process here placed it first
                if self._verify(final, stage, key) is not None:
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
            log.info("fetched %s/%s from %s", stage, key[:12], self.location)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

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
        if self.remote is not None:
            self.remote.upload(stage, key, final)
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
        """The cache's entries (of ``stage``): for a remote cache, the store's (this node's
        copies: :meth:`staged_entries`)."""
        if self.remote is not None:
            return self.remote.listing(stage)[0]
        return self.staged_entries(stage)

    def staged_entries(self, stage: str | None = None) -> list[Entry]:
        """The entries in :attr:`root` (for a remote cache, this node's copies)."""
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
        process; return how many were removed. For a remote cache: the store's entries, its
        uploads without a manifest or no longer named by one (older than a minute), and this
        node's staged copies (counted as the store's entries they copy)."""
        removed = 0
        if self.remote is not None:
            entries, temps = self.remote.listing(stage)
            now = time.time()
            for e in entries:
                self.remote.remove(e.stage, e.key)
            old = [t for t in temps if now - t.created >= STALE_GRACE_S]
            for t in old:
                self.remote.remove_temporary(t)
            removed = len(entries) + len(old)
        local = self.staged_entries(stage)
        for e in local:
            shutil.rmtree(e.path, ignore_errors=True)
        stale = self.clean_stale(stage, grace=0.0, no_pid_grace=STALE_GRACE_S)
        return removed if self.remote is not None else len(local) + stale

    def temporaries(self, stage: str | None = None) -> list[Entry]:
        """Temporary directories of entries being written, or left by a killed writer; their
        ``key`` is the directory name. For a remote cache also the store's uploads that no
        manifest names (in progress, torn by a kill, or replaced), ``remote`` set."""
        local = self._staged_temporaries(stage)
        if self.remote is None:
            return local
        return local + self.remote.listing(stage)[1]

    def _staged_temporaries(self, stage: str | None = None) -> list[Entry]:
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
        if isinstance(tmp, Entry) and tmp.remote:
            return None  # an upload from any node: no pid to ask
        name = Path(tmp.path).name if isinstance(tmp, Entry) else tmp.name
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
        older than ``grace`` seconds (a day when the name holds no pid), in :attr:`root` (for a
        remote cache, this node's staging: the store's leftovers go with :meth:`clear`).
        Returns how many."""
        now = time.time()
        removed = 0
        for t in self._staged_temporaries(stage):
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


def _info_time(info: Mapping[str, Any]) -> float:
    """A listing entry's modification time as a POSIX timestamp (fsspec backends name and type
    it differently: ``mtime`` float, ``LastModified`` datetime, ``updated`` ISO text); 0 when
    it has none."""
    import datetime as dt

    for name in ("mtime", "LastModified", "last_modified", "updated", "created", "timeCreated"):
        value = info.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _safe_relative(rel: str) -> bool:
    """Whether a manifest's file name stays inside its entry (no absolute path, no ``..``)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and ".." not in parts


class _Remote:
    """The store of a cache at a URL (module docstring: layout and protocol)."""

    def __init__(self, url: str):
        from fsspec.core import url_to_fs

        self.url = url
        try:
            fs, path = url_to_fs(url)
        except ImportError as e:
            from fsspec.registry import known_implementations

            protocol = url.split("://", 1)[0].split("::")[-1]
            spec = known_implementations.get(protocol, {})
            package = (
                str(spec.get("class", "")).split(".")[0] or f"the fsspec package for {protocol}"
            )
            raise CacheError(
                f"The cache {url} needs {package}, which is not installed ({e}). Install it on "
                f"every node (pip install {package}), or give --cache-dir a directory."
            ) from e
        except ValueError as e:
            raise CacheError(
                f"Expected --cache-dir to be a directory or a URL fsspec can open "
                f"(s3://, gs://, file://, ...), got {url!r}: {e}."
            ) from e
        self.fs: AbstractFileSystem = fs
        self.path = path.rstrip("/")

    def _join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def _error(self, action: str, e: Exception) -> CacheError:
        return CacheError(
            f"Could not {action} the cache store {self.url}: {type(e).__name__}: {e}. Check the "
            "URL, the network and your credentials, or give --cache-dir a directory."
        )

    def has(self, stage: str, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._join(stage, key, MANIFEST)))
        except Exception as e:
            raise self._error(f"read {stage}/{key[:12]} in", e) from e

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        """The entry's remote manifest, or ``None`` when the store holds no complete entry (or
        one whose manifest is unreadable, logged)."""
        import json

        try:
            raw = self.fs.cat_file(self._join(stage, key, MANIFEST))
        except FileNotFoundError:
            return None
        except Exception as e:
            raise self._error(f"read {stage}/{key[:12]} in", e) from e
        try:
            manifest = json.loads(raw)
            remote = manifest["remote"]
            payload = remote["payload"]
            files = manifest["files"]
            ok = (
                isinstance(payload, str)
                and _safe_relative(payload)
                and "/" not in payload
                and isinstance(files, dict)
                and all(isinstance(r, str) and _safe_relative(r) for r in files)
            )
        except (ValueError, KeyError, TypeError) as e:
            ok, manifest = False, {"error": str(e)}
        if not ok:
            log.warning(
                "Cache entry %s/%s in %s has an unusable manifest; recomputing it.",
                stage,
                key[:12],
                self.url,
            )
            return None
        return dict(manifest)

    def download(self, stage: str, key: str, manifest: Mapping[str, Any], dest: Path) -> str | None:
        """Copy the payload ``manifest`` names into ``dest``; a problem as text, or ``None``."""
        payload = manifest["remote"]["payload"]
        for rel in manifest["files"]:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(self._join(stage, key, payload, rel), str(target))
            except FileNotFoundError:
                return f"{rel} is missing"
            except Exception as e:
                raise self._error(f"read {stage}/{key[:12]} from", e) from e
        return None

    def upload(self, stage: str, key: str, local: Path) -> None:
        """Upload the intact local entry ``local`` as a new payload, then its manifest."""
        from bench.schema import dumps

        manifest = read_json(local / MANIFEST)
        payload = f"p-{secrets.token_hex(8)}"
        base = self._join(stage, key)
        files = sorted(manifest["files"])
        try:
            for parent in sorted(
                {self._join(stage, key, payload, *r.split("/")[:-1]) for r in files}
            ):
                self.fs.makedirs(parent, exist_ok=True)
            for rel in files:
                self.fs.put_file(str(local / rel), self._join(stage, key, payload, rel))
            remote = {
                "payload": payload,
                "mtime_ns": {rel: (local / rel).stat().st_mtime_ns for rel in files},
            }
            pending = f"{base}/{REMOTE_PENDING}{payload}.json"
            self.fs.pipe_file(pending, dumps({**manifest, "remote": remote}).encode())
            self.fs.mv(pending, f"{base}/{MANIFEST}")
        except Exception as e:
            raise self._error(f"write {stage}/{key[:12]} to", e) from e
        log.info("uploaded %s/%s to %s", stage, key[:12], self.url)

    def remove(self, stage: str, key: str) -> None:
        self._rm(self._join(stage, key))

    def remove_temporary(self, temporary: Entry) -> None:
        """Delete an upload that no manifest names (a temporary of :meth:`listing`)."""
        key, _, payload = temporary.key.partition("/")
        self._rm(self._join(temporary.stage, key, payload))
        self._rm(self._join(temporary.stage, key, f"{REMOTE_PENDING}{payload}.json"))

    def _rm(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self._error(f"remove {path} from", e) from e

    def listing(self, stage: str | None = None) -> tuple[list[Entry], list[Entry]]:
        """``(entries, temporaries)`` of the store: complete entries (a manifest; size of the
        manifest and the payload it names), and uploads that no manifest names."""
        import json

        root = self._join(stage) if stage else self.path
        try:
            found = self.fs.find(root, withdirs=False, detail=True)
        except FileNotFoundError:
            return [], []
        except Exception as e:
            raise self._error("list", e) from e
        # (stage, key) -> {"manifest": info, payload name -> [infos]}
        keys: dict[tuple[str, str], dict[str, Any]] = {}
        prefix = self.path + "/"
        for name, info in found.items():
            name = str(info.get("name", name))
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            if len(parts) < 3 or parts[1].startswith("."):
                continue
            slot = keys.setdefault((parts[0], parts[1]), {"payloads": {}})
            if parts[2:] == [MANIFEST]:
                slot["manifest"] = info
            else:
                payload = parts[2]
                if payload.startswith(REMOTE_PENDING):
                    payload = payload[len(REMOTE_PENDING) :].removesuffix(".json")
                slot["payloads"].setdefault(payload, []).append(info)
        entries, temps = [], []
        for (st, key), slot in sorted(keys.items()):
            payloads: dict[str, list[Any]] = slot["payloads"]
            named: str | None = None
            if "manifest" in slot:
                if len(payloads) == 1:
                    named = next(iter(payloads))
                elif payloads:
                    try:
                        raw = self.fs.cat_file(self._join(st, key, MANIFEST))
                        named = str(json.loads(raw)["remote"]["payload"])
                    except Exception:  # unreadable: every payload is left over
                        named = None
                info = slot["manifest"]
                size = int(info.get("size") or 0) + sum(
                    int(i.get("size") or 0) for i in payloads.get(named or "", [])
                )
                entries.append(
                    Entry(
                        stage=st,
                        key=key,
                        path=f"{self.url}/{st}/{key}",
                        size=size,
                        created=_info_time(info),
                        remote=True,
                    )
                )
            for payload, infos in sorted(payloads.items()):
                if payload == named:
                    continue
                temps.append(
                    Entry(
                        stage=st,
                        key=f"{key}/{payload}",
                        path=f"{self.url}/{st}/{key}/{payload}",
                        size=sum(int(i.get("size") or 0) for i in infos),
                        created=max(_info_time(i) for i in infos),
                        remote=True,
                    )
                )
        return entries, temps


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
