"""bench.download.safe_extract against hostile archives, directly and through `bench data fetch`.

Every hostile shape must be refused whole, and the directory around the destination must hold
exactly what it held before: its full recursive listing (type, content hash, link target) is
compared before and after.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

import bench.download as download_module
from bench.cli import main
from bench.download import safe_extract
from bench.errors import DataError, UnsafeArchiveError

# --- building archives ----------------------------------------------------------------------------

# (name, kind, payload): kind is "file", "dir", "symlink" (payload: target), "hardlink" (target),
# "chr", "blk" or "fifo".
Entry = tuple[str, str, str | bytes]


def _bytes(payload: str | bytes) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


_ZIP_MODES = {
    "file": stat.S_IFREG | 0o644,
    "dir": stat.S_IFDIR | 0o755,
    "symlink": stat.S_IFLNK | 0o777,
    "chr": stat.S_IFCHR | 0o666,
    "blk": stat.S_IFBLK | 0o666,
    "fifo": stat.S_IFIFO | 0o644,
}


def make_zip(path: Path, entries: list[Entry]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name" is what some tests want
        for name, kind, payload in entries:
            info = zipfile.ZipInfo(name)  # keeps the name as given ("..\\x", "/x", "C:x")
            info.external_attr = _ZIP_MODES[kind] << 16
            zf.writestr(info, b"" if kind == "dir" else _bytes(payload))
    return path


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(path: Path, entries: list[Entry], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = _TAR_TYPES[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("symlink", "hardlink"):
                info.linkname = str(payload)
            if kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3  # /dev/null; building needs no root
            if kind == "file":
                data = _bytes(payload)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def listing(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed): its type and content hash or link target."""
    out: dict[str, str] = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(here) / name
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = "file " + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            else:
                out[rel] = f"special {stat.S_IFMT(st.st_mode):o}"
    return out


# --- the hostile shapes ---------------------------------------------------------------------------

# "{sandbox}" is replaced by the absolute path of the directory around the destination, so an
# absolute member that got through would show in the listing rather than land somewhere unseen.
# "{up}" is "../" repeated to climb from the extraction directory to the sandbox.
CHAINED = [
    # p/q/b -> ../.. is the archive root; "x" -> p/q/b/{up}evil.txt stays inside by pure path
    # arithmetic (p/q/evil.txt) but resolves through p/q/b to the sandbox; then a file named x.
    ("p/q/b", "symlink", "../.."),
    ("x", "symlink", "p/q/b/{up}evil.txt"),
    ("x", "file", b"written outside"),
]

ZIP_SHAPES: dict[str, tuple[list[Entry], str]] = {
    # name: (entries, what the message must say)
    "symlink inside": ([("d/a.txt", "file", b"A"), ("d/l", "symlink", "a.txt")], "symbolic link"),
    "symlink out": ([("l", "symlink", "../../etc")], "symbolic link"),
    "chained symlink escape": (CHAINED, "symbolic link"),
    "absolute": ([("ok.txt", "file", b"ok"), ("{sandbox}/evil.txt", "file", b"E")], "absolute"),
    "dotdot": ([("ok.txt", "file", b"ok"), ("{up}evil.txt", "file", b"E")], "'..'"),
    "inner dotdot": ([("d/../{up}evil.txt", "file", b"E")], "'..'"),
    "duplicate": ([("a.txt", "file", b"1"), ("a.txt", "file", b"2")], "same path"),
    "duplicate after normalising": (
        [("d/a.txt", "file", b"1"), ("./d//a.txt", "file", b"2")],
        "same path",
    ),
    "duplicate dir": ([("d/", "dir", b""), ("d/", "dir", b"")], "same path"),
    "file used as dir": ([("a", "file", b"1"), ("a/b.txt", "file", b"2")], "which is a file"),
    "windows dotdot": ([("{up_win}evil.txt", "file", b"E")], "'..'"),
    "windows inner dotdot": ([("d\\..\\{up_win}evil.txt", "file", b"E")], "'..'"),
    "windows drive": ([("C:\\evil.txt", "file", b"E")], "absolute"),
    "windows drive relative": ([("C:evil.txt", "file", b"E")], "absolute"),
    "windows root": ([("\\evil.txt", "file", b"E")], "absolute"),
    "windows unc": ([("\\\\server\\share\\evil.txt", "file", b"E")], "absolute"),
    "char device": ([("null", "chr", b"")], "device file"),
    "fifo": ([("pipe", "fifo", b"")], "FIFO"),
}

