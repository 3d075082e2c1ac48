"""Logical formulas over concept names: one tree, two text syntaxes, JSON, evaluation.

Labels such as ``(water OR river) AND NOT blue`` (CompExp, Mu & Andreas 2020), the concepts
planted in synthetic targets (``red AND circle``) and the formulas other tools write
(``((water OR river) AND (NOT blue-c))``) are all one tree here. Nothing in this module knows a
method, a probe or a catalogue: leaves are plain concept names, and callers map them.

* four immutable node classes, :class:`Leaf`, :class:`Not`, :class:`And` and :class:`Or`, all
  subclasses of :class:`Formula`, hashable and equal by structure (``And(a, b) != And(b, a)``);
  ``f | g``, ``f & g`` and ``~f`` build them; :func:`rename` maps their leaf names;
* the harness's syntax: :meth:`Formula.render` / ``str(f)`` and :func:`parse`, text with minimal
  parentheses that round-trips exactly: ``parse(f.render()) == f``;
* compexp's syntax (the original tool's ``tally_<layer>.csv``): :func:`render_compexp` and
  :func:`parse_compexp`, fully parenthesised, names unquoted and possibly several words;
* :func:`to_json` / :func:`from_json`, the JSON tree form ``["leaf", name]``, ``["not", F]``,
  ``["and", F, G]``, ``["or", F, G]`` of stored descriptions and target cards (``from_json``
  also folds the n-ary ``["and", F, G, H]``, which ``to_json(f, nary=True)`` writes;
  :func:`json_leaves` lists a tree's leaves without building it);
* :func:`evaluate` over boolean masks (or a function giving a leaf's mask),
  :func:`evaluate_labels` over integer label arrays, and :func:`equivalent`, logical
  equivalence by truth table.

Harness syntax: NOT binds tighter than AND, AND tighter than OR, and both binary operators
associate to the left, so ``a AND b AND c`` is ``And(And(a, b), c)`` and ``And(a, And(b, c))``
renders as ``a AND (b AND c)``. Keywords are case-insensitive when parsed and upper-case when
rendered. A name is written bare when it matches ``[A-Za-z0-9_][A-Za-z0-9_\\-'.]*`` and is not a
keyword; otherwise it is double-quoted with ``"`` and ``\\`` escaped by a backslash
(``"traffic light" OR "and"``).

Compexp syntax: the same precedence and associativity; keywords are upper-case only; a name is
the run of words between operators and parentheses (``pool table``), its words joined by one
space; :func:`render_compexp` parenthesises every operator (``((a OR b) AND (NOT c))``).

Depth: every tree is at most :data:`MAX_DEPTH` levels deep (the constructors refuse deeper
ones), so nothing that walks a tree can exhaust Python's stack; the parsers are iterative and
turn deeper input (thousands of chained NOTs) into a :class:`~bench.errors.FormulaError`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import FormulaError, UnknownNameError, UsageError

__all__ = [
    "MAX_DEPTH",
    "And",
    "Formula",
    "Leaf",
    "Not",
    "Or",
    "equivalent",
    "evaluate",
    "evaluate_labels",
    "from_json",
    "json_leaves",
    "parse",
    "parse_compexp",
    "rename",
    "render_compexp",
    "to_json",
]

KEYWORDS: frozenset[str] = frozenset({"AND", "OR", "NOT"})
"""Operator words; a leaf with one of these names (any case) is rendered quoted."""

MAX_DEPTH = 256
"""Most levels a formula tree may have (a leaf is 1, ``NOT a`` 2). Far above any label (CompExp's
are a few levels deep), far below what would exhaust Python's stack when walking a tree."""

MAX_EQUIVALENCE_NAMES = 20
"""Most distinct leaf names :func:`equivalent` accepts (its truth table has 2**n rows)."""

_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-'.]*")
_NAME_START = re.compile(r"[A-Za-z0-9_]")


def _short(obj: object, limit: int = 120) -> str:
    """``repr(obj)``, cut to ``limit`` characters (formulas in messages can be huge)."""
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the tree ---------------------------------------------------------------------------------


class Formula(ABC):
    """A logical formula over concept names: a :class:`Leaf`, :class:`Not`, :class:`And` or
    :class:`Or`.

    Formulas are immutable and compare and hash by structure. ``len(f)`` is :attr:`length`;
    :attr:`depth` is at most :data:`MAX_DEPTH`.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def length(self) -> int:
        """Number of leaves plus one per NOT (``A AND NOT B`` has length 3), as in CompExp."""

    @property
    @abstractmethod
    def depth(self) -> int:
        """Levels of the tree: 1 for a leaf, 1 + the deepest operand's for an operator."""

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
        """Harness-syntax text with minimal parentheses and upper-case operators; see
        :func:`parse`."""
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


