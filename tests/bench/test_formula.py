"""bench.formula beyond what CompExp's tests cover: compexp's syntax, n-ary JSON, leaf names,
evaluation over label arrays, and deep input (issue 19)."""

from __future__ import annotations

import inspect
import json
import pickle
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from bench.errors import FormulaError, UnknownNameError, UsageError
from bench.formula import (
    MAX_DEPTH,
    And,
    Formula,
    Leaf,
    Not,
    Or,
    equivalent,
    evaluate,
    evaluate_labels,
    from_json,
    json_leaves,
    parse,
    parse_compexp,
    rename,
    render_compexp,
    to_json,
)

a, b, c, d = Leaf("a"), Leaf("b"), Leaf("c"), Leaf("d")

#: Names compexp's syntax can write: words with suffixes, several words, lower-case keywords.
COMPEXP_NAMES = (
    "a",
    "water",
    "blue-c",
    "pool table",
    "wine_cellar-s",
    "rock and roll",
    "3d",
    "x.y",
)


def random_formula(rng: random.Random, depth: int, names: tuple[str, ...]) -> Formula:
    if depth == 0 or rng.random() < 0.25:
        return Leaf(rng.choice(names))
    kind = rng.choice(("not", "and", "or"))
    if kind == "not":
        return Not(random_formula(rng, depth - 1, names))
    cls = And if kind == "and" else Or
    return cls(random_formula(rng, depth - 1, names), random_formula(rng, depth - 1, names))


def random_formulas(names: tuple[str, ...], n: int = 400) -> list[Formula]:
    rng = random.Random(1)
    return [random_formula(rng, rng.randint(0, 5), names) for _ in range(n)]


