"""Recipes of the synthetic targets: architecture, task, planted units and training settings.

Pure data (no torch): :mod:`bench.synth.targets` reads it to build ``TargetSpec`` values without
importing torch, and :mod:`bench.synth.train` follows it to reproduce the shipped weights.

Unit indices of planted units are 0-based and deliberately not the first channels, so a method
cannot find them by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import UnknownNameError, UsageError
from bench.synth import concepts as C

#: Seed of the fresh images accuracy and planted-unit selectivity are measured on. Training uses
#: the recipe's seed for its world, which must differ (checked by ``bench.synth.evaluate``).
EVAL_SEED = 917_331

TASKS: tuple[str, ...] = ("objects", "scenes")
#: Loss weight of pattern units (see ``PlantedUnit.weight``).
PATTERN_WEIGHT = 3.0
#: Loss weight of units trained by regression (see ``PlantedUnit.objective``).
REGRESSION_WEIGHT = 3.0
#: How a planted unit is trained (see ``TrainConfig``).
OBJECTIVES: tuple[str, ...] = ("bce", "regression")
# Why the recipes train for 20-24 epochs. A planted unit must be selective over the whole
# probe, not only at its top: the ``faithfulness`` suite scores the planted concept as a label
# by the AUROC of the unit's mean-pooled activation per image against the concept's presence,
# and asks at least 0.95 of every planted unit. Trained for 5-8 epochs (the targets before
# this note), every planted unit's 15 top images showed its concept, but five shape and
# pattern units (synth.resnet circle and star, synth.convnet dotted, synth.resnet_scenes
# checkered and cross) fired weakly on every object and reached pooled AUROCs of 0.61-0.89:
# they underfit (on synth.resnet_scenes, the AUROCs on its training images were as low).
# Measured on the cards' evaluation images: more epochs alone bring them to 0.96-0.99; a
# per-image ranking loss on pooled activations, a zero BCE bias, or the regression objective
# for those units did not.


def task_class_names(task: str) -> tuple[str, ...]:
    """Human-readable class names of a task, in class-index order.

    ``objects``: colour and shape of the main (largest, top-most) object, "red circle";
    ``scenes``: the scene of the image, "beach".
    """
    if task == "objects":
        return tuple(f"{c} {s}" for c in C.COLORS for s in C.SHAPES)
    if task == "scenes":
        return C.SCENES
    raise UnknownNameError("synthetic task", task, TASKS)


@dataclass(frozen=True, kw_only=True, slots=True)
class PlantedUnit:
    """Channel ``unit`` (0-based) of ``layer`` is trained to detect ``concept`` (formula text).

    ``weight`` scales its auxiliary loss. Pattern units get more: neither task's cross-entropy
    needs patterns, so nothing else in the network learns the features they rest on.
    ``objective`` (see ``TrainConfig``): ``"bce"`` or ``"regression"``; regression makes the
    unit answer every instance (every disjunct) alike, which an OR unit needs: its concept covers
    several times the share of positions a dissection reads (its top 0.5%).
    """

    layer: str
    unit: int
    concept: str
    weight: float = 1.0
    objective: str = "bce"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(
                f"Expected a planted-unit objective in {OBJECTIVES}, got {self.objective!r}."
            )

    @property
    def formula(self) -> list:
        return C.parse_formula(self.concept)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "unit": self.unit,
            "concept": self.concept,
            "formula": self.formula,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """How a synthetic target is trained.

    ``n_train`` images of the world (seeded by the recipe's seed) are rendered once and seen
    ``epochs`` times with random horizontal flips. The loss is cross-entropy on the task plus
    ``aux_weight`` times, per planted unit (times its ``weight``), its auxiliary loss against
    the fraction of each cell of its map that the concept covers (``PlantedUnit.objective``;
    the scale of the unit's pre-activation is learned):

    - ``bce``: a class-balanced BCE on the logit ``scale * pre-activation + unit_bias`` (the
      negative bias makes the rectified unit respond, weakly, wherever the concept covers more
      than ~12% of a cell), plus ``peak_weight`` times a balanced BCE between the map's maximum
      and whether the image holds the concept, plus ``hard_weight`` times the BCE of the 1%
      highest concept-free cells;
    - ``regression``: the scaled pre-activation regressed onto the coverage (Huber; an
      overshoot weighs ``over_weight`` times an undershoot), each balance group (disjunct, object
      colour, shape, pattern) weighing equally; a squared hinge ``relu(x + margin)^2`` on
      concept-free cells, the 1% highest of which weigh ``hard_weight`` more; ``peak_weight``
      times the same on each image's maximum; and ``uniform_weight`` times the spread, across
      colours, shapes and patterns, of the mean top quarter of the unit's answers on fully
      covered cells (see ``bench.synth.train.unit_loss``). So the unit answers every instance
      of its concept alike, in proportion to how much of a cell it covers, and is 0 elsewhere.

    ``threads`` fixes torch's intra-op threads, so weights are identical across machines with
    the same CPU kind, whatever their core count.
    """

    n_train: int = 10_000
    epochs: int = 7
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 5e-4
    aux_weight: float = 1.0
    peak_weight: float = 0.5
    hard_weight: float = 0.5
    unit_bias: float = -2.0
    margin: float = 0.1
    over_weight: float = 4.0
    uniform_weight: float = 30.0
    flip: bool = True
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    name: str
    arch: str
    task: str
    layers: tuple[str, ...]
    planted: tuple[PlantedUnit, ...]
    seed: int
    description: str
    final_layer: str = "fc"
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def class_names(self) -> tuple[str, ...]:
        return task_class_names(self.task)

    @property
    def weights_file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def card_file(self) -> str:
        return f"{self.name}.json"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="synth.resnet",
            arch="synth_resnet",
            task="objects",
            layers=("layer1", "layer2", "layer3", "fc"),
            seed=1,
            description="Tiny ResNet classifying the main object's colour and shape (48 classes).",
            # Epochs: see the comment on OBJECTIVES.
            train=TrainConfig(epochs=24),
            planted=(
                PlantedUnit(layer="layer1", unit=3, concept="red"),
                PlantedUnit(
                    layer="layer1",
                    unit=11,
                    concept="purple OR orange",
                    weight=REGRESSION_WEIGHT,
                    objective="regression",
                ),
                PlantedUnit(layer="layer2", unit=6, concept="striped", weight=PATTERN_WEIGHT),
                PlantedUnit(layer="layer3", unit=14, concept="circle"),
                PlantedUnit(layer="layer3", unit=27, concept="star"),
                PlantedUnit(layer="layer3", unit=40, concept="red AND circle"),
                PlantedUnit(layer="layer3", unit=52, concept="yellow AND square AND NOT striped"),
            ),
        ),
        Recipe(
            name="synth.convnet",
            arch="synth_convnet",
            task="objects",
            layers=("conv1", "conv2", "conv3", "conv4", "fc"),
            seed=2,
            description="AlexNet-style plain conv net classifying the main object's colour and "
            "shape (48 classes).",
            # Measured: the tail-uniformity term moves this net's OR unit further from its
            # disjunction (its top 0.5% then lies mostly on yellow objects on water).
            train=TrainConfig(epochs=20, uniform_weight=0.0),
            planted=(
                PlantedUnit(layer="conv2", unit=7, concept="blue"),
                PlantedUnit(
                    layer="conv2",
                    unit=30,
                    concept="orange OR black",
                    weight=REGRESSION_WEIGHT,
                    objective="regression",
                ),
                PlantedUnit(layer="conv3", unit=12, concept="triangle"),
                PlantedUnit(layer="conv3", unit=33, concept="dotted", weight=PATTERN_WEIGHT),
                PlantedUnit(
                    layer="conv4",
                    unit=5,
                    concept="blue AND square",
                    weight=REGRESSION_WEIGHT,
                    objective="regression",
                ),
                PlantedUnit(layer="conv4", unit=41, concept="water"),
            ),
        ),
        Recipe(
            name="synth.resnet_scenes",
            arch="synth_resnet",
            task="scenes",
            layers=("layer1", "layer2", "layer3", "fc"),
            seed=3,
            description="Tiny ResNet classifying the scene (7 classes).",
            train=TrainConfig(n_train=8000, epochs=20),
            planted=(
                PlantedUnit(layer="layer1", unit=2, concept="grass"),
                PlantedUnit(
                    layer="layer1",
                    unit=9,
                    concept="purple OR black",
                    weight=REGRESSION_WEIGHT,
                    objective="regression",
                ),
                PlantedUnit(layer="layer2", unit=4, concept="white"),
                PlantedUnit(layer="layer2", unit=17, concept="checkered", weight=PATTERN_WEIGHT),
                PlantedUnit(layer="layer3", unit=30, concept="cross"),
                PlantedUnit(layer="layer3", unit=45, concept="green AND triangle"),
            ),
        ),
    )
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownNameError("synthetic target", name, RECIPES)
    return RECIPES[name]