def _check_operand(node: str, field_name: str, value: object) -> None:
    if not isinstance(value, Formula):
        raise TypeError(f"Expected a Formula as {node}.{field_name}, got {type(value).__name__}.")


def _set_depth(node: Formula, *operands: Formula) -> None:
    depth = 1 + max(f.depth for f in operands)
    if depth > MAX_DEPTH:
        raise FormulaError(
            f"Expected a formula at most {MAX_DEPTH} levels deep, got one {depth} levels deep "
            f"(a {type(node).__name__} over {_short(operands[0], 60)}...). Simplify the formula."
        )
    object.__setattr__(node, "_depth", depth)


def _depth_field() -> Any:
    """The depth slot of an operator node: set by ``__post_init__``, not part of equality."""
    return field(init=False, repr=False, compare=False, hash=False, default=1)


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

    @property
    def depth(self) -> int:
        return 1

    def _collect_leaves(self, out: list[str]) -> None:
        out.append(self.name)


@dataclass(frozen=True, slots=True)
class Not(Formula):
    """Negation of ``operand``."""

    operand: Formula
    _depth: int = _depth_field()

    def __post_init__(self) -> None:
        _check_operand("Not", "operand", self.operand)
        _set_depth(self, self.operand)

    @property
    def length(self) -> int:
        return 1 + self.operand.length

    @property
    def depth(self) -> int:
        return self._depth

    def _collect_leaves(self, out: list[str]) -> None:
        self.operand._collect_leaves(out)


@dataclass(frozen=True, slots=True)
class And(Formula):
    """Conjunction ``left AND right``."""

    left: Formula
    right: Formula
    _depth: int = _depth_field()

    def __post_init__(self) -> None:
        _check_operand("And", "left", self.left)
        _check_operand("And", "right", self.right)
        _set_depth(self, self.left, self.right)

    @property
    def length(self) -> int:
        return self.left.length + self.right.length

    @property
    def depth(self) -> int:
        return self._depth

    def _collect_leaves(self, out: list[str]) -> None:
        self.left._collect_leaves(out)
        self.right._collect_leaves(out)


@dataclass(frozen=True, slots=True)
class Or(Formula):
    """Disjunction ``left OR right``."""

    left: Formula
    right: Formula
    _depth: int = _depth_field()

    def __post_init__(self) -> None:
        _check_operand("Or", "left", self.left)
        _check_operand("Or", "right", self.right)
        _set_depth(self, self.left, self.right)

    @property
    def length(self) -> int:
        return self.left.length + self.right.length

    @property
    def depth(self) -> int:
        return self._depth

    def _collect_leaves(self, out: list[str]) -> None:
        self.left._collect_leaves(out)
        self.right._collect_leaves(out)


def rename(f: Formula, names: Mapping[str, str] | Callable[[str], str]) -> Formula:
    """``f`` with every leaf name ``n`` replaced by ``names[n]`` (or ``names(n)``).

    A name missing from a mapping raises :class:`~bench.errors.UnknownNameError`; a function's
    own errors propagate.
    """

    def lookup(name: str) -> str:
        if not isinstance(names, Mapping):
            return names(name)
        try:
            return names[name]
        except KeyError:
            raise UnknownNameError(
                "concept", name, (str(k) for k in names), where=f"in formula {_short(str(f))}"
            ) from None

    def walk(g: Formula) -> Formula:
        if isinstance(g, Leaf):
            return Leaf(lookup(g.name))
        if isinstance(g, Not):
            return Not(walk(g.operand))
        if isinstance(g, (And, Or)):
            return type(g)(walk(g.left), walk(g.right))
        raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(g).__name__}.")

    return walk(f)


# --- text: rendering --------------------------------------------------------------------------


def _render_name(name: str) -> str:
    if _BARE_NAME.fullmatch(name) and name.upper() not in KEYWORDS:
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _render(f: Formula) -> str:
    """Harness text of ``f``: parentheses only where precedence or left-associativity needs
    them."""
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


def _compexp_name(name: str) -> str:
    words = name.split()
    if " ".join(words) != name or "(" in name or ")" in name or KEYWORDS & set(words):
        raise FormulaError(
            "Expected a concept name compexp's syntax can write (words separated by single "
            f"spaces, no parentheses, no word AND, OR or NOT), got {_short(name)}. "
            "Use render(), the harness's syntax, which quotes such names."
        )
    return name


