"""Logical formulas over concept names, the labels of compositional explanations.

Compositional explanations (Mu & Andreas, 2020) describe a neuron with a formula such as
``(water OR river) AND NOT blue``. This module holds the formula tree and everything done to it:

* four immutable node classes, :class:`Leaf`, :class:`Not`, :class:`And` and :class:`Or`, all
  subclasses of :class:`Formula`, hashable and equal by structure (``And(a, b) != And(b, a)``);
  ``f | g``, ``f & g`` and ``~f`` build them;
* :meth:`Formula.render` / ``str(f)`` and :func:`parse`, text with minimal parentheses that
  round-trips exactly: ``parse(f.render()) == f``;
* :func:`to_json` / :func:`from_json`, the JSON tree form ``["leaf", name]``, ``["not", F]``,
  ``["and", F, G]``, ``["or", F, G]`` used by target cards (``from_json`` also folds the n-ary
  ``["and", F, G, H]`` of :mod:`bench.synth.concepts`);
* :func:`evaluate` over boolean masks and :func:`equivalent`, logical equivalence by truth table.

Text syntax: NOT binds tighter than AND, AND tighter than OR, and both binary operators associate
to the left, so ``a AND b AND c`` is ``And(And(a, b), c)`` and ``And(a, And(b, c))`` renders as
``a AND (b AND c)``. Keywords are case-insensitive when parsed and upper-case when rendered. A
name is written bare when it matches ``[A-Za-z0-9_][A-Za-z0-9_\\-'.]*`` and is not a keyword;
otherwise it is double-quoted with ``"`` and ``\\`` escaped by a backslash
(``"traffic light" OR "and"``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.errors import UnknownNameError, UsageError

__all__ = [
    "And",
    "Formula",
    "Leaf",
    "Not",
    "Or",
    "equivalent",
    "evaluate",
    "from_json",
    "parse",
    "to_json",
]

KEYWORDS: frozenset[str] = frozenset({"AND", "OR", "NOT"})
"""Operator words; a leaf with one of these names (any case) is rendered quoted."""

MAX_EQUIVALENCE_NAMES = 20
"""Most distinct leaf names :func:`equivalent` accepts (its truth table has 2**n rows)."""

_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-'.]*")
_NAME_START = re.compile(r"[A-Za-z0-9_]")


# --- the tree ---------------------------------------------------------------------------------


class Formula(ABC):
    """A logical formula over concept names: a :class:`Leaf`, :class:`Not`, :class:`And` or
    :class:`Or`.

    Formulas are immutable and compare and hash by structure. ``len(f)`` is :attr:`length`.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def length(self) -> int:
        """Number of leaves plus one per NOT (``A AND NOT B`` has length 3), as in CompExp."""

    @abstractmethod
    def _collect_leaves(self, out: list[str]) -> None:
        """Append this formula's leaf names, left to right, to ``out``."""

    def __len__(self) -> int:
        return self.length

    def leaves(self) -> tuple[str, ...]:
        """Leaf names from left to right, repeats included."""
        out: list[str] = []
        self._collect_leaves(out)
        return tuple(out)

    def render(self) -> str:
        """Infix text with minimal parentheses and upper-case operators; see :func:`parse`."""
        return _render(self)

    def __str__(self) -> str:
        return _render(self)

    def __and__(self, other: object) -> And:
        if not isinstance(other, Formula):
            return NotImplemented
        return And(self, other)

    def __or__(self, other: object) -> Or:
        if not isinstance(other, Formula):
            return NotImplemented
        return Or(self, other)

    def __invert__(self) -> Not:
        return Not(self)


def _check_operand(node: str, field: str, value: object) -> None:
    if not isinstance(value, Formula):
        raise TypeError(f"Expected a Formula as {node}.{field}, got {type(value).__name__}.")


