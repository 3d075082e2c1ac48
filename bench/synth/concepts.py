"""The concept catalogue of the synthetic world, and logical formulas over it.

Every concept has a stable label number (1.., 0 is "unlabelled" as in Broden), a clean name
("red"), the name as Broden spells it (colours end in ``-c``, scenes in ``-s``) and a category.
Clean names are unique across categories, so a formula leaf is just a clean name.

Formulas are JSON-able trees (:mod:`bench.formula`'s form, which target cards and CompExp use)::

    ["leaf", "red"]
    ["not", F]
    ["and", F, G]        # also n-ary: ["and", F, G, H]
    ["or", F, G]

and render as ``"red AND circle"``, ``"(grass OR sand) AND NOT striped"``; the functions at the
end of this module read and evaluate them with :mod:`bench.formula`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.probes.base import Concept

if TYPE_CHECKING:
    import numpy as np

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
MATERIALS: tuple[str, ...] = ("grass", "sky", "water", "sand", "brick", "wood", "snow")
#: The image-level scene of each background material.
SCENE_OF_MATERIAL: dict[str, str] = {
    "grass": "meadow",
    "sky": "skyscape",
    "water": "lake",
    "sand": "beach",
    "brick": "street",
    "wood": "cabin",
    "snow": "snowfield",
}
SCENES: tuple[str, ...] = tuple(SCENE_OF_MATERIAL[m] for m in MATERIALS)

#: Per-pixel categories, in the order the world stores label maps.
PIXEL_CATEGORIES: tuple[str, ...] = ("color", "object", "pattern", "material")
#: Image-level categories.
IMAGE_CATEGORIES: tuple[str, ...] = ("scene",)
CATEGORIES: tuple[str, ...] = PIXEL_CATEGORIES + IMAGE_CATEGORIES

_VALUES: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "object": SHAPES,
    "pattern": PATTERNS,
    "material": MATERIALS,
    "scene": SCENES,
}
_SUFFIX = {"color": "-c", "scene": "-s"}


def _build_catalogue() -> tuple[Concept, ...]:
    out = []
    number = 1
    for category in CATEGORIES:
        for name in _VALUES[category]:
            out.append(
                Concept(
                    number=number,
                    name=name,
                    raw_name=name + _SUFFIX.get(category, ""),
                    category=category,
                    categories=(category,),
                )
            )
            number += 1
    return tuple(out)


#: Every concept, ordered by label number (1..).
CATALOGUE: tuple[Concept, ...] = _build_catalogue()
_BY_NAME: dict[str, Concept] = {c.name: c for c in CATALOGUE}
_BY_NUMBER: dict[int, Concept] = {c.number: c for c in CATALOGUE}
assert len(_BY_NAME) == len(CATALOGUE), "clean concept names must be unique"


def values(category: str) -> tuple[str, ...]:
    """The clean concept names of ``category`` in catalogue order."""
    if category not in _VALUES:
        raise UsageError(f"Expected a category in {CATEGORIES}, got {category!r}.")
    return _VALUES[category]


def concept(name: str) -> Concept:
    """The catalogue entry of a clean name (``"red"``) or Broden raw name (``"red-c"``)."""
    c = _BY_NAME.get(name) or _BY_NAME.get(re.sub(r"-[cs]$", "", name))
    if c is None:
        from bench.errors import UnknownNameError

        raise UnknownNameError("synthetic concept", name, _BY_NAME)
    return c


def number(name: str) -> int:
    """Label number of a clean concept name."""
    return concept(name).number


def by_number(num: int) -> Concept:
    if num not in _BY_NUMBER:
        raise UsageError(f"Expected a synthetic label number in 1..{len(CATALOGUE)}, got {num}.")
    return _BY_NUMBER[num]


# --- formulas ---------------------------------------------------------------------------------
# The world's formulas are JSON trees (bench.formula's form, n-ary as target cards store them)
# whose leaves are clean catalogue names; bench.formula parses, renders and evaluates them.

FormulaTree = list  # JSON tree, see the module docstring


def parse_formula(text: str) -> FormulaTree:
    """``"red AND (circle OR square)"`` -> n-ary formula tree (``bench.formula``'s syntax).

    Leaves must be catalogue names (Broden raw names such as ``red-c`` are read as clean ones).
    """
    from bench.formula import parse, rename, to_json

    return to_json(rename(parse(text), lambda name: concept(name).name), nary=True)


def format_formula(tree: Sequence[Any]) -> str:
    """Formula tree -> text, parenthesised only where needed (``"(grass OR sand) AND red"``)."""
    from bench.formula import from_json

    return from_json(tree).render()


def formula_leaves(tree: Sequence[Any]) -> list[str]:
    """Clean names of the leaves, in order, without repeats."""
    from bench.formula import json_leaves

    return list(dict.fromkeys(json_leaves(tree)))


def _label_of(name: str) -> tuple[str, int]:
    c = concept(name)
    return c.category, c.number


def formula_mask(tree: Sequence[Any], labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """Where a formula holds.

    ``labels``: category -> int label numbers, all of one shape (``[H, W]``, ``[N, H, W]``...).
    Image-level categories may be given broadcastable (``[N, 1, 1]``). Returns bool, that shape.
    """
    from bench.formula import evaluate_labels, from_json

    return evaluate_labels(from_json(tree), labels, _label_of)
