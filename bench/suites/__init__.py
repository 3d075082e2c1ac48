"""Scoring suites: tasks that score every method's labels on shared references.

Each suite is a :class:`~bench.suites.base.Suite` subclass (template method: the base class owns
the statistics and the result file, a suite writes ``_score``):

==================  ===========================================================================
``milannotations``  labels against each unit's three human (or simulated) annotations, with the
                    inter-annotator ceiling; optionally the DnD protocol (reliable units only)
``final-layer``     final-layer units against the names of their classes
``cifar-auroc``     per class, the unit whose label is closest to the class name, used as a
                    one-class classifier by its mean activation (AUROC, AUPRC)
``planted``         synthetic targets: whether labels name the concepts planted in units
``faithfulness``    each unit's activation over the probe against its label's concept presence
                    (AUROC, AUPRC, IoU, F1, Pearson, MAD; unparsed labels counted)
``generated``       each unit's activations on images generated from its label against control
                    images (CoSy: AUC, MAD, Mann-Whitney p)
==================  ===========================================================================

:func:`bench.scoring.score_run` scores a run directory with them and writes
``<run_dir>/suites/<suite>.json`` (:class:`bench.results.SuiteResult`);
:func:`bench.scoring.score_labels` scores labels imported from another tool's file.

Suites are registered lazily in ``bench.registry.SUITES`` by :func:`register_builtin_suites`.
"""

from __future__ import annotations

from typing import Any

#: Built-in suites, name -> ``"module:Class"`` (imported on first use), in display order.
BUILTIN_SUITES: dict[str, str] = {
    "milannotations": "bench.suites.milannotations:MilannotationsSuite",
    "final-layer": "bench.suites.final_layer:FinalLayerSuite",
    "cifar-auroc": "bench.suites.cifar_auroc:CifarAurocSuite",
    "planted": "bench.suites.planted:PlantedSuite",
    "faithfulness": "bench.suites.faithfulness:FaithfulnessSuite",
    "generated": "bench.suites.generated:GeneratedSuite",
}


def register_builtin_suites() -> None:
    """Register the built-in suites in ``bench.registry.SUITES`` (idempotent; usable as the
    registry's ``populate`` hook)."""
    from bench.registry import SUITES

    for name, entry in BUILTIN_SUITES.items():
        if name not in SUITES:
            SUITES.register(name, entry)


def get_suite(name: str) -> Any:
    """The suite class registered as ``name`` (built-ins are registered first)."""
    from bench.registry import SUITES

    register_builtin_suites()
    return SUITES.get(name)


def suite_names() -> list[str]:
    """Registered suite names: the built-ins in display order, then any others sorted."""
    from bench.registry import SUITES

    register_builtin_suites()
    names = SUITES.names()
    return [n for n in BUILTIN_SUITES if n in names] + sorted(
        n for n in names if n not in BUILTIN_SUITES
    )
