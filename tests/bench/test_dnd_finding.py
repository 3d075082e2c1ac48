"""The DnD paper's finding, reproduced on synthetic annotations.

Bai, Oikarinen et al. (2024, Table 9) scored labels against MILANNOTATIONS and found that the
constant label "depiction" beats every method: human annotations are noisy and generic enough
that the most generic text wins. A benchmark reporting MILANNOTATIONS agreement must therefore
show that baseline and the inter-annotator ceiling beside every method.

Here the simulated annotators play both kinds of annotator on the same units of the same run
(NetDissect and the constant baseline on the embedded default): noisy, generic ones
(``noise=1``: mostly "objects", "shapes", "parts of images") and careful ones (``noise=0``: the
concepts under the masks). The constant label must win against the noisy ones and lose against
the careful ones, and the result files and the leaderboard must show the ceiling beside both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.api import RunConfig, run
from bench.results import SuiteResult, read_suite_result
from bench.suites.scoring import ScoreOptions, score_run

METRICS = ("bertscore", "sentence-cosine")


def _score(run_dir: Path, noise: float) -> SuiteResult:
    report = score_run(
        run_dir,
        ["milannotations"],
        options=ScoreOptions(n_resamples=2000, device="cpu", exemplars=False),
        suite_config={"milannotations": {"noise": noise}},
    )
    return read_suite_result(report.results["milannotations"])


def test_constant_label_wins_only_against_noisy_annotators(tmp_path: Path) -> None:
    import torch

    from leaderboard.build import build

    torch.set_num_threads(1)
    noisy_dir = tmp_path / "noisy"
    result = run(RunConfig(methods=("netdissect", "depictions"), out=str(noisy_dir)))
    assert result.exit_code == 0
    careful_dir = tmp_path / "careful"
    shutil.copytree(noisy_dir, careful_dir)

    noisy = _score(noisy_dir, 1.0)
    careful = _score(careful_dir, 0.0)
    assert noisy.settings["annotations"]["noise"] == 1.0
    assert careful.settings["annotations"]["noise"] == 0.0
    assert [u.unit for u in noisy.units] == [u.unit for u in careful.units]
    generic = {"objects", "shapes", "things", "patterns", "parts of images"}
    share = sum(t in generic for u in noisy.units for t in u.references["annotations"]) / (
        3 * len(noisy.units)
    )
    assert share > 0.6  # the noisy annotators really are generic
    for name in METRICS:
        n, c = noisy.metric(name), careful.metric(name)
        # Noisy, generic annotators: the label that says nothing wins.
        assert n.per_method["depictions"].mean > n.per_method["netdissect"].mean, name
        assert n.per_method["depictions"].group == 1
        # Careful annotators: the informative method wins.
        assert c.per_method["netdissect"].mean > c.per_method["depictions"].mean, name
        assert c.per_method["netdissect"].group == 1 and c.per_method["depictions"].group == 2
        # The ceiling is there beside both, and careful annotators agree more.
        assert n.ceiling is not None and c.ceiling is not None
        assert c.ceiling.mean > n.ceiling.mean
        assert n.ceiling.n == c.ceiling.n == len(noisy.units)

    # ... and not by chance: on some metric the paired bootstrap separates them.
    assert any(noisy.metric(m).per_method["netdissect"].group == 2 for m in METRICS)

    # The leaderboard of each shows the ceiling row beside the methods, with its numbers.
    for run_dir, scored in ((noisy_dir, noisy), (careful_dir, careful)):
        html = build([run_dir], tmp_path / f"site-{run_dir.name}").read_text(encoding="utf-8")
        assert '<tbody class="ceiling">' in html and "inter-annotator ceiling" in html
        for name in METRICS:
            assert f"{scored.metric(name).ceiling.mean:.3f}" in html


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    import torch

    torch.set_num_threads(1)
