"""Scoring: the programmatic entry points of the suites.

* :func:`score_run` scores a run directory written by :func:`bench.api.run` with the suites
  (default: every suite that applies to its target) and writes ``<run_dir>/suites/<suite>.json``;
* :func:`score_labels` scores a label file written by another tool (NetDissect-Lite, compexp,
  MILAN, CLIP-Dissect, DnD; see :mod:`bench.imports`) as a named method, loading only what the
  suite needs.

Both take :class:`ScoreOptions` (text models, baseline, bootstrap, device, downloads) and
per-suite config fields (``{"milannotations": {"protocol": "dnd"}}``), and return a
:class:`ScoreReport` saying where each result went. The result files are what
``bench leaderboard`` reads. Suites are listed by :func:`suite_names`.
"""

from __future__ import annotations

from bench.suites import get_suite, suite_names
from bench.suites.base import TEXT_MODES, ScoreOptions
from bench.suites.runner import ScoreReport, score_labels, score_run

__all__ = [
    "TEXT_MODES",
    "ScoreOptions",
    "ScoreReport",
    "get_suite",
    "score_labels",
    "score_run",
    "suite_names",
]
