"""Downloads with timeouts, checksums and resume, and archive extraction that cannot escape.

Nothing here runs unless a user asks for a download (``--download``, or a target whose weights
are not on disk yet). Every failure is a :class:`bench.errors.DownloadError` (or
:class:`bench.errors.DataError` for a bad archive) that says what was fetched, from where, why it
failed and where to put the file by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import DataError, DownloadError, UnsafeArchiveError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: Shortest accepted sha256 prefix (torchvision file names carry 8 to 10 hex digits).
MIN_SHA256_PREFIX = 8
_USER_AGENT = "neuron-bench (python urllib)"


def _describe(what: str, dest: Path) -> str:
    return what or dest.name


def _failure(name: str, url: str, dest: Path, reason: str) -> DownloadError:
    """A DownloadError whose ``reason``, ``url`` and ``dest`` attributes callers can reword."""
    reason = reason.rstrip(". ")
    err = DownloadError(
        f"Could not download {name} from {url}: {reason}. To supply it by hand, "
        f"download the file yourself and put it at {dest}."
    )
    err.reason, err.url, err.dest = reason, url, dest  # type: ignore[attr-defined]
    return err


def _check_expected(sha256: str | None, md5: str | None) -> tuple[str | None, str | None]:
    if sha256 is not None:
        sha256 = sha256.lower()
        if (
            len(sha256) < MIN_SHA256_PREFIX
            or len(sha256) > 64
            or any(c not in "0123456789abcdef" for c in sha256)
        ):
            raise ValueError(
                f"Expected a sha256 hex digest or a prefix of at least "
                f"{MIN_SHA256_PREFIX} hex digits, got {sha256!r}"
            )
    if md5 is not None:
        md5 = md5.lower()
        if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
            raise ValueError(f"Expected a 32-digit md5 hex digest, got {md5!r}")
    return sha256, md5


def file_digests(path: Path) -> tuple[str, str]:
    """``(sha256, md5)`` hex digests of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def checksum_problem(
    sha256_got: str, md5_got: str, *, sha256: str | None, md5: str | None
) -> str | None:
    """``None`` when the digests match what is expected; otherwise what differs."""
    if sha256 is not None and not sha256_got.startswith(sha256.lower()):
        return f"checksum mismatch: expected sha256 {sha256}, got {sha256_got}"
    if md5 is not None and md5_got != md5.lower():
        return f"checksum mismatch: expected md5 {md5}, got {md5_got}"
    return None