@contextmanager
def shallow_stack(frames: int) -> Iterator[None]:
    """Allow only ``frames`` more Python frames than the caller has: a recursive walk of a deep
    input fails inside, an iterative one does not."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# --- compexp's syntax -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "text"),
    [
        (Leaf("water"), "water"),
        (Not(Leaf("blue-c")), "(NOT blue-c)"),
        (
            And(Or(Leaf("water"), Leaf("river")), Not(Leaf("blue-c"))),
            "((water OR river) AND (NOT blue-c))",
        ),
        (Or(Leaf("pool table"), Leaf("rock and roll")), "(pool table OR rock and roll)"),
        (And(And(a, b), c), "((a AND b) AND c)"),
        (And(a, And(b, c)), "(a AND (b AND c))"),
    ],
)
def test_render_compexp_parenthesises_every_operator(formula: Formula, text: str) -> None:
    assert render_compexp(formula) == text
    assert parse_compexp(text) == formula


def test_round_trip_both_syntaxes_random_formulas() -> None:
    formulas = random_formulas(COMPEXP_NAMES)
    assert any(f.length >= 10 for f in formulas)
    for f in formulas:
        text = render_compexp(f)
        assert parse_compexp(text) == f, text
        assert parse(f.render()) == f, f.render()
        # The two syntaxes write the same tree.
        assert parse_compexp(text) == parse(f.render())


def test_parse_compexp_reads_what_compexp_writes() -> None:
    # Keywords upper-case only; a run of words is one name, its spacing normalised.
    assert parse_compexp("pool  table OR NOT sky-s") == Or(Leaf("pool table"), Not(Leaf("sky-s")))
    assert parse_compexp("a OR b AND NOT c") == Or(a, And(b, Not(c)))
    assert parse_compexp("NOT a AND b") == And(Not(a), b)
    assert parse_compexp("a and b") == Leaf("a and b")
    # Redundant parentheses, as compexp writes them, cost nothing.
    assert parse_compexp("((((a))))") == a
    strip = lambda name: name[:-2] if name.endswith(("-s", "-c")) else name  # noqa: E731
    assert parse_compexp("((wine_cellar-s OR river) AND (NOT blue-c))", clean=strip) == And(
        Or(Leaf("wine_cellar"), Leaf("river")), Not(Leaf("blue"))
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("(a OR b", "to close the '(' at position 0"),
        ("a OR", "got the end of the formula"),
        ("a b )", "unbalanced ')'"),
        ("AND a", "got 'AND'"),
    ],
)
def test_parse_compexp_errors(text: str, fragment: str) -> None:
    with pytest.raises(FormulaError) as info:
        parse_compexp(text)
    assert fragment in str(info.value)
    # One error class for every caller: a UsageError for the CLI, a ValueError as before.
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)


def test_parse_compexp_name_empty_once_cleaned() -> None:
    with pytest.raises(FormulaError, match="empty once cleaned"):
        parse_compexp("a OR -s", clean=lambda name: "" if name == "-s" else name)


@pytest.mark.parametrize("name", ["rock AND roll", "f(x)", "two  spaces", " lead", "NOT"])
def test_render_compexp_refuses_names_it_cannot_write(name: str) -> None:
    with pytest.raises(FormulaError, match="compexp's syntax can write"):
        render_compexp(Or(a, Leaf(name)))
    assert parse(Or(a, Leaf(name)).render()) == Or(a, Leaf(name))  # the harness's syntax can


# --- JSON and leaves --------------------------------------------------------------------------


def test_to_json_nary_flattens_left_chains_only() -> None:
    assert to_json(And(And(a, b), c), nary=True) == [
        "and",
        ["leaf", "a"],
        ["leaf", "b"],
        ["leaf", "c"],
    ]
    assert to_json(And(a, And(b, c)), nary=True) == [
        "and",
        ["leaf", "a"],
        ["and", ["leaf", "b"], ["leaf", "c"]],
    ]
    assert to_json(Or(And(a, b), c), nary=True) == [
        "or",
        ["and", ["leaf", "a"], ["leaf", "b"]],
        ["leaf", "c"],
    ]
    assert to_json(And(And(a, b), c)) == [
        "and",
        ["and", ["leaf", "a"], ["leaf", "b"]],
        ["leaf", "c"],
    ]
    for f in random_formulas(COMPEXP_NAMES):
        assert from_json(json.loads(json.dumps(to_json(f, nary=True)))) == f


def test_json_leaves_equals_the_tree_leaves() -> None:
    for f in random_formulas(COMPEXP_NAMES):
        assert json_leaves(to_json(f)) == f.leaves()
        assert json_leaves(to_json(f, nary=True)) == f.leaves()
    with pytest.raises(FormulaError, match="'xor'"):
        json_leaves(["and", ["leaf", "a"], ["xor", ["leaf", "b"]]])
    with pytest.raises(FormulaError, match="non-empty"):
        json_leaves(["not", ["leaf", ""]])


def test_rename() -> None:
    f = And(Or(Leaf("red-c"), Leaf("sky-s")), Not(Leaf("red-c")))
    expected = And(Or(Leaf("red"), Leaf("sky")), Not(Leaf("red")))
    assert rename(f, {"red-c": "red", "sky-s": "sky"}) == expected
    assert rename(f, lambda name: name[:-2]) == expected
    with pytest.raises(UnknownNameError, match="'sky-s'"):
        rename(f, {"red-c": "red"})


# --- evaluation -------------------------------------------------------------------------------


def test_evaluate_with_a_leaf_function_calls_it_once_per_name() -> None:
    masks = {"a": np.array([True, True, False, False]), "b": np.array([True, False, True, False])}
    calls: list[str] = []

    def mask(name: str) -> np.ndarray:
        calls.append(name)
        return masks[name]

    out = evaluate(parse("(a OR b) AND NOT (a AND b) OR a AND NOT a"), mask)
    np.testing.assert_array_equal(out, masks["a"] ^ masks["b"])
    assert sorted(calls) == ["a", "b"]


def test_evaluate_labels_by_hand() -> None:
    # Two images of 1x3 pixels: "color" per pixel, "scene" per image (broadcast).
    labels = {
        "color": np.array([[[1, 2, 1]], [[2, 2, 0]]]),
        "scene": np.array([[[7]], [[8]]]),
    }
    codes: dict[str, tuple[str, int]] = {
        "red": ("color", 1),
        "green": ("color", 2),
        "lake": ("scene", 7),
    }
    red = labels["color"] == 1
    green = labels["color"] == 2
    lake = np.broadcast_to(labels["scene"] == 7, red.shape)
    cases: dict[str, np.ndarray] = {
        "red": red,
        "red OR green": red | green,
        "green AND NOT lake": green & ~lake,
        "lake AND NOT red": lake & ~red,
        "NOT (red OR green) OR lake AND green": ~(red | green) | (lake & green),
    }
    for text, expected in cases.items():
        out = evaluate_labels(parse(text), labels, codes.__getitem__)
        assert out.dtype == np.bool_, text
        np.testing.assert_array_equal(np.broadcast_to(out, red.shape), expected, err_msg=text)
    np.testing.assert_array_equal(
        evaluate_labels(parse("green AND NOT lake"), labels, codes.__getitem__),
        [[[False, False, False]], [[True, True, False]]],
    )
    with pytest.raises(UsageError, match="needs labels 'scene'"):
        evaluate_labels(parse("red AND lake"), {"color": labels["color"]}, codes.__getitem__)


@pytest.mark.parametrize(
    ("harness", "compexp", "same"),
    [
        ("NOT c AND (b OR a)", "((a OR b) AND (NOT c))", True),
        ("a AND NOT (b OR c)", "((a AND (NOT b)) AND (NOT c))", True),
        ("a OR b AND c", "((a OR b) AND c)", False),
        ("NOT (a AND b)", "((NOT a) OR (NOT b))", True),
    ],
)
def test_equivalent_across_syntaxes(harness: str, compexp: str, same: bool) -> None:
    assert equivalent(parse(harness), parse_compexp(compexp)) is same


# --- deep input (issue 19) --------------------------------------------------------------------

Parser = Callable[[str], Formula]


@pytest.mark.parametrize("reader", [parse, parse_compexp])
def test_thousands_of_chained_nots_are_a_clean_error(reader: Parser) -> None:
    text = "NOT " * 5000 + "a"
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep") as info:
        reader(text)
    assert "Simplify the formula" in str(info.value)
    assert len(str(info.value)) < 500  # the text is cut in the message


@pytest.mark.parametrize("reader", [parse, parse_compexp])
def test_hundreds_of_nested_parentheses(reader: Parser) -> None:
    # Redundant parentheses parse, however many.
    assert reader("(" * 3000 + "a" + ")" * 3000) == a
    # Parentheses that nest operators past the limit are a clean error.
    deep = "a"
    for k in range(MAX_DEPTH + 50):
        deep = f"({deep} AND b{k})" if k % 2 else f"(b{k} OR {deep})"
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep"):
        reader(deep)
    # Unbalanced deep input is reported as such, not as a crash.
    with pytest.raises(FormulaError, match="to close the '\\('"):
        reader("(" * 3000 + "a")


def test_parsing_is_iterative() -> None:
    """A formula as deep as allowed parses with few stack frames to spare."""
    text = "NOT " * (MAX_DEPTH - 1) + "a"
    nested = "(" * 2000 + "a AND b" + ")" * 2000
    with shallow_stack(40):
        f = parse(text)
        g = parse_compexp(nested)
    assert f.depth == MAX_DEPTH and f.length == MAX_DEPTH
    assert g == And(a, b)


def test_trees_at_the_limit_work_everywhere_and_deeper_ones_cannot_be_built() -> None:
    f: Formula = a
    for k in range(MAX_DEPTH - 1):
        f = Not(f) if k % 3 == 0 else (And(f, b) if k % 3 == 1 else Or(c, f))
    assert f.depth == MAX_DEPTH
    assert parse(f.render()) == f
    assert parse_compexp(render_compexp(f)) == f
    assert from_json(to_json(f)) == f and from_json(to_json(f, nary=True)) == f
    assert hash(pickle.loads(pickle.dumps(f))) == hash(f)
    assert equivalent(f, parse(f.render()))
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep"):
        Not(f)
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep"):
        And(a, f)


def test_deep_json_is_a_clean_error() -> None:
    tree: list = ["leaf", "a"]
    for _ in range(5000):
        tree = ["not", tree]
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep"):
        from_json(tree)
    # n-ary operands fold left-deep: too many of them is the same error.
    with pytest.raises(FormulaError, match=f"at most {MAX_DEPTH} levels deep"):
        from_json(["and", *(["leaf", f"n{i}"] for i in range(MAX_DEPTH + 5))])
    # Listing leaves needs no tree, so any depth works.
    with shallow_stack(40):
        assert json_leaves(tree) == ("a",)
        assert len(json_leaves(["or", *(["leaf", f"n{i}"] for i in range(5000))])) == 5000