@dataclass(frozen=True, slots=True)
class Leaf(Formula):
    """A concept name. Must be a non-empty string."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Expected a str as Leaf.name, got {type(self.name).__name__}.")
        if not self.name:
            raise ValueError("Expected a non-empty concept name for Leaf, got ''.")

    @property
    def length(self) -> int:
        return 1

    def _collect_leaves(self, out: list[str]) -> None:
        out.append(self.name)


@dataclass(frozen=True, slots=True)
class Not(Formula):
    """Negation of ``operand``."""

    operand: Formula

    def __post_init__(self) -> None:
        _check_operand("Not", "operand", self.operand)

    @property
    def length(self) -> int:
        return 1 + self.operand.length

    def _collect_leaves(self, out: list[str]) -> None:
        self.operand._collect_leaves(out)


@dataclass(frozen=True, slots=True)
class And(Formula):
    """Conjunction ``left AND right``."""

    left: Formula
    right: Formula

    def __post_init__(self) -> None:
        _check_operand("And", "left", self.left)
        _check_operand("And", "right", self.right)

    @property
    def length(self) -> int:
        return self.left.length + self.right.length

    def _collect_leaves(self, out: list[str]) -> None:
        self.left._collect_leaves(out)
        self.right._collect_leaves(out)


@dataclass(frozen=True, slots=True)
class Or(Formula):
    """Disjunction ``left OR right``."""

    left: Formula
    right: Formula

    def __post_init__(self) -> None:
        _check_operand("Or", "left", self.left)
        _check_operand("Or", "right", self.right)

    @property
    def length(self) -> int:
        return self.left.length + self.right.length

    def _collect_leaves(self, out: list[str]) -> None:
        self.left._collect_leaves(out)
        self.right._collect_leaves(out)


# --- text -------------------------------------------------------------------------------------


def _render_name(name: str) -> str:
    if _BARE_NAME.fullmatch(name) and name.upper() not in KEYWORDS:
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _render(f: Formula) -> str:
    """Text of ``f``: parentheses only where precedence or left-associativity needs them."""
    if isinstance(f, Leaf):
        return _render_name(f.name)
    if isinstance(f, Not):
        inner = _render(f.operand)
        return f"NOT ({inner})" if isinstance(f.operand, (And, Or)) else f"NOT {inner}"
    if isinstance(f, And):
        left = _render(f.left)
        right = _render(f.right)
        if isinstance(f.left, Or):
            left = f"({left})"
        if isinstance(f.right, (And, Or)):
            right = f"({right})"
        return f"{left} AND {right}"
    if isinstance(f, Or):
        left = _render(f.left)
        right = _render(f.right)
        if isinstance(f.right, Or):
            right = f"({right})"
        return f"{left} OR {right}"
    raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(f).__name__}.")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name", "AND", "OR", "NOT", "(", ")" or "end"
    value: str  # the name (unescaped) or the source text of the token
    pos: int  # index of its first character in the text


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the formula"
    if token.kind == "name":
        return f"concept name {token.value!r}"
    return repr(token.value)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch == '"':
            start = i
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise UsageError(
                        f"Expected a closing '\"' (for the name opened at position {start}) "
                        f"at position {n} of formula {text!r}, got the end of the formula."
                    )
                if text[i] == "\\":
                    if i + 1 >= n:
                        raise UsageError(
                            f"Expected an escaped character after '\\' at position {i + 1} of "
                            f"formula {text!r} (in the name opened at position {start}), "
                            "got the end of the formula."
                        )
                    chars.append(text[i + 1])
                    i += 2
                elif text[i] == '"':
                    i += 1
                    break
                else:
                    chars.append(text[i])
                    i += 1
            name = "".join(chars)
            if not name:
                raise UsageError(
                    f"Expected a non-empty concept name at position {start} of formula "
                    f'{text!r}, got "".'
                )
            tokens.append(_Token("name", name, start))
        elif _NAME_START.match(ch):
            m = _BARE_NAME.match(text, i)
            assert m is not None  # the first character matched
            word = m.group()
            kind = word.upper() if word.upper() in KEYWORDS else "name"
            tokens.append(_Token(kind, word, i))
            i = m.end()
        else:
            raise UsageError(
                f"Expected a concept name, AND, OR, NOT or a parenthesis at position {i} of "
                f'formula {text!r}, got {ch!r}. Quote names with other characters: "a b".'
            )
    tokens.append(_Token("end", "", n))
    return tokens


class _Parser:
    """Recursive descent over the grammar::

    or  := and ("OR" and)*
    and := not ("AND" not)*
    not := "NOT" not | atom
    atom := name | "(" or ")"
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def fail(self, expected: str, token: _Token) -> UsageError:
        return UsageError(
            f"Expected {expected} at position {token.pos} of formula {self.text!r}, "
            f"got {_describe(token)}."
        )

    def parse(self) -> Formula:
        if not self.text.strip():
            raise UsageError(
                f"Expected a formula such as 'a AND NOT b' at position 0, got empty text "
                f"{self.text!r}."
            )
        f = self.parse_or()
        token = self.peek()
        if token.kind != "end":
            if token.kind == ")":
                raise self.fail("AND, OR or the end of the formula (unbalanced ')')", token)
            raise self.fail("AND, OR or the end of the formula", token)
        return f

    def parse_or(self) -> Formula:
        f = self.parse_and()
        while self.peek().kind == "OR":
            self.advance()
            f = Or(f, self.parse_and())
        return f

    def parse_and(self) -> Formula:
        f = self.parse_not()
        while self.peek().kind == "AND":
            self.advance()
            f = And(f, self.parse_not())
        return f

    def parse_not(self) -> Formula:
        if self.peek().kind == "NOT":
            self.advance()
            return Not(self.parse_not())
        return self.parse_atom()

    def parse_atom(self) -> Formula:
        token = self.advance()
        if token.kind == "name":
            return Leaf(token.value)
        if token.kind == "(":
            f = self.parse_or()
            close = self.peek()
            if close.kind != ")":
                raise self.fail(f"AND, OR or ')' (to close the '(' at position {token.pos})", close)
            self.advance()
            return f
        raise self.fail("a concept name, NOT or '('", token)