TAR_SHAPES: dict[str, tuple[list[Entry], str]] = {
    "symlink inside": ([("d/a.txt", "file", b"A"), ("d/l", "symlink", "a.txt")], "symbolic link"),
    "symlink out": ([("l", "symlink", "../../etc")], "symbolic link"),
    "chained symlink escape": (CHAINED, "symbolic link"),
    "hardlink inside": ([("a.txt", "file", b"A"), ("h", "hardlink", "a.txt")], "hard link"),
    "hardlink out": ([("h", "hardlink", "{sandbox}/victim.txt")], "hard link"),
    "char device": ([("null", "chr", b"")], "device file"),
    "block device": ([("sda", "blk", b"")], "device file"),
    "fifo": ([("pipe", "fifo", b"")], "FIFO"),
    "absolute": ([("ok.txt", "file", b"ok"), ("{sandbox}/evil.txt", "file", b"E")], "absolute"),
    "dotdot": ([("ok.txt", "file", b"ok"), ("{up}evil.txt", "file", b"E")], "'..'"),
    "inner dotdot": ([("d/../{up}evil.txt", "file", b"E")], "'..'"),
    "windows dotdot": ([("{up_win}evil.txt", "file", b"E")], "'..'"),
    "duplicate": ([("a.txt", "file", b"1"), ("a.txt", "file", b"2")], "same path"),
}


def _fill(entries: list[Entry], sandbox: Path, levels: int) -> list[Entry]:
    """Replace the placeholders; ``levels``: directories between the sandbox and the extraction."""
    subs = {"{sandbox}": sandbox.as_posix(), "{up}": "../" * levels, "{up_win}": "..\\" * levels}

    def fill(s: str | bytes) -> str | bytes:
        if isinstance(s, bytes):
            return s
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    return [(str(fill(n)), k, fill(p)) for n, k, p in entries]


def _build(kind: str, path: Path, entries: list[Entry]) -> Path:
    return make_zip(path, entries) if kind == "zip" else make_tar(path, entries)


def _id(name: str) -> str:
    return name.replace(" ", "_")


def _assert_refusal(err: UnsafeArchiveError, archive: Path, entries: list[Entry], why: str) -> None:
    msg = str(err)
    assert str(archive) in msg
    assert why in msg
    # Names the offending member (one of the archive's names, quoted) and what to do.
    assert any(repr(name) in msg for name, _, _ in entries), msg
    assert "download it again from the official source" in msg


@pytest.fixture(params=[True, False], ids=["data-filter", "own-writer"])
def tar_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run tar cases with tarfile's data filter and with the fallback used on older Pythons."""
    if request.param:
        if download_module._TAR_DATA_FILTER is None:
            pytest.skip("this Python's tarfile has no data filter")
    else:
        monkeypatch.setattr(download_module, "_TAR_DATA_FILTER", None)
    return bool(request.param)


def _refused_in_sandbox(tmp_path: Path, kind: str, entries: list[Entry], why: str) -> None:
    sandbox = tmp_path / "sandbox"  # the destination's parent
    sandbox.mkdir()
    (sandbox / "victim.txt").write_bytes(b"untouched")
    dest = sandbox / "out"
    # Extraction happens in a directory beside dest: one level below the sandbox.
    entries = _fill(entries, sandbox, levels=1)
    archive = _build(kind, tmp_path / f"hostile.{kind}", entries)
    before = listing(sandbox)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest)
    _assert_refusal(info.value, archive, entries, why)
    assert listing(sandbox) == before
    assert not os.path.lexists(dest)
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize(
    ("entries", "why"), list(ZIP_SHAPES.values()), ids=[_id(n) for n in ZIP_SHAPES]
)
def test_safe_extract_refuses_hostile_zip(tmp_path: Path, entries: list[Entry], why: str) -> None:
    _refused_in_sandbox(tmp_path, "zip", entries, why)