def _resolve_with_timeout(url: str, timeout: float) -> None:
    """Fail fast when the host that urllib will connect to cannot be resolved in time.

    The socket timeout does not cover name resolution, and a misconfigured resolver can block for
    tens of seconds, so the lookup runs in a daemon thread that we stop waiting for.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        pparts = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        if pparts.hostname:
            host, port = pparts.hostname, pparts.port or 80
    result: dict[str, BaseException | None] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=lookup, name=f"dns-{host}", daemon=True)
    t.start()
    t.join(timeout)
    if "error" not in result:
        raise OSError(f"name lookup of {host} did not finish within {timeout:g} s")
    if result["error"] is not None:
        raise OSError(f"cannot resolve host {host} ({result['error']}); the machine may be offline")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 10.0,
    resume: bool = True,
    progress: bool = False,
    what: str = "",
) -> Path:
    """Fetch ``url`` into ``dest`` and return ``dest``.

    Bytes go to ``dest.part`` first and are renamed into place only after the checksum
    (``sha256``, full or a prefix of at least 8 hex digits, and/or ``md5``) matched. ``timeout``
    bounds name resolution, the connection and every read, so a server that stops answering
    cannot hang the caller. With ``resume`` an existing ``.part`` file is continued with an HTTP
    ``Range`` request; a server that ignores the range makes us start over.

    An existing ``dest`` whose checksum matches (or with no checksum given) is returned as is.
    Raises :class:`DownloadError` naming ``what``, the URL, the reason and where to put the file
    by hand. A checksum mismatch deletes the ``.part`` file; other failures keep it for resume.
    """
    from bench.runlock import file_lock

    dest = Path(dest)
    sha256, md5 = _check_expected(sha256, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One writer of ``dest.part`` at a time: a second process waits, then finds ``dest``.
    with file_lock(dest.with_name(f".{dest.name}.lock")):
        return _download_locked(url, dest, sha256, md5, timeout, resume, progress, what)


def _download_locked(
    url: str,
    dest: Path,
    sha256: str | None,
    md5: str | None,
    timeout: float,
    resume: bool,
    progress: bool,
    what: str,
) -> Path:
    name = _describe(what, dest)
    if dest.is_file():
        if sha256 is None and md5 is None:
            return dest
        problem = checksum_problem(*file_digests(dest), sha256=sha256, md5=md5)
        if problem is None:
            return dest
        log.warning("%s at %s is corrupt (%s); downloading it again.", name, dest, problem)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        _fetch(url, part, timeout=timeout, resume=resume, progress=progress, name=name)
    except urllib.error.HTTPError as e:
        raise _failure(name, url, dest, f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _failure(name, url, dest, str(e.reason)) from e
    except http.client.IncompleteRead as e:
        got = part.stat().st_size if part.is_file() else 0
        raise _failure(
            name, url, dest, f"connection closed after {got} bytes (run again to resume)"
        ) from e
    except (OSError, ValueError, http.client.HTTPException) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
        raise _failure(name, url, dest, reason) from e
    problem = checksum_problem(*file_digests(part), sha256=sha256, md5=md5)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise _failure(
            name,
            url,
            dest,
            f"{problem} (the partial file was deleted; the server may have changed the file)",
        )
    os.replace(part, dest)
    log.info("Downloaded %s to %s", name, dest)
    return dest


def _fetch(
    url: str, part: Path, *, timeout: float, resume: bool, progress: bool, name: str
) -> None:
    # A healthy resolver answers in milliseconds; a stalled one means offline. Capping the lookup
    # keeps lookup + connect within a caller's budget (load_target promises 15 s offline).
    _resolve_with_timeout(url, min(timeout, 5.0))
    have = part.stat().st_size if resume and part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # The range starts at or past the end: the .part may be complete, or stale. Start over.
            e.close()
            part.unlink(missing_ok=True)
            return _fetch(url, part, timeout=timeout, resume=False, progress=progress, name=name)
        raise
    with response:
        status = getattr(response, "status", 200)
        mode = "wb"
        if have and status == 206 and _range_start(response.headers.get("Content-Range")) == have:
            mode = "ab"
            log.info("Resuming %s at byte %d", name, have)
        elif have:
            log.info("The server ignored the range request for %s; starting over.", name)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = _progress_bar(progress, total=total, initial=have, name=name)
        part.parent.mkdir(parents=True, exist_ok=True)
        received = 0
        try:
            with open(part, mode) as f:
                while block := response.read(_CHUNK):
                    f.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if length and length.isdigit() and received != int(length):
            raise OSError(
                f"connection closed after {have + received} of {total} bytes (run again to resume)"
            )


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    if not content_range or not content_range.startswith("bytes "):
        return None
    first = content_range[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


def _progress_bar(enabled: bool, *, total: int | None, initial: int, name: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:  # progress is cosmetic
        return None
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        leave=False,
    )


# --- files whose checksum is learnt on first download -----------------------------------------


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256.json")


def ensure_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    what: str = "",
    download_missing: bool = True,
    timeout: float = 10.0,
    progress: bool = False,
) -> tuple[Path, str]:
    """``(dest, sha256 of dest)``: the file on disk, downloaded first when missing.

    Files without a published checksum (Broden, the Places365 model zoo) are pinned on first
    download: their sha256 is written to ``<dest>.sha256.json`` and checked on every later use,
    so a truncated or replaced file is noticed rather than trusted because it exists.
    Without ``download_missing`` a missing file raises :class:`DownloadError` saying how to get it.
    """
    dest = Path(dest)
    sha256, md5 = _check_expected(sha256, md5)
    name = _describe(what, dest)
    record = _record_path(dest)
    pinned = None
    if sha256 is None and md5 is None and record.is_file():
        try:
            pinned = json.loads(record.read_text(encoding="utf-8"))["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("Ignoring unreadable checksum record %s", record)
    if dest.is_file():
        got_sha, got_md5 = file_digests(dest)
        problem = checksum_problem(got_sha, got_md5, sha256=sha256 or pinned, md5=md5)
        if problem is None:
            if sha256 is None and md5 is None and pinned is None:
                _write_record(record, url, got_sha)
            return dest, got_sha
        if not download_missing:
            raise DataError(
                f"{name} at {dest} does not match its checksum ({problem}). Delete it "
                f"and download it again from {url}."
            )
        log.warning(
            "%s at %s does not match its checksum (%s); downloading it again.", name, dest, problem
        )
        dest.unlink()
    elif not download_missing:
        err = DownloadError(
            f"{name} is not at {dest} and downloading is switched off. Download "
            f"it from {url} and put it at {dest}, or allow the download."
        )
        err.reason = "it is not on disk and downloading is switched off"  # type: ignore[attr-defined]
        err.url, err.dest = url, dest  # type: ignore[attr-defined]
        raise err
    try:
        download(
            url,
            dest,
            sha256=sha256 or pinned,
            md5=md5,
            timeout=timeout,
            progress=progress,
            what=what,
        )
    except DownloadError as e:
        if pinned is not None and "checksum mismatch" in str(e):
            raise DownloadError(
                f"{e} The expected sha256 was recorded at the first download in "
                f"{record}; delete that file if the file changed upstream."
            ) from e
        raise
    got_sha = file_digests(dest)[0]
    if sha256 is None and md5 is None and pinned is None:
        _write_record(record, url, got_sha)
    return dest, got_sha


def _write_record(record: Path, url: str, sha256: str) -> None:
    from bench.schema import write_json

    write_json(record, {"sha256": sha256, "url": url, "recorded": time.time()})


# --- archives -----------------------------------------------------------------------------------

#: ``tarfile``'s "data" extraction filter (Python 3.11.4+, 3.10.12+); None on older Pythons, where
#: tar members are written by :func:`_write_members` as zip members are.
_TAR_DATA_FILTER = getattr(tarfile, "data_filter", None)

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class _Member:
    """One archive member as classified before anything is written."""

    name: str  # as stored in the archive
    kind: str  # "file", "dir", "symlink", "hardlink", "device", "fifo" or "special"
    path: tuple[str, ...] = ()  # normalised relative path, set once the name passed the checks
    link: str = ""  # link target, for the message
    ref: Any = None  # the ZipInfo or TarInfo


def _refusal(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    record = _record_path(archive)
    also = f" and {record}" if record.is_file() else ""
    return UnsafeArchiveError(
        f"Refusing to extract {archive}: member {member!r} {why}. Dataset archives hold only "
        "regular files and directories at relative paths, as the official Broden, "
        "MILANNOTATIONS and CIFAR archives do, so this one is damaged or was tampered with; "
        f"nothing was extracted. Delete {archive}{also} and download it again from the "
        "official source."
    )


_WHY = {
    "symlink": "is a symbolic link (to {link!r})",
    "hardlink": "is a hard link (to {link!r})",
    "device": "is a device file",
    "fifo": "is a FIFO (named pipe)",
    "special": "is a special file (neither a regular file nor a directory)",
}


def _relative_parts(m: _Member, archive: Path) -> tuple[str, ...]:
    """The member's path as components below the archive root; refuses anything that could leave it.

    Backslashes count as separators and a leading drive letter as absolute, so names written on
    Windows (``..\\x``, ``C:\\x``, ``\\\\server\\share``) cannot escape either.
    """
    name = m.name
    if not name or "\x00" in name:
        raise _refusal(archive, name, "has an empty name or one with a NUL byte")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise _refusal(archive, name, "has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise _refusal(archive, name, "has a '..' component and would be written outside")
    kept = tuple(q for q in parts if q not in ("", "."))
    if not kept and m.kind != "dir":
        raise _refusal(archive, name, "names the archive root rather than a file in it")
    return kept


def _check_members(members: list[_Member], archive: Path) -> list[_Member]:
    """The members with their paths set, or UnsafeArchiveError for the first unsafe one.

    Refused: links of either kind, device files, FIFOs and other special files, absolute paths,
    ``..`` components, two members with one path (after normalisation), and a member below a
    path that the archive holds as a file.
    """
    checked: list[_Member] = []
    seen: dict[tuple[str, ...], str] = {}
    for m in members:
        if m.kind in _WHY:
            raise _refusal(archive, m.name, _WHY[m.kind].format(link=m.link))
        path = _relative_parts(m, archive)
        if not path:  # "./": the root itself
            continue
        if path in seen:
            raise _refusal(
                archive, m.name, f"has the same path as the earlier member {seen[path]!r}"
            )
        seen[path] = m.name
        checked.append(_Member(m.name, m.kind, path, ref=m.ref))
    files = {m.path for m in checked if m.kind == "file"}
    for m in checked:
        for i in range(1, len(m.path)):
            if m.path[:i] in files:
                raise _refusal(
                    archive, m.name, f"lies below {'/'.join(m.path[:i])!r}, which is a file"
                )
    return checked


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` archive into ``dest``; return ``dest``.

    Every member is checked before anything is written, and an archive with any of these is
    refused whole with :class:`UnsafeArchiveError`: symbolic or hard links, device files, FIFOs,
    absolute paths (``/x``, ``C:\\x``, ``\\x``), ``..`` components (``/`` or ``\\`` separated),
    duplicate paths. The archive is unpacked into a fresh temporary directory beside ``dest``
    (tar members through ``tarfile``'s "data" filter where Python has it) and its top-level
    entries are then renamed into ``dest``; an entry that already exists there (a link included)
    is an error, so nothing is written through an existing link, and a refused or failed
    extraction leaves nothing behind, not even directories made for ``dest``. ``dest`` itself
    may be a link (a datasets folder kept on another disk, say).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"Expected an archive at {archive}, found nothing there.")
    if os.path.lexists(dest) and not dest.is_dir():
        raise DataError(
            f"Cannot extract {archive} into {dest}: expected a directory there, found "
            "something else. Move it away or choose another destination."
        )
    made = [p for p in (dest, *dest.parents) if not os.path.lexists(p)]
    done = False
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
        try:
            _extract_into(archive, tmp)
            entries = sorted(tmp.iterdir())
            for entry in entries:
                there = dest / entry.name
                if there.is_symlink():
                    raise UnsafeArchiveError(
                        f"Cannot extract {archive} into {dest}: {there} is a symbolic link and "
                        "extraction never writes through a link. Remove it to extract again."
                    )
            clash = [entry.name for entry in entries if os.path.lexists(dest / entry.name)]
            if clash:
                raise DataError(
                    f"Cannot extract {archive} into {dest}: {', '.join(clash)} already "
                    "exist(s) there. Remove them to extract again."
                )
            try:
                dest.mkdir(exist_ok=True)
                for entry in entries:
                    os.rename(entry, dest / entry.name)
            except OSError as e:  # e.g. dest is a link to another file system
                raise DataError(
                    f"Could not move what {archive} holds from {tmp} into {dest}: {e}. Make "
                    f"sure {dest} is a writable directory on the same file system as its parent."
                ) from e
            done = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if not done:
            for p in made:  # deepest first; only the ones this call made, and only if empty
                with contextlib.suppress(OSError):
                    p.rmdir()
    return dest


def _extract_into(archive: Path, out: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, out)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, out)
        else:
            raise DataError(
                f"{archive} is neither a zip nor a tar archive; expected .zip, "
                ".tar or .tar.gz. Delete it and download it again."
            )
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,  # an encrypted zip member
        NotImplementedError,  # a zip compression method Python lacks
    ) as e:
        raise DataError(
            f"Could not extract {archive}: {e}. The archive is damaged or unsafe; "
            "delete it and download it again from the official source."
        ) from e


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    # The Unix mode sits in the high 16 bits of external_attr; zips made on Windows (or by
    # ZipFile.writestr) leave the type bits at 0, which means a plain file or directory.
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    name = info.filename
    if stat.S_ISLNK(mode):
        with zf.open(info) as f:
            target = f.read(4096).decode("utf-8", "replace")
        return _Member(name, "symlink", link=target, ref=info)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return _Member(name, "device", ref=info)
    if stat.S_ISFIFO(mode):
        return _Member(name, "fifo", ref=info)
    if name.endswith(("/", "\\")) or stat.S_ISDIR(mode):
        return _Member(name, "dir", ref=info)
    if fmt and not stat.S_ISREG(mode):
        return _Member(name, "special", ref=info)
    return _Member(name, "file", ref=info)


def _extract_zip(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = _check_members([_zip_member(zf, i) for i in zf.infolist()], archive)
        _write_members(members, out, zf.open)


def _tar_member(m: tarfile.TarInfo) -> _Member:
    if m.issym():
        return _Member(m.name, "symlink", link=m.linkname, ref=m)
    if m.islnk():
        return _Member(m.name, "hardlink", link=m.linkname, ref=m)
    if m.ischr() or m.isblk():
        return _Member(m.name, "device", ref=m)
    if m.isfifo():
        return _Member(m.name, "fifo", ref=m)
    if m.isdir():
        return _Member(m.name, "dir", ref=m)
    if m.isfile():
        return _Member(m.name, "file", ref=m)
    return _Member(m.name, "special", ref=m)


def _extract_tar(archive: Path, out: Path) -> None:
    with tarfile.open(archive) as tf:
        members = _check_members([_tar_member(m) for m in tf.getmembers()], archive)
        if _TAR_DATA_FILTER is not None:
            # The standard library's own checks on top of ours; it also drops unsafe mode bits.
            tf.extractall(out, members=[m.ref for m in members], filter="data")
        else:

            def opener(m: tarfile.TarInfo) -> Any:
                f = tf.extractfile(m)
                if f is None:
                    raise DataError(f"{archive}: cannot read member {m.name!r}.")
                return f

            _write_members(members, out, opener)


def _write_members(members: list[_Member], out: Path, opener: Any) -> None:
    """Write checked members under the fresh directory ``out``, never following a link.

    Each directory is made component by component and must be a real directory afterwards; each
    file is created exclusively (``O_EXCL | O_NOFOLLOW``), so no existing path is overwritten.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for m in members:
        parents = m.path if m.kind == "dir" else m.path[:-1]
        where = out
        for part in parents:
            where = where / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(where)
            if not stat.S_ISDIR(os.lstat(where).st_mode):
                raise DataError(f"{where} is not a directory; refusing to write {m.name!r}.")
        if m.kind != "file":
            continue
        fd = os.open(where / m.path[-1], flags, 0o666)
        with opener(m.ref) as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
