"""A user's situation is never a traceback (issue 19, item 3): read-only or full disks, a plain
file where the cache needs a directory, a truncated probe image, deep formulas and an unterminated
quote in an imported label file each exit 2 with the file and the fix."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import DataError
from bench.imports import read_labels

FAST = ["run", "--methods", "depictions", "--no-suites", "--no-progress"]


def _clean_exit_2(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_read_only_out(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    err = _clean_exit_2(capsys, main([*FAST, "--out", str(out)]))
    assert str(out) in err
    assert "writable --out" in err


def test_full_disk(tmp_path, capsys, monkeypatch) -> None:
    import bench.schema

    real = bench.schema.atomic_write

    def atomic_write(path: object, data: object, **kw: object) -> None:
        if str(path).endswith("run.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bench.schema, "atomic_write", atomic_write)
    err = _clean_exit_2(capsys, main([*FAST, "--out", str(tmp_path / "run")]))
    assert "run.json" in err and "disk is full" in err


def test_plain_file_where_the_cache_needs_a_directory(tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "describe").write_text("not a directory")
    err = _clean_exit_2(
        capsys, main([*FAST, "--out", str(tmp_path / "run"), "--cache-dir", str(cache)])
    )
    assert str(cache / "describe") in err and "plain file" in err


def test_truncated_image_in_a_probe_root_is_named(tmp_path, capsys) -> None:
    from bench.probes import load_probe
    from bench.synth.broden_export import export_broden

    root = export_broden(tmp_path / "broden", n_images=6, seed=0)
    probe = load_probe("broden", str(root), options={"categories": "object"})
    victim = root / "images" / "synth" / "000002.png"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=str(victim)):
        for i in range(len(probe)):
            probe.load_image(i)
    code = main(
        [
            "run",
            "--methods",
            "netdissect",
            "--probe",
            "broden",
            "--probe-root",
            str(root),
            "--no-suites",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = _clean_exit_2(capsys, code)
    assert str(victim) in err and "good copy" in err


COMPEXP_HEADER = "unit,category,label,score,length"


def _deep_parentheses(n: int) -> str:
    deep = "water"
    for k in range(n):
        deep = f"({deep} AND b{k})" if k % 2 else f"(b{k} OR {deep})"
    return deep


@pytest.mark.parametrize(
    "label", [_deep_parentheses(1000), "NOT " * 5000 + "water"], ids=["parens", "nots"]
)
def test_deep_formulas_in_an_imported_file_exit_2(tmp_path, capsys, label: str) -> None:
    path = tmp_path / "tally_layer4.csv"
    path.write_text(f'{COMPEXP_HEADER}\n0,object,"{label}",0.1,3\n')
    code = main(
        [
            "score",
            "--labels",
            str(path),
            "--format",
            "compexp",
            "--target",
            "resnet50",
            "--suite",
            "final-layer",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = _clean_exit_2(capsys, code)
    assert "levels deep" in err and "tally_layer4.csv" in err


def test_unterminated_quote_in_a_label_csv_names_the_line(tmp_path) -> None:
    path = tmp_path / "tally_layer4.csv"
    path.write_text(
        f'{COMPEXP_HEADER}\n0,object,water,0.1,1\n1,object,"river,0.1,1\n2,object,sky,0.1,1\n'
    )
    with pytest.raises(DataError, match="line 3: .*quote"):
        read_labels(path, "compexp")
    # Closed later on another line: still one label swallowing lines, still refused.
    path.write_text(f'{COMPEXP_HEADER}\n0,object,"water,0.1,1\n1,object,river",0.1,1\n')
    with pytest.raises(DataError, match="line 2: a quoted field runs on to line 3"):
        read_labels(path, "compexp")
    # A quoted field on its own line is fine.
    path.write_text(f'{COMPEXP_HEADER}\n0,object,"water OR river",0.1,2\n')
    assert read_labels(path, "compexp")[0].label == "water OR river"