def parse(text: str) -> Formula:
    """Parse formula text, the inverse of :meth:`Formula.render`.

    Keywords are case-insensitive (``and``/``or``/``not``); whitespace and redundant parentheses
    are ignored; names may be double-quoted. NOT binds tighter than AND, AND tighter than OR,
    and AND and OR associate to the left. ``parse(f.render()) == f`` for every formula.

    Raises :class:`~bench.errors.UsageError` saying what was expected, what was found and at
    which (0-based) character position.
    """
    if not isinstance(text, str):
        raise UsageError(f"Expected formula text (a str), got {type(text).__name__}.")
    try:
        return _Parser(text).parse()
    except RecursionError:
        raise UsageError(
            f"Expected a formula nested less deeply at position 0, got {len(text)} characters "
            "too deeply nested to parse."
        ) from None


# --- JSON trees -------------------------------------------------------------------------------


def to_json(f: Formula) -> list[Any]:
    """The JSON tree of ``f``: ``["leaf", name]``, ``["not", F]``, ``["and", F, G]``,
    ``["or", F, G]`` (always binary)."""
    if isinstance(f, Leaf):
        return ["leaf", f.name]
    if isinstance(f, Not):
        return ["not", to_json(f.operand)]
    if isinstance(f, And):
        return ["and", to_json(f.left), to_json(f.right)]
    if isinstance(f, Or):
        return ["or", to_json(f.left), to_json(f.right)]
    raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(f).__name__}.")


