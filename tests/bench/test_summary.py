"""What `bench run` tells the user (issue 19, item 7): scores per suite and method, the page,
counts that add up; readable `bench list methods` and `--help`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import _first_sentence, build_parser, main


def test_list_methods_prints_whole_first_sentences(capsys) -> None:
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines
    for line in lines:
        assert line.rstrip().endswith((".", ")")), line  # a whole sentence, not cut
        assert "module docstring" not in line and "``" not in line and ":class:" not in line


def test_first_sentence() -> None:
    doc = """The best concept of a unit, by IoU with
    ``segmentations`` (see :class:`~bench.dissect.Tally`). More text.

    Another paragraph."""
    assert (
        _first_sentence(doc)
        == "The best concept of a unit, by IoU with segmentations (see bench.dissect.Tally)."
    )
    assert _first_sentence("Labels, e.g. dogs. Rest.") == "Labels, e.g. dogs."
    assert _first_sentence(None) == ""


def test_help_has_examples_and_every_run_option_has_help() -> None:
    parser = build_parser()
    assert "examples:" in parser.format_help()
    run = next(
        a
        for a in parser._subparsers._group_actions[0].choices.items()
        if a[0] == "run"  # type: ignore[union-attr]
    )[1]
    for action in run._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


def test_run_prints_scores_and_builds_the_leaderboard(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results" / "run"
    args = ["run", "--methods", "netdissect", "--units", "0-5", "--layers", "layer3",
            "--no-progress", "--bootstrap", "200", "--out", str(out)]  # fmt: skip
    code = main(args)
    text = capsys.readouterr().out
    assert code == 0, text
    assert "best group" in text
    score_lines = [line for line in text.splitlines() if line.startswith("  * ")]
    assert any("netdissect" in line for line in score_lines), text
    assert "%" in text and "interval" in text
    site = tmp_path / "results" / "leaderboard" / "index.html"
    assert f"leaderboard: {site}" in text and site.is_file()
    row = next(line.split() for line in text.splitlines() if line.startswith("netdissect "))
    ok, failed, computed, resumed, cached = (int(v) for v in row[1:6])
    assert ok + failed == computed + resumed + cached == 6

    # Again in another directory: every unit from the describe cache, counted as cached.
    out2 = tmp_path / "results" / "run2"
    assert main([*args[:-1], str(out2), "--no-leaderboard"]) == 0
    text = capsys.readouterr().out
    row = next(line.split() for line in text.splitlines() if line.startswith("netdissect "))
    assert [int(v) for v in row[1:6]] == [6, 0, 0, 0, 6]
    assert "leaderboard:" not in text


@pytest.mark.parametrize("flags", [["--no-leaderboard", "--leaderboard", "x"]])
def test_leaderboard_flags_conflict(flags, tmp_path, capsys) -> None:
    code = main(["run", "--methods", "depictions", "--units", "0", "--no-progress",
                 "--out", str(tmp_path / "r"), *flags])  # fmt: skip
    assert code == 2
    assert "--no-leaderboard" in capsys.readouterr().err
