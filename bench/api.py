"""Programmatic entry points, one per ``bench`` command that does work:

* :func:`run`: describe units of a target with methods (the describe stage, :mod:`bench.runner`);
* :func:`score_run` and :func:`score_labels`: score a run directory, or a label file of another
  tool, with the suites (:mod:`bench.suites.scoring`);
* :func:`build_leaderboard`: the static site from suite results (:mod:`leaderboard.build`);
* :func:`milan_train` and :func:`milan_evaluate`: MILAN's training and generalisation
  experiments (``bench milan``; the code lives with the method, reached through a lazy string so
  the core never imports ``methods``).

Everything else is an implementation module; import the names here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.registry import import_string
from bench.runner import (
    DEFAULT_PROBE,
    DEFAULT_TARGET,
    MethodSummary,
    RunConfig,
    RunResult,
    describe_cached,
    parse_units,
    resolve_probe_name,
    run,
)
from bench.suites.base import ScoreOptions
from bench.suites.scoring import ScoreReport, score_labels, score_run

__all__ = [
    "DEFAULT_PROBE",
    "DEFAULT_TARGET",
    "MethodSummary",
    "RunConfig",
    "RunResult",
    "ScoreOptions",
    "ScoreReport",
    "build_leaderboard",
    "describe_cached",
    "metrics_check",
    "milan_evaluate",
    "milan_train",
    "parse_units",
    "resolve_probe_name",
    "run",
    "score_labels",
    "score_run",
]

_MILAN_EXPERIMENTS = "methods.milan.experiments"


def build_leaderboard(results: Sequence[str | Path], out: str | Path) -> Path:
    """Build the static leaderboard site from result files or directories; its index page."""
    from leaderboard.build import build

    return Path(build(list(results), out))


def milan_train(
    *,
    keys: str,
    hold_out: str | None = None,
    out: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train MILAN on MILANNOTATIONS ``keys`` minus ``hold_out`` (cached by the content hash of
    the training data and the config, under ``cache_dir``); the model goes to ``out`` if given."""
    train = import_string(f"{_MILAN_EXPERIMENTS}:train")
    result: tuple[Path, dict[str, Any]] = train(
        keys=keys,
        hold_out=hold_out,
        out=out,
        config=config,
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        progress=progress,
    )
    return result


def milan_evaluate(
    *,
    experiment: str,
    keys: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One of MILAN's generalisation experiments: train on each split's train units, score corpus
    BLEU on its test units (wPMI and the captioning ablation)."""
    evaluate = import_string(f"{_MILAN_EXPERIMENTS}:evaluate")
    rows: list[dict[str, Any]] = evaluate(
        experiment=experiment,
        keys=keys,
        config=config,
        seed=seed,
        device=device,
        cache_dir=cache_dir,
        progress=progress,
    )
    return rows


def metrics_check(
    targets: Sequence[str] | None = None,
    out: str | Path = "results/metrics",
    *,
    n_images: int | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    text_suites: str | Sequence[str] | None = None,
    row_groups: str | Sequence[str] | None = None,
    annotations: str | None = None,
) -> dict[str, Path]:
    """``bench metrics check``: the metric report card (NeuronEval's sanity tests on units whose
    truth is known) of each target (default: every synthetic target), written to
    ``<out>/<target>/suites/sanity.json``. Returns target -> result file.

    ``text_suites``: the suites whose text metrics are tested (default: all, ``""``: none);
    ``row_groups``: the other suites' metrics tested (:mod:`bench.suites.sanity_rows`; default:
    all, ``""``: none); ``annotations``: an ``annotations.csv`` for the milannotations text
    tests."""
    from bench.registry import TARGETS
    from bench.results import suite_result_path, write_suite_result
    from bench.suites.sanity import SanityConfig
    from bench.suites.sanity import metrics_check as check

    if not targets:
        targets = [t for t in TARGETS.names() if TARGETS.get(t).family == "synthetic"]
    options = ScoreOptions(baseline=False, device=device, cache_dir=cache_dir, seed=seed)
    text: dict[str, Any] = {}
    if text_suites is not None:
        text["text_suites"] = (
            tuple(x for x in text_suites.split(",") if x)
            if isinstance(text_suites, str)
            else tuple(text_suites)
        )
    if row_groups is not None:
        text["row_groups"] = (
            tuple(x for x in row_groups.split(",") if x)
            if isinstance(row_groups, str)
            else tuple(row_groups)
        )
    config = SanityConfig(n_images=n_images, seed=seed, annotations=annotations, **text)
    written = {}
    for target in targets:
        result = check(target, config=config, options=options)
        written[target] = write_suite_result(
            suite_result_path(Path(out) / target, "sanity"), result
        )
    return written