def _short_repr(obj: object, limit: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_json(node: object, where: str) -> Formula:
    shapes = "['leaf', name], ['not', F], ['and', F, G, ...] or ['or', F, G, ...]"
    if not isinstance(node, (list, tuple)) or not node or not isinstance(node[0], str):
        raise UsageError(f"Expected a formula node {shapes} at {where}, got {_short_repr(node)}.")
    op = node[0]
    if op == "leaf":
        if len(node) != 2 or not isinstance(node[1], str) or not node[1]:
            raise UsageError(
                f"Expected ['leaf', name] with a non-empty string name at {where}, "
                f"got {_short_repr(node)}."
            )
        return Leaf(node[1])
    if op == "not":
        if len(node) != 2:
            raise UsageError(
                f"Expected ['not', F] (one operand) at {where}, got {_short_repr(node)}."
            )
        return Not(_from_json(node[1], f"{where}[1]"))
    if op in ("and", "or"):
        if len(node) < 3:
            raise UsageError(
                f"Expected ['{op}', F, G, ...] (two or more operands) at {where}, "
                f"got {_short_repr(node)}."
            )
        cls = And if op == "and" else Or
        out = _from_json(node[1], f"{where}[1]")
        for k in range(2, len(node)):
            out = cls(out, _from_json(node[k], f"{where}[{k}]"))
        return out
    raise UsageError(
        f"Expected a formula operator 'leaf', 'not', 'and' or 'or' at {where}, "
        f"got {op!r} in {_short_repr(node)}."
    )


def from_json(obj: Sequence[Any]) -> Formula:
    """Formula from its JSON tree (see :func:`to_json`).

    Also accepts n-ary ``["and", F, G, H, ...]`` and ``["or", ...]``, folded left-deep
    (``And(And(F, G), H)``) as :func:`parse` reads ``F AND G AND H``. Tuples count as lists.
    Malformed trees raise :class:`~bench.errors.UsageError` naming the bad node and its path.
    """
    try:
        return _from_json(obj, "tree")
    except RecursionError:
        raise UsageError(
            "Expected a formula tree nested less deeply, got too deep a tree."
        ) from None


# --- semantics --------------------------------------------------------------------------------


def evaluate(f: Formula, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Where ``f`` holds, given a boolean mask per concept name.

    Masks should share one shape (anything numpy broadcasts works); non-boolean masks are read
    as ``mask != 0``. Returns a new boolean array. A missing concept raises
    :class:`~bench.errors.UsageError` naming it.
    """
    cache: dict[str, np.ndarray] = {}

    def leaf(name: str) -> np.ndarray:
        if name not in cache:
            try:
                mask = masks[name]
            except KeyError:
                raise UnknownNameError(
                    "concept", name, (str(k) for k in masks), where=f"in formula {str(f)!r}"
                ) from None
            cache[name] = np.asarray(mask).astype(bool, copy=False)
        return cache[name]

    def walk(g: Formula) -> np.ndarray:
        if isinstance(g, Leaf):
            return leaf(g.name)
        if isinstance(g, Not):
            return np.logical_not(walk(g.operand))
        if isinstance(g, And):
            return np.logical_and(walk(g.left), walk(g.right))
        if isinstance(g, Or):
            return np.logical_or(walk(g.left), walk(g.right))
        raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(g).__name__}.")

    try:
        out = walk(f)
    except ValueError as e:  # shapes that do not broadcast
        shapes = {name: np.shape(masks[name]) for name in cache}
        raise UsageError(
            f"Expected masks of one shape for formula {str(f)!r}, got shapes {shapes} ({e})."
        ) from None
    if isinstance(f, Leaf):  # never hand back (a view of) the caller's array
        out = out.copy()
    return out


def equivalent(f: Formula, g: Formula) -> bool:
    """Whether ``f`` and ``g`` agree on every assignment of truth values to their leaf names.

    Decided by truth table over the union of both formulas' names, so at most
    :data:`MAX_EQUIVALENCE_NAMES` distinct names (more raises :class:`~bench.errors.UsageError`).
    """
    names = sorted(set(f.leaves()) | set(g.leaves()))
    if len(names) > MAX_EQUIVALENCE_NAMES:
        raise UsageError(
            f"Expected at most {MAX_EQUIVALENCE_NAMES} distinct concept names to compare "
            f"formulas by truth table, got {len(names)}."
        )
    rows = np.arange(1 << len(names), dtype=np.int64)
    table = {name: ((rows >> k) & 1).astype(bool) for k, name in enumerate(names)}
    return bool(np.array_equal(evaluate(f, table), evaluate(g, table)))