def render_compexp(f: Formula) -> str:
    """Text of ``f`` in compexp's syntax: every operator parenthesised, names bare
    (``((water OR river) AND (NOT blue-c))``); :func:`parse_compexp` reads it back.

    Raises :class:`~bench.errors.FormulaError` for a name that syntax cannot write (one with a
    parenthesis, a keyword word, or other than single spaces between words).
    """
    if isinstance(f, Leaf):
        return _compexp_name(f.name)
    if isinstance(f, Not):
        return f"(NOT {render_compexp(f.operand)})"
    if isinstance(f, (And, Or)):
        op = "AND" if isinstance(f, And) else "OR"
        return f"({render_compexp(f.left)} {op} {render_compexp(f.right)})"
    raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(f).__name__}.")


# --- text: tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name", "AND", "OR", "NOT", "(", ")" or "end"
    value: str  # the name (unescaped) or the source text of the token
    pos: int  # index of its first character in the text


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the formula"
    if token.kind == "name":
        return f"concept name {_short(token.value)}"
    return repr(token.value)


def _tokenize(text: str) -> list[_Token]:
    """Tokens of harness-syntax text."""
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
                    raise FormulaError(
                        f"Expected a closing '\"' (for the name opened at position {start}) "
                        f"at position {n} of formula {_short(text)}, got the end of the formula."
                    )
                if text[i] == "\\":
                    if i + 1 >= n:
                        raise FormulaError(
                            f"Expected an escaped character after '\\' at position {i + 1} of "
                            f"formula {_short(text)} (in the name opened at position {start}), "
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
                raise FormulaError(
                    f"Expected a non-empty concept name at position {start} of formula "
                    f'{_short(text)}, got "".'
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
            raise FormulaError(
                f"Expected a concept name, AND, OR, NOT or a parenthesis at position {i} of "
                f'formula {_short(text)}, got {ch!r}. Quote names with other characters: "a b".'
            )
    tokens.append(_Token("end", "", n))
    return tokens


_COMPEXP_WORD = re.compile(r"\(|\)|[^\s()]+")


def _tokenize_compexp(text: str, clean: Callable[[str], str] | None) -> list[_Token]:
    """Tokens of compexp-syntax text: a run of words that are not AND, OR, NOT or a parenthesis
    is one name, its words joined by one space, then passed through ``clean``."""
    tokens: list[_Token] = []
    words: list[str] = []
    start = 0

    def flush() -> None:
        if not words:
            return
        raw = " ".join(words)
        name = clean(raw) if clean is not None else raw
        if not name:
            raise FormulaError(
                f"Expected a non-empty concept name at position {start} of formula "
                f"{_short(text)}, got {raw!r}, which is empty once cleaned."
            )
        tokens.append(_Token("name", name, start))
        words.clear()

    for m in _COMPEXP_WORD.finditer(text):
        word = m.group()
        if word in ("(", ")") or word in KEYWORDS:
            flush()
            tokens.append(_Token(word, word, m.start()))
        else:
            if not words:
                start = m.start()
            words.append(word)
    flush()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --- text: parsing ----------------------------------------------------------------------------

_PRECEDENCE = {"OR": 1, "AND": 2, "NOT": 3}


def _parse_tokens(text: str, tokens: list[_Token]) -> Formula:
    """Operator-precedence parse, iterative (no recursion, whatever the nesting), of::

    or   := and ("OR" and)*
    and  := not ("AND" not)*
    not  := "NOT" not | atom
    atom := name | "(" or ")"
    """

    def fail(expected: str, token: _Token) -> FormulaError:
        return FormulaError(
            f"Expected {expected} at position {token.pos} of formula {_short(text)}, "
            f"got {_describe(token)}."
        )

    operands: list[Formula] = []
    ops: list[_Token] = []  # "(", "NOT", "AND" and "OR" waiting for their operands

    def reduce() -> None:
        op = ops.pop()
        try:
            if op.kind == "NOT":
                operands.append(Not(operands.pop()))
            else:
                right = operands.pop()
                left = operands.pop()
                operands.append(And(left, right) if op.kind == "AND" else Or(left, right))
        except FormulaError:
            raise FormulaError(
                f"Expected a formula at most {MAX_DEPTH} levels deep, got deeper nesting at "
                f"the {op.value!r} at position {op.pos} of formula {_short(text)}. "
                "Simplify the formula."
            ) from None

    def innermost_open() -> _Token | None:
        return next((t for t in reversed(ops) if t.kind == "("), None)

    expect_operand = True
    for token in tokens:
        kind = token.kind
        if expect_operand:
            if kind == "name":
                operands.append(Leaf(token.value))
                expect_operand = False
            elif kind in ("NOT", "("):
                ops.append(token)
            else:
                raise fail("a concept name, NOT or '('", token)
        elif kind in ("AND", "OR"):
            while ops and ops[-1].kind != "(" and _PRECEDENCE[ops[-1].kind] >= _PRECEDENCE[kind]:
                reduce()
            ops.append(token)
            expect_operand = True
        elif kind == ")":
            while ops and ops[-1].kind != "(":
                reduce()
            if not ops:
                raise fail("AND, OR or the end of the formula (unbalanced ')')", token)
            ops.pop()
        else:
            opened = innermost_open()
            if opened is not None:
                raise fail(f"AND, OR or ')' (to close the '(' at position {opened.pos})", token)
            if kind != "end":
                raise fail("AND, OR or the end of the formula", token)
            while ops:
                reduce()
    assert len(operands) == 1 and not ops
    return operands[0]


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise FormulaError(f"Expected formula text (a str), got {type(text).__name__}.")
    if not text.strip():
        raise FormulaError(
            f"Expected a formula such as 'a AND NOT b' at position 0, got empty text {text!r}."
        )
    return text


def parse(text: str) -> Formula:
    """Parse harness-syntax text, the inverse of :meth:`Formula.render`.

    Keywords are case-insensitive (``and``/``or``/``not``); whitespace and redundant parentheses
    are ignored; names may be double-quoted. NOT binds tighter than AND, AND tighter than OR,
    and AND and OR associate to the left. ``parse(f.render()) == f`` for every formula.

    Raises :class:`~bench.errors.FormulaError` saying what was expected, what was found and at
    which (0-based) character position; also for a tree deeper than :data:`MAX_DEPTH`.
    """
    text = _check_text(text)
    return _parse_tokens(text, _tokenize(text))


def parse_compexp(text: str, *, clean: Callable[[str], str] | None = None) -> Formula:
    """Parse a formula as compexp writes it: ``((water OR river) AND (NOT blue-c))``.

    Keywords are upper-case only; a name is the run of words between operators and parentheses
    (``pool  table`` is the leaf ``pool table``), mapped through ``clean`` when given (the label
    importers drop Broden's category suffixes this way). NOT binds tighter than AND, AND tighter
    than OR, both left-associative, as compexp's own parser reads them. The inverse of
    :func:`render_compexp` (without ``clean``). Raises :class:`~bench.errors.FormulaError`.
    """
    text = _check_text(text)
    return _parse_tokens(text, _tokenize_compexp(text, clean))


# --- JSON trees -------------------------------------------------------------------------------


def to_json(f: Formula, *, nary: bool = False) -> list[Any]:
    """The JSON tree of ``f``: ``["leaf", name]``, ``["not", F]``, ``["and", F, G]``,
    ``["or", F, G]``.

    ``nary=True`` writes a left-deep chain of one operator as one node (``And(And(a, b), c)``
    -> ``["and", a, b, c]``), the form of the synthetic world's target cards; :func:`from_json`
    folds it back to the same tree.
    """
    if isinstance(f, Leaf):
        return ["leaf", f.name]
    if isinstance(f, Not):
        return ["not", to_json(f.operand, nary=nary)]
    if isinstance(f, (And, Or)):
        op = "and" if isinstance(f, And) else "or"
        parts: list[Formula] = [f.right]
        g = f.left
        while nary and type(g) is type(f):
            assert isinstance(g, (And, Or))
            parts.append(g.right)
            g = g.left
        parts.append(g)
        return [op, *(to_json(p, nary=nary) for p in reversed(parts))]
    raise TypeError(f"Expected a Leaf, Not, And or Or, got {type(f).__name__}.")


def _from_json(node: object, where: str, depth: int) -> Formula:
    if depth > MAX_DEPTH:
        raise FormulaError(
            f"Expected a formula tree at most {MAX_DEPTH} levels deep, got deeper nesting at "
            f"{_short(where, 60)}."
        )
    shapes = "['leaf', name], ['not', F], ['and', F, G, ...] or ['or', F, G, ...]"
    if not isinstance(node, (list, tuple)) or not node or not isinstance(node[0], str):
        raise FormulaError(f"Expected a formula node {shapes} at {where}, got {_short(node)}.")
    op = node[0]
    if op == "leaf":
        if len(node) != 2 or not isinstance(node[1], str) or not node[1]:
            raise FormulaError(
                f"Expected ['leaf', name] with a non-empty string name at {where}, "
                f"got {_short(node)}."
            )
        return Leaf(node[1])
    if op == "not":
        if len(node) != 2:
            raise FormulaError(f"Expected ['not', F] (one operand) at {where}, got {_short(node)}.")
        return Not(_from_json(node[1], f"{where}[1]", depth + 1))
    if op in ("and", "or"):
        if len(node) < 3:
            raise FormulaError(
                f"Expected ['{op}', F, G, ...] (two or more operands) at {where}, "
                f"got {_short(node)}."
            )
        cls = And if op == "and" else Or
        out = _from_json(node[1], f"{where}[1]", depth + 1)
        for k in range(2, len(node)):
            out = cls(out, _from_json(node[k], f"{where}[{k}]", depth + 1))
        return out
    raise FormulaError(
        f"Expected a formula operator 'leaf', 'not', 'and' or 'or' at {where}, "
        f"got {op!r} in {_short(node)}."
    )


def from_json(obj: Sequence[Any]) -> Formula:
    """Formula from its JSON tree (see :func:`to_json`).

    Also accepts n-ary ``["and", F, G, H, ...]`` and ``["or", ...]``, folded left-deep
    (``And(And(F, G), H)``) as :func:`parse` reads ``F AND G AND H``. Tuples count as lists.
    Malformed or too deep trees raise :class:`~bench.errors.FormulaError` naming the bad node
    and its path.
    """
    return _from_json(obj, "tree", 1)


def json_leaves(obj: Sequence[Any]) -> tuple[str, ...]:
    """Leaf names of a JSON tree, left to right, repeats included, without building the tree:
    any depth and any number of n-ary operands. Malformed nodes raise
    :class:`~bench.errors.FormulaError`."""
    out: list[str] = []
    stack: list[object] = [obj]
    while stack:
        node = stack.pop()
        if not isinstance(node, (list, tuple)) or not node or not isinstance(node[0], str):
            raise FormulaError(
                f"Expected a formula node such as ['leaf', name], got {_short(node)}."
            )
        if node[0] == "leaf":
            if len(node) != 2 or not isinstance(node[1], str) or not node[1]:
                raise FormulaError(
                    f"Expected ['leaf', name] with a non-empty string name, got {_short(node)}."
                )
            out.append(node[1])
        elif node[0] in ("not", "and", "or"):
            stack.extend(reversed(node[1:]))
        else:
            raise FormulaError(
                f"Expected a formula operator 'leaf', 'not', 'and' or 'or', got {node[0]!r} in "
                f"{_short(node)}."
            )
    return tuple(out)


# --- semantics --------------------------------------------------------------------------------


def evaluate(
    f: Formula, masks: Mapping[str, np.ndarray] | Callable[[str], np.ndarray]
) -> np.ndarray:
    """Where ``f`` holds, given a boolean mask per concept name (a mapping, or a function of
    the name called once per distinct leaf).

    Masks should share one shape (anything numpy broadcasts works); non-boolean masks are read
    as ``mask != 0``. Returns a new boolean array. A name missing from a mapping raises
    :class:`~bench.errors.UnknownNameError`; masks that do not broadcast a
    :class:`~bench.errors.UsageError`.
    """
    cache: dict[str, np.ndarray] = {}

    def leaf(name: str) -> np.ndarray:
        if name not in cache:
            if isinstance(masks, Mapping):
                try:
                    mask = masks[name]
                except KeyError:
                    raise UnknownNameError(
                        "concept", name, (str(k) for k in masks), where=f"in formula {str(f)!r}"
                    ) from None
            else:
                mask = masks(name)
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
        if isinstance(e, UsageError):
            raise
        shapes = {name: np.shape(mask) for name, mask in cache.items()}
        raise UsageError(
            f"Expected masks of one shape for formula {str(f)!r}, got shapes {shapes} ({e})."
        ) from None
    if isinstance(f, Leaf):  # never hand back (a view of) the caller's array
        out = out.copy()
    return out


def evaluate_labels(
    f: Formula,
    labels: Mapping[str, np.ndarray],
    label_of: Callable[[str], tuple[str, int]],
) -> np.ndarray:
    """Where ``f`` holds over integer label arrays.

    ``label_of(name)`` gives the leaf's ``(key, number)``: it holds where ``labels[key] ==
    number``. The arrays should broadcast together (an image-level ``[N, 1, 1]`` with pixel-level
    ``[N, H, W]``). A key missing from ``labels`` raises :class:`~bench.errors.UsageError`.
    """

    def mask(name: str) -> np.ndarray:
        key, number = label_of(name)
        if key not in labels:
            raise UsageError(
                f"Formula leaf {name!r} needs labels {key!r}; got labels for {sorted(labels)}."
            )
        return np.asarray(labels[key]) == number

    return evaluate(f, mask)


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
