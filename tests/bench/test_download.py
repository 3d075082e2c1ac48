"""bench.download against a local HTTP server: checksums, resume, timeouts.

Archive extraction is tested in tests/bench/test_extract.py.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.download import download, ensure_file
from bench.errors import DataError, DownloadError

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, not a multiple of the read size
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/file`` honours Range; ``/norange`` ignores it; ``/short`` stops half-way; else 404."""

    requests: list[dict[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Handler.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if self.path == "/short":  # promises everything, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            return
        if self.path not in ("/file", "/norange"):
            self.send_error(404, "Not Found")
            return
        rng = self.headers.get("Range")
        if self.path == "/file" and rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
            body = PAYLOAD[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            body = PAYLOAD
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_with_correct_checksums(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "data.bin"
    out = download(f"{server}/file", dest, sha256=SHA, md5=MD5, what="test data")
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".bin.part").exists()


def test_download_accepts_a_sha256_prefix(server: str, tmp_path: Path) -> None:
    dest = tmp_path / f"data-{SHA[:8]}.bin"
    download(f"{server}/file", dest, sha256=SHA[:8])
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_raises_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError) as info:
        download(f"{server}/file", dest, sha256=wrong, what="the test data")
    msg = str(info.value)
    assert "the test data" in msg and f"{server}/file" in msg
    assert "checksum mismatch" in msg and wrong in msg and SHA in msg
    assert str(dest) in msg
    assert list(tmp_path.iterdir()) == []


def test_wrong_md5_raises(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="md5"):
        download(f"{server}/file", tmp_path / "d.bin", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_resume_sends_range_and_appends(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD[:12345])
    download(f"{server}/file", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests[-1]["range"] == "bytes=12345-"
    assert not part.exists()


def test_interrupted_download_keeps_part_and_resumes(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    with pytest.raises(DownloadError, match="connection closed after 51200 of 102400") as info:
        download(f"{server}/short", dest, sha256=SHA, what="big file")
    assert "big file" in str(info.value) and str(dest) in str(info.value)
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    assert not dest.exists()
    download(f"{server}/file", dest, sha256=SHA)  # the same file, from a working mirror
    assert _Handler.requests[-1]["range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_resume_restarts_when_server_ignores_range(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    part.write_bytes(b"\xff" * 5000)  # wrong bytes: appending would break the checksum
    download(f"{server}/norange", dest, sha256=SHA)
    assert _Handler.requests[-1]["range"] == "bytes=5000-"
    assert dest.read_bytes() == PAYLOAD


def test_resume_disabled_starts_over(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"\xff" * 5000)
    download(f"{server}/file", dest, sha256=SHA, resume=False)
    assert _Handler.requests[-1]["range"] is None
    assert dest.read_bytes() == PAYLOAD


def test_http_error_names_status_and_url(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(f"{server}/missing", tmp_path / "x.bin", what="thing")
    assert f"{server}/missing" in str(info.value)
    assert not (tmp_path / "x.bin.part").exists()


def test_hanging_server_times_out(tmp_path: Path) -> None:
    # A listening socket that never accepts: the kernel completes the handshake, nobody answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/file"
        start = time.monotonic()
        with pytest.raises(DownloadError) as info:
            download(url, tmp_path / "x.bin", timeout=1.0, what="slow thing")
        elapsed = time.monotonic() - start
    assert elapsed < 5.0
    assert "timed out" in str(info.value) and url in str(info.value)
    assert not (tmp_path / "x.bin").exists()


def test_unreachable_url_fails_fast(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/file"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x.bin", timeout=1.0, what="the thing")
    assert time.monotonic() - start < 5.0
    msg = str(info.value)
    assert "the thing" in msg and url in msg and str(tmp_path / "x.bin") in msg
    assert list(tmp_path.iterdir()) == []


def test_unresolvable_host_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="cannot resolve host|did not finish"):
        download("http://no-such-host.invalid/x.bin", tmp_path / "x.bin", timeout=2.0)
    assert time.monotonic() - start < 5.0


def test_stalled_name_lookup_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stalled(*args: object, **kwargs: object) -> None:
        time.sleep(5)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", stalled)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="did not finish within 1 s"):
        download("http://example.invalid/x.bin", tmp_path / "x.bin", timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_ensure_file_pins_sha256_on_first_download(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    path, sha = ensure_file(f"{server}/file", dest)
    assert sha == SHA and path.read_bytes() == PAYLOAD
    assert (tmp_path / "data.bin.sha256.json").is_file()
    n = len(_Handler.requests)
    assert ensure_file(f"{server}/file", dest)[1] == SHA
    assert len(_Handler.requests) == n  # reused, not downloaded again
    dest.write_bytes(PAYLOAD[:-1])  # damaged after the first download
    with pytest.raises(DataError, match="does not match its checksum"):
        ensure_file(f"{server}/file", dest, download_missing=False)
    assert ensure_file(f"{server}/file", dest)[1] == SHA  # re-downloaded
    assert dest.read_bytes() == PAYLOAD


def test_ensure_file_enforces_the_pinned_sha256(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    record = tmp_path / "data.bin.sha256.json"
    record.write_text('{"sha256": "%s"}' % ("ab" * 32))  # pinned by an earlier download
    with pytest.raises(DownloadError) as info:
        ensure_file(f"{server}/file", dest)
    assert "checksum mismatch" in str(info.value) and str(record) in str(info.value)
    assert not dest.exists()


def test_ensure_file_without_download_says_how(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        ensure_file("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", download_missing=False)
    assert str(tmp_path / "x.bin") in str(info.value)
    assert not (tmp_path / "x.bin").exists()