@pytest.mark.parametrize(
    ("entries", "why"), list(TAR_SHAPES.values()), ids=[_id(n) for n in TAR_SHAPES]
)
def test_safe_extract_refuses_hostile_tar(
    tmp_path: Path, entries: list[Entry], why: str, tar_filter: bool
) -> None:
    _refused_in_sandbox(tmp_path, "tar", entries, why)


def test_safe_extract_refused_leaves_no_parent_it_made(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", CHAINED)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, sandbox / "new" / "deeper" / "out")
    assert listing(sandbox) == {}


def test_safe_extract_refuses_an_existing_link_in_dest(tmp_path: Path) -> None:
    # dest/top is a link out of dest: extracting top/a.txt must not write through it.
    sandbox = tmp_path / "sandbox"
    elsewhere = sandbox / "elsewhere"
    elsewhere.mkdir(parents=True)
    dest = sandbox / "out"
    dest.mkdir()
    (dest / "top").symlink_to(elsewhere)
    archive = make_zip(tmp_path / "a.zip", [("top/a.txt", "file", b"A")])
    before = listing(sandbox)
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, dest)
    assert listing(sandbox) == before


# --- through the CLI: the archive placed where the download error says ---------------------------


def _where_to_put_broden(dest: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    """Ask `bench data fetch` with the server unreachable and read where it says to put the zip."""
    import bench.probes.broden as broden_module

    monkeypatch.setattr(broden_module, "BRODEN_URL", "http://127.0.0.1:9/{name}.zip")
    assert main(["data", "fetch", "broden1_224", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    found = re.search(r"put it at (\S+?)\.?(?:\s|$)", err)
    assert found, err
    return Path(found.group(1))


@pytest.mark.parametrize(
    ("entries", "why"), list(ZIP_SHAPES.values()), ids=[_id(n) for n in ZIP_SHAPES]
)
def test_bench_data_fetch_refuses_hostile_broden_zip(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    entries: list[Entry],
    why: str,
) -> None:
    sandbox = tmp_path / "sandbox"  # the parent of --dest
    data = sandbox / "data"  # --dest
    data.mkdir(parents=True)
    (sandbox / "victim.txt").write_bytes(b"untouched")
    where = _where_to_put_broden(data, monkeypatch, capsys)
    assert where == data / "broden1_224.zip"
    # Broden unpacks into DIR/broden1_224, whose temporary sibling is two levels below sandbox.
    entries = _fill(entries, sandbox, levels=2)
    make_zip(where, entries)
    before = listing(sandbox)
    assert main(["data", "fetch", "broden1_224", "--dest", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Refusing to extract") and why in err, err
    assert str(where) in err and "download it again from the official source" in err
    after = listing(sandbox)
    # The only new path: the checksum record ensure_file writes beside a pre-placed archive,
    # which the message tells the user to delete with the archive.
    record = "data/broden1_224.zip.sha256.json"
    assert set(after) - set(before) == {record}
    assert str(data / "broden1_224.zip.sha256.json") in err
    del after[record]
    assert after == before
    assert not list(tmp_path.rglob("evil.txt"))


# --- good archives --------------------------------------------------------------------------------

GOOD: list[Entry] = [
    ("top/", "dir", b""),
    ("top/a.txt", "file", b"A"),
    ("top/sub/", "dir", b""),
    ("top/sub/b.bin", "file", bytes(range(256)) * 300),
    ("top/sub/deeper/c.txt", "file", b"C" * 10),  # parents implied, no directory entries
    ("top/empty/", "dir", b""),
    ("second/d.txt", "file", b""),
    ("./dotted/e.txt", "file", b"E"),  # "./" prefixes are harmless
]
GOOD_TREE = {
    "top": "dir",
    "top/a.txt": "file " + hashlib.sha256(b"A").hexdigest()[:16],
    "top/sub": "dir",
    "top/sub/b.bin": "file " + hashlib.sha256(bytes(range(256)) * 300).hexdigest()[:16],
    "top/sub/deeper": "dir",
    "top/sub/deeper/c.txt": "file " + hashlib.sha256(b"C" * 10).hexdigest()[:16],
    "top/empty": "dir",
    "second": "dir",
    "second/d.txt": "file " + hashlib.sha256(b"").hexdigest()[:16],
    "dotted": "dir",
    "dotted/e.txt": "file " + hashlib.sha256(b"E").hexdigest()[:16],
}


def test_safe_extract_good_zip(tmp_path: Path) -> None:
    _extracts_identically(tmp_path, make_zip(tmp_path / "a.zip", GOOD))


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_safe_extract_good_tar(tmp_path: Path, mode: str, tar_filter: bool) -> None:
    _extracts_identically(tmp_path, make_tar(tmp_path / "a.tar", GOOD, mode=mode))


def _extracts_identically(tmp_path: Path, archive: Path) -> None:
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "new" / "out"  # parents made on the way
    assert safe_extract(archive, dest) == dest
    assert listing(dest) == GOOD_TREE
    # Exactly the tree, and no temporary directory left beside it.
    assert listing(sandbox) == {"new": "dir", "new/out": "dir"} | {
        f"new/out/{k}": v for k, v in GOOD_TREE.items()
    }
    for f in (dest / "top" / "a.txt", dest / "top" / "sub" / "b.bin"):
        assert os.access(f, os.R_OK | os.W_OK)


def test_safe_extract_good_windows_zip_with_backslashes(tmp_path: Path) -> None:
    # Zips written on Windows may use "\\" separators and carry no Unix mode bits.
    archive = tmp_path / "win.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo("top\\a.txt"), b"A")
        zf.writestr(zipfile.ZipInfo("top\\sub\\"), b"")
    safe_extract(archive, tmp_path / "out")
    assert listing(tmp_path / "out") == {
        "top": "dir",
        "top/a.txt": GOOD_TREE["top/a.txt"],
        "top/sub": "dir",
    }


def test_safe_extract_tar_modes_pass_the_data_filter(tmp_path: Path) -> None:
    if download_module._TAR_DATA_FILTER is None:
        pytest.skip("this Python's tarfile has no data filter")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("run.sh")
        info.mode = 0o4777  # setuid, world-writable: the data filter makes it 0o755
        info.size = 2
        tf.addfile(info, io.BytesIO(b"#!"))
    safe_extract(archive, tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "run.sh").st_mode) == 0o755


def test_safe_extract_into_existing_dir_keeps_it_and_refuses_overwrite(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("top/a.txt", "file", b"A")])
    dest = tmp_path / "out"
    (dest / "other").mkdir(parents=True)
    safe_extract(archive, dest)
    assert listing(dest) == {
        "other": "dir",
        "top": "dir",
        "top/a.txt": GOOD_TREE["top/a.txt"],
    }
    before = listing(tmp_path)
    with pytest.raises(DataError, match="already exist"):
        safe_extract(archive, dest)
    assert listing(tmp_path) == before


def test_safe_extract_rejects_non_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        safe_extract(junk, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["junk.zip"]


def test_safe_extract_rejects_a_file_as_dest(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("a.txt", "file", b"A")])
    (tmp_path / "out").write_bytes(b"x")
    with pytest.raises(DataError, match="expected a directory"):
        safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"x"


def test_safe_extract_into_a_dest_that_is_a_link(tmp_path: Path) -> None:
    # dest itself may be the user's link (a datasets folder on another disk); only entries
    # below it must not be links.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "datasets").symlink_to(real)
    archive = make_zip(tmp_path / "a.zip", [("top/a.txt", "file", b"A")])
    safe_extract(archive, tmp_path / "datasets")
    assert listing(real) == {"top": "dir", "top/a.txt": GOOD_TREE["top/a.txt"]}
