"""Downloads with timeouts, checksums and resume, and archive extraction that cannot escape.

Nothing here runs unless a user asks for a download (``--download``, or a target whose weights
are not on disk yet). Every failure is a :class:`bench.errors.DownloadError` (or
:class:`bench.errors.DataError` for a bad archive) that says what was fetched, from where, why it
failed and where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
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
from pathlib import Path, PurePosixPath
from typing import Any

from bench.errors import DataError, DownloadError

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
    dest = Path(dest)
    sha256, md5 = _check_expected(sha256, md5)
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


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The normalised relative path of an archive member, or DataError when it could escape."""
    if not name or "\x00" in name:
        raise DataError(
            f"{archive}: member {name!r} has an empty or invalid name; refusing to extract it."
        )
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(
            f"{archive}: member {name!r} has an absolute path; expected paths "
            "relative to the archive root. Refusing to extract this archive."
        )
    if ".." in p.parts:
        raise DataError(
            f"{archive}: member {name!r} contains '..' and would be written outside "
            "the destination. Refusing to extract this archive."
        )
    parts = [q for q in p.parts if q not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _link_inside(member: PurePosixPath, target: str, *, relative_to_member: bool) -> bool:
    """Whether a link target stays inside the archive root (pure path arithmetic)."""
    if not target or target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
        return False
    base = list(member.parent.parts) if relative_to_member else []
    for q in PurePosixPath(target.replace("\\", "/")).parts:
        if q in ("", "."):
            continue
        if q == "..":
            if not base:
                return False
            base.pop()
        else:
            base.append(q)
    return True


def _check_no_link_parent(
    path: PurePosixPath, links: set[PurePosixPath], archive: Path, name: str
) -> None:
    # Writing through a symlink member ("link/file") lands wherever the link points.
    for parent in list(path.parents)[:-1]:
        if parent in links:
            raise DataError(
                f"{archive}: member {name!r} is written through the link "
                f"{parent.as_posix()!r}; refusing to extract this archive."
            )


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` archive into ``dest``; return ``dest``.

    Every member is checked before anything is written: absolute paths, ``..`` components, links
    whose target leaves the archive, members written through a link, and device files or FIFOs are
    refused with a :class:`DataError`. The archive is unpacked into a temporary directory beside
    ``dest`` and each top-level entry is then renamed into ``dest``, so an interrupted extraction
    leaves nothing half-written in ``dest``. An entry that already exists in ``dest`` is an error.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"Expected an archive at {archive}, found nothing there.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise DataError(
                    f"{archive} is neither a zip nor a tar archive; expected .zip, "
                    ".tar or .tar.gz. Delete it and download it again."
                )
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DataError(
                f"Could not extract {archive}: {e}. The archive is damaged or unsafe; "
                "delete it and download it again."
            ) from e
        dest.mkdir(parents=True, exist_ok=True)
        entries = sorted(tmp.iterdir())
        clash = [entry.name for entry in entries if os.path.lexists(dest / entry.name)]
        if clash:
            raise DataError(
                f"Cannot extract {archive} into {dest}: {', '.join(clash)} already "
                "exist(s) there. Remove them to extract again."
            )
        for entry in entries:
            os.replace(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_zip(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        links: set[PurePosixPath] = set()
        for info in infos:
            path = _member_path(info.filename, archive)
            _check_no_link_parent(path, links, archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                if not _link_inside(path, target, relative_to_member=True):
                    raise DataError(
                        f"{archive}: member {info.filename!r} is a link to {target!r} "
                        "outside the destination; refusing to extract this archive."
                    )
                links.add(path)
            # No type bits (zips made on Windows, or by ZipFile.writestr) means a plain file.
            elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DataError(
                    f"{archive}: member {info.filename!r} is a special file; expected "
                    "regular files and directories. Refusing to extract."
                )
        for info in infos:
            path = _member_path(info.filename, archive)
            target_path = out.joinpath(*path.parts)
            mode = info.external_attr >> 16
            if info.is_dir():
                target_path.mkdir(parents=True, exist_ok=True)
                continue
            target_path.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                os.symlink(zf.read(info).decode("utf-8"), target_path)
                continue
            with zf.open(info) as src, open(target_path, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


def _extract_tar(archive: Path, out: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        links: set[PurePosixPath] = set()
        for m in members:
            path = _member_path(m.name, archive)
            _check_no_link_parent(path, links, archive, m.name)
            if m.issym() or m.islnk():
                inside = _link_inside(path, m.linkname, relative_to_member=m.issym())
                if not inside:
                    raise DataError(
                        f"{archive}: member {m.name!r} is a link to {m.linkname!r} "
                        "outside the destination; refusing to extract this archive."
                    )
                if m.issym():
                    links.add(path)
            elif not (m.isfile() or m.isdir()):
                raise DataError(
                    f"{archive}: member {m.name!r} is a device file or FIFO; expected "
                    "regular files and directories. Refusing to extract."
                )
        # tarfile's own "data" filter repeats the checks (and drops unsafe permission bits).
        tf.extractall(out, members=members, filter="data")
