"""The concept catalogue of the synthetic world, and logical formulas over it.

Every concept has a stable label number (1.., 0 is "unlabelled" as in Broden), a clean name
("red"), the name as Broden spells it (colours end in ``-c``, scenes in ``-s``) and a category.
Clean names are unique across categories, so a formula leaf is just a clean name.

Formulas are JSON-able trees, the form target cards and CompExp use::

    ["leaf", "red"]
    ["not", F]
    ["and", F, G]        # also n-ary: ["and", F, G, H]
    ["or", F, G]

and render as ``"red AND circle"``, ``"(grass OR sand) AND NOT striped"``.
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

Formula = list  # JSON tree, see the module docstring

_TOKEN = re.compile(r"\(|\)|[A-Za-z][A-Za-z_\-]*")


def parse_formula(text: str) -> Formula:
    """``"red AND (circle OR square)"`` -> formula tree. NOT binds tighter than AND, AND than OR.

    Leaves must be catalogue names; operators are upper-case words.
    """
    tokens = _TOKEN.findall(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise UsageError(f"Expected more of the formula {text!r}, got its end.")
        pos += 1
        return tokens[pos - 1]

    def parse_or() -> Formula:
        parts = [parse_and()]
        while peek() == "OR":
            take()
            parts.append(parse_and())
        return parts[0] if len(parts) == 1 else ["or", *parts]

    def parse_and() -> Formula:
        parts = [parse_not()]
        while peek() == "AND":
            take()
            parts.append(parse_not())
        return parts[0] if len(parts) == 1 else ["and", *parts]

    def parse_not() -> Formula:
        if peek() == "NOT":
            take()
            return ["not", parse_not()]
        tok = take()
        if tok == "(":
            inner = parse_or()
            if take() != ")":
                raise UsageError(f"Expected ')' in formula {text!r}.")
            return inner
        if tok in ("AND", "OR", ")"):
            raise UsageError(f"Expected a concept name in formula {text!r}, got {tok!r}.")
        return ["leaf", concept(tok).name]

    tree = parse_or()
    if pos != len(tokens):
        raise UsageError(f"Expected the end of formula {text!r}, got {tokens[pos]!r}.")
    return tree


def format_formula(tree: Sequence[Any], *, _top: bool = True) -> str:
    """Formula tree -> text, parenthesised only where needed (``"(grass OR sand) AND red"``)."""
    op = tree[0]
    if op == "leaf":
        return str(tree[1])
    if op == "not":
        inner = format_formula(tree[1], _top=False)
        return f"NOT {inner}"
    if op in ("and", "or"):
        parts = []
        for sub in tree[1:]:
            s = format_formula(sub, _top=False)
            if sub[0] in ("and", "or") and sub[0] != op:
                s = f"({s})"
            parts.append(s)
        return f" {op.upper()} ".join(parts)
    raise UsageError(f"Expected a formula operator leaf/not/and/or, got {op!r}.")


def formula_leaves(tree: Sequence[Any]) -> list[str]:
    """Clean names of the leaves, in order, without repeats."""
    if tree[0] == "leaf":
        return [str(tree[1])]
    out: list[str] = []
    for sub in tree[1:]:
        for leaf in formula_leaves(sub):
            if leaf not in out:
                out.append(leaf)
    return out


def formula_mask(tree: Sequence[Any], labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """Where a formula holds.

    ``labels``: category -> int label numbers, all of one shape (``[H, W]``, ``[N, H, W]``...).
    Image-level categories may be given broadcastable (``[N, 1, 1]``). Returns bool, that shape.
    """
    import numpy as np

    op = tree[0]
    if op == "leaf":
        c = concept(str(tree[1]))
        if c.category not in labels:
            raise UsageError(
                f"Formula leaf {c.name!r} needs category {c.category!r}; "
                f"got labels for {sorted(labels)}."
            )
        return np.asarray(labels[c.category]) == c.number
    if op == "not":
        return ~formula_mask(tree[1], labels)
    if op in ("and", "or"):
        masks = [formula_mask(sub, labels) for sub in tree[1:]]
        out = masks[0]
        for m in masks[1:]:
            out = (out & m) if op == "and" else (out | m)
        return out
    raise UsageError(f"Expected a formula operator leaf/not/and/or, got {op!r}.")
