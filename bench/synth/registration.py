"""How the synthetic world plugs into the harness, as any plug-in would: its targets, its probe
sets and its MILANNOTATIONS keys are registered here, called by the registries on their first
lookup (``bench.registry``). ``bench.targets``, ``bench.probes`` and ``bench.milannotations``
know nothing of the synthetic world.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bench.cache import Cache
    from bench.probes.base import ProbeSet
    from bench.targets import TargetSpec

#: ``TargetSpec.loader`` of every synthetic target.
TARGET_LOADER = "bench.synth.registration:load_target"


def register_targets() -> None:
    """Every synthetic target (one per recipe) in ``TARGETS`` (idempotent)."""
    from bench.registry import TARGETS
    from bench.synth.targets import synthetic_target_specs

    for spec in synthetic_target_specs():
        if spec.name not in TARGETS:
            TARGETS.register(spec.name, spec)


def load_target(
    spec: TargetSpec, local: Path | None, download: bool, progress: bool
) -> tuple[torch.nn.Module, str, tuple[str, ...] | None]:
    """The loader of synthetic targets: the packaged weights, or ``local`` (``--weights``)."""
    from bench.cache import sha256_file
    from bench.synth.targets import load_synthetic_model
    from bench.targets import apply_state_dict, load_state_dict_file

    model, sha, names = load_synthetic_model(spec)
    if local is not None:
        apply_state_dict(model, load_state_dict_file(local), source=str(local), arch=spec.arch)
        sha = sha256_file(local)
    return model, sha, tuple(names) if names is not None else None


def synthetic(
    root: str | Path | None,
    *,
    download: bool = False,
    cache: Cache | None = None,
    **options: Any,
) -> ProbeSet:
    """The synthetic world's probe images with concept masks (written in the Broden format)."""
    from bench.synth.probes import synthetic_probe

    return synthetic_probe(root, download=download, cache=cache, **options)


def synthetic_heldout(root: str | Path | None, *, download: bool = False, **options: Any) -> Any:
    """The synthetic world's held-out labelled classes (the offline stand-in for CIFAR)."""
    from bench.synth.probes import synthetic_heldout_probe

    return synthetic_heldout_probe(root, download=download, **options)


def register_probes() -> None:
    """The ``synthetic`` and ``synthetic-heldout`` probe sets in ``PROBES`` (idempotent)."""
    from bench.probes import declare_options, int_option, list_option
    from bench.registry import PROBES

    declare_options(
        synthetic,
        n_images=int_option,
        seed=int_option,
        size=int_option,
        categories=list_option,
        max_images=int_option,
    )
    declare_options(synthetic_heldout, n_images=int_option, seed=int_option, size=int_option)
    for name, factory in (("synthetic", synthetic), ("synthetic-heldout", synthetic_heldout)):
        if name not in PROBES:
            PROBES.register(name, factory)


def _models() -> tuple[str, ...]:
    from bench.synth.recipes import RECIPES  # one target per recipe; no file is read

    return tuple(RECIPES)


def _root(cache: Cache | None, *, progress: bool = False) -> Path:
    from bench.synth.annotators import synthetic_milannotations

    return synthetic_milannotations(cache, progress=progress)


def _facets(model: str) -> dict[str, str]:
    from bench.synth.recipes import recipe

    r = recipe(model)
    return {"arch": r.arch, "task": r.task}


def register_milannotations() -> None:
    """The simulated annotators' keys ``<target>/synthetic`` as a MILANNOTATIONS key source."""
    from bench.milannotations import SYNTHETIC_DATASET, KeySource
    from bench.registry import MILANNOTATIONS_SOURCES

    if SYNTHETIC_DATASET not in MILANNOTATIONS_SOURCES:
        MILANNOTATIONS_SOURCES.register(
            SYNTHETIC_DATASET,
            KeySource(
                dataset=SYNTHETIC_DATASET,
                models=_models,
                root=_root,
                facets=_facets,
                origin="simulated annotators, bench.synth.annotators.synthetic_milannotations",
            ),
        )


def read_phrase(label: str) -> list | None:
    """The synthetic probe's label reader (``bench.presence``): free text read by the world's
    phrase parser (plurals, synonyms, Broden suffixes; ``and``/``with``/``on`` conjoin), as a
    JSON formula tree over the world's concept names, or ``None`` when it names none. A context
    ("red squares on grass") is marked ``["image", F]``: it holds on the image, not on the
    thing's pixels (:func:`bench.synth.text.read_phrase_tree`)."""
    from bench.synth.text import read_phrase_tree

    return read_phrase_tree(label)


def register_label_readers() -> None:
    """The phrase parser as the label reader of the ``synthetic`` probe (idempotent)."""
    from bench.registry import LABEL_READERS

    if "synthetic" not in LABEL_READERS:
        LABEL_READERS.register("synthetic", read_phrase)
