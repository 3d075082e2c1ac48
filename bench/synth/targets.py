"""Target specs and loading for the synthetic targets (family ``"synthetic"``).

Specs come from the recipes and the cards shipped beside the weights in ``bench/data/synth``;
building them imports neither torch nor the weights, so registering targets stays cheap.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DataError, WeightsUnavailableError
from bench.synth.recipes import RECIPES, recipe

if TYPE_CHECKING:
    from torch import nn

    from bench.targets import TargetSpec

log = logging.getLogger(__name__)


def _data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "synth"


def load_card(name: str, *, directory: Path | None = None) -> dict[str, Any]:
    """The card (JSON) of synthetic target ``name``: class names, planted units, accuracy, ..."""
    rec = recipe(name)
    path = (directory or _data_dir()) / rec.card_file
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Expected the card of synthetic target '{name}' at {path}, found nothing. "
            f"Create it with `bench synth train --target {name}`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(
            f"Could not read the card {path}: {e}. Re-create it with "
            f"`bench synth train --target {name}`."
        ) from e
    if card.get("name") != name:
        raise DataError(f"Expected card {path} to describe '{name}', got {card.get('name')!r}.")
    return card


def synthetic_target_spec(name: str, *, directory: Path | None = None) -> TargetSpec:
    """The :class:`~bench.targets.TargetSpec` of one synthetic target."""
    from bench.synth import world as W
    from bench.targets import Preprocessing, TargetSpec

    rec = recipe(name)
    directory = directory or _data_dir()
    sha = None
    card_path = directory / rec.card_file
    if card_path.is_file():
        sha = load_card(name, directory=directory).get("weights_sha256")
    options: dict[str, Any] = {"task": rec.task}
    if directory != _data_dir():
        options["directory"] = str(directory)
    return TargetSpec(
        name=rec.name,
        family="synthetic",
        arch=rec.arch,
        weights=rec.weights_file,
        preprocessing=Preprocessing(input_size=W.DEFAULT_SIZE, resize=None),
        layers=rec.layers,
        final_layer=rec.final_layer,
        num_classes=len(rec.class_names),
        weights_sha256=sha,
        class_names_source="card",
        description=rec.description,
        options=options,
        loader="bench.synth.registration:load_target",
    )


def synthetic_target_specs() -> list[TargetSpec]:
    """Specs of every synthetic target, in recipe order."""
    return [synthetic_target_spec(name) for name in RECIPES]


def load_synthetic_model(spec: TargetSpec) -> tuple[nn.Module, str, tuple[str, ...]]:
    """``(model in eval mode with its weights, sha256 of the weights file, class names)``.

    The weights file is ``spec.weights`` in ``bench/data/synth`` (or ``spec.options["directory"]``);
    its SHA-256 must equal ``spec.weights_sha256`` when that is set.
    """
    from safetensors.torch import load

    from bench.cache import sha256_bytes
    from bench.synth.models import build_model

    directory = Path(spec.options.get("directory") or _data_dir())
    if not spec.weights:
        raise WeightsUnavailableError(
            f"Expected a weights file name in the spec of '{spec.name}', got none."
        )
    path = directory / spec.weights
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Expected the weights of synthetic target '{spec.name}' at {path}, found nothing. "
            f"Create them with `bench synth train --target {spec.name}`."
        )
    data = path.read_bytes()
    sha = sha256_bytes(data)
    if spec.weights_sha256 and sha != spec.weights_sha256:
        raise WeightsUnavailableError(
            f"Expected weights {path} with sha256 {spec.weights_sha256}, got {sha}. The file and "
            f"its card disagree; re-create both with `bench synth train --target {spec.name}`."
        )
    if (directory / recipe(spec.name).card_file).is_file():
        class_names = tuple(load_card(spec.name, directory=directory)["class_names"])
    else:
        class_names = recipe(spec.name).class_names
    model = build_model(spec.arch, spec.num_classes)
    try:
        model.load_state_dict(load(data), strict=True)
    except (RuntimeError, KeyError) as e:
        raise DataError(
            f"Weights {path} do not fit architecture '{spec.arch}': {e}. Re-create "
            f"them with `bench synth train --target {spec.name}`."
        ) from e
    model.eval()
    return model, sha, class_names
