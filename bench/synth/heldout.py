"""Held-out concept classes: the offline stand-in for CIFAR in the ``cifar-auroc`` suite.

Ten broad classes, each one concept of the catalogue ("anything red", "circles", "grass"...).
An image of class ``k`` shows its concept throughout (every object red; every object a circle;
a grass background) and, as far as the world allows, none of the other nine: its other
attributes are drawn from values that are not class concepts. So exactly one class concept is
in each image, and the labels are single-label.
"""

from __future__ import annotations

import numpy as np

from bench.errors import UsageError
from bench.synth import concepts as C
from bench.synth import world as W

HELDOUT_CLASSES: tuple[str, ...] = (
    "red",
    "blue",
    "circle",
    "triangle",
    "striped",
    "dotted",
    "grass",
    "water",
    "snow",
    "brick",
)
#: Default world seed of the held-out set (distinct from training and probe seeds).
HELDOUT_SEED = 424_242


def _allowed(category: str) -> tuple[str, ...]:
    """Values of ``category`` that are not a held-out class."""
    return tuple(v for v in C.values(category) if v not in HELDOUT_CLASSES)


def heldout_scene(class_name: str, rng: np.random.Generator) -> W.Scene:
    """A scene that exemplifies ``class_name`` and no other held-out class."""
    if class_name not in HELDOUT_CLASSES:
        raise UsageError(f"Expected a held-out class in {HELDOUT_CLASSES}, got {class_name!r}.")
    category = C.concept(class_name).category
    allowed = {cat: _allowed(cat) for cat in ("color", "object", "pattern", "material")}
    allowed[category] = (class_name,)
    main_sizes = ("small", "medium") if category == "material" else ("medium", "large")
    return W.sample_scene(
        rng,
        materials=allowed["material"],
        colors=allowed["color"],
        shapes=allowed["object"],
        patterns=allowed["pattern"],
        main_sizes=main_sizes,
    )


def heldout_scenes(n: int, seed: int = HELDOUT_SEED) -> tuple[list[W.Scene], np.ndarray]:
    """``n`` scenes and their int64 [N] class indices; image ``i`` has class ``i % 10``."""
    if n < 1:
        raise UsageError(f"Expected n >= 1, got {n}.")
    labels = np.arange(n, dtype=np.int64) % len(HELDOUT_CLASSES)
    scenes = [
        heldout_scene(HELDOUT_CLASSES[int(k)], W.scene_rng(seed, i)) for i, k in enumerate(labels)
    ]
    return scenes, labels


def heldout_images(
    n: int, seed: int = HELDOUT_SEED, size: int = W.DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, S, S, 3] and int64 class indices [N] (see :func:`heldout_scenes`)."""
    scenes, labels = heldout_scenes(n, seed)
    images = np.stack([W.render(s, size).image for s in scenes])
    return images, labels
