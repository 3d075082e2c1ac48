"""The formula tree of compositional explanations: text, JSON, evaluation, equivalence."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import random
import re

import numpy as np
import pytest

from bench.errors import UsageError
from bench.formula import (
    And,
    Formula,
    Leaf,
    Not,
    Or,
    equivalent,
    evaluate,
    from_json,
    parse,
    to_json,
)
from bench.synth import concepts as C
from bench.synth.recipes import RECIPES

a, b, c, d = Leaf("a"), Leaf("b"), Leaf("c"), Leaf("d")
water, river, blue = Leaf("water"), Leaf("river"), Leaf("blue")

#: Names for random formulas: bare ones, and ones that must be quoted (space, keyword in any
#: case, quote, backslash, leading punctuation, non-ASCII, parentheses).
NAMES = (
    "a",
    "water",
    "3d",
    "_x",
    "o'clock",
    "x.y",
    "red-c",
    "traffic light",
    "and",
    "Not",
    "OR",
    'say "hi"',
    "back\\slash",
    "-lead",
    "café",
    "f(x)",
    " ",
    "ANDY",
    "notion",
)


def random_formula(rng: random.Random, depth: int, names: tuple[str, ...] = NAMES) -> Formula:
    """A random tree at most ``depth`` operators deep."""
    if depth == 0 or rng.random() < 0.25:
        return Leaf(rng.choice(names))
    kind = rng.choice(("not", "and", "or", "and", "or"))
    if kind == "not":
        return Not(random_formula(rng, depth - 1, names))
    cls = And if kind == "and" else Or
    return cls(random_formula(rng, depth - 1, names), random_formula(rng, depth - 1, names))


def random_formulas(n: int = 600, names: tuple[str, ...] = NAMES) -> list[Formula]:
    rng = random.Random(0)
    return [random_formula(rng, rng.randint(0, 4), names) for _ in range(n)]


# --- the tree ---------------------------------------------------------------------------------


def test_nodes_are_frozen_hashable_and_equal_by_structure() -> None:
    assert And(a, b) == And(Leaf("a"), Leaf("b"))
    assert hash(And(a, b)) == hash(And(Leaf("a"), Leaf("b")))
    assert And(a, b) != And(b, a)
    assert And(a, b) != Or(a, b)
    assert Not(a) != a
    assert len({And(a, b), And(Leaf("a"), Leaf("b")), Or(a, b)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "z"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        And(a, b).left = c  # type: ignore[misc]
    assert not hasattr(And(a, b), "__dict__")  # slotted all the way down


def test_copy_and_pickle_preserve_structure() -> None:
    f = And(Or(water, river), Not(blue))
    assert pickle.loads(pickle.dumps(f)) == f
    assert copy.deepcopy(f) == f


def test_operators_build_nodes() -> None:
    assert (a | b) == Or(a, b)
    assert (a & b) == And(a, b)
    assert ~a == Not(a)
    assert ((water | river) & ~blue) == And(Or(water, river), Not(blue))
    with pytest.raises(TypeError):
        _ = a & "b"  # type: ignore[operator]


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Leaf("")
    with pytest.raises(TypeError):
        Leaf(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        And(a, "b")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Not("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Formula()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("formula", "length"),
    [
        (a, 1),
        (Not(a), 2),
        (And(a, Not(b)), 3),
        (Not(Not(a)), 3),
        (Or(And(a, b), Not(Or(c, a))), 5),
        (And(Or(water, river), Not(blue)), 4),
    ],
)
def test_length(formula: Formula, length: int) -> None:
    assert len(formula) == length
    assert formula.length == length


def test_leaves_left_to_right_with_repeats() -> None:
    assert a.leaves() == ("a",)
    assert And(Or(water, river), Not(blue)).leaves() == ("water", "river", "blue")
    assert Or(And(b, a), Not(Or(c, b))).leaves() == ("b", "a", "c", "b")
    assert Or(a, a).leaves() == ("a", "a")


# --- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "text"),
    [
        (a, "a"),
        (And(And(a, b), c), "a AND b AND c"),
        (And(a, And(b, c)), "a AND (b AND c)"),
        (Or(Or(a, b), c), "a OR b OR c"),
        (Or(a, Or(b, c)), "a OR (b OR c)"),
        (Or(a, And(b, c)), "a OR b AND c"),
        (Or(And(a, b), c), "a AND b OR c"),
        (And(Or(a, b), c), "(a OR b) AND c"),
        (And(a, Or(b, c)), "a AND (b OR c)"),
        (And(Or(water, river), Not(blue)), "(water OR river) AND NOT blue"),
        (Not(Or(a, b)), "NOT (a OR b)"),
        (Not(And(a, b)), "NOT (a AND b)"),
        (Not(Not(a)), "NOT NOT a"),
        (Or(Not(a), Not(And(b, Not(c)))), "NOT a OR NOT (b AND NOT c)"),
        (And(Or(a, b), Or(c, d)), "(a OR b) AND (c OR d)"),
        (Or(And(a, b), And(c, d)), "a AND b OR c AND d"),
    ],
)
def test_render_minimal_parentheses(formula: Formula, text: str) -> None:
    assert formula.render() == text
    assert str(formula) == text
    assert parse(text) == formula


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("water", "water"),
        ("3d", "3d"),
        ("_x", "_x"),
        ("o'clock", "o'clock"),
        ("x.y", "x.y"),
        ("red-c", "red-c"),
        ("ANDY", "ANDY"),
        ("notion", "notion"),
        ("traffic light", '"traffic light"'),
        ("and", '"and"'),
        ("Not", '"Not"'),
        ("OR", '"OR"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("-lead", '"-lead"'),
        ("'quoted'", "\"'quoted'\""),
        ("café", '"café"'),
        ("f(x)", '"f(x)"'),
    ],
)
def test_render_names(name: str, text: str) -> None:
    assert Leaf(name).render() == text
    assert parse(text) == Leaf(name)


def test_keyword_names_render_quoted_inside_formulas() -> None:
    f = And(Leaf("traffic light"), Not(Leaf("and")))
    assert f.render() == '"traffic light" AND NOT "and"'
    assert parse(f.render()) == f


# --- parsing ----------------------------------------------------------------------------------


def test_round_trip_random_formulas() -> None:
    formulas = random_formulas()
    assert len({f.length for f in formulas}) > 5  # the generator covers a range of sizes
    assert any(f.length >= 10 for f in formulas)
    for f in formulas:
        text = f.render()
        assert parse(text) == f, text
        assert parse(text).render() == text


def _paren_pairs(text: str) -> list[tuple[int, int]]:
    """Indices of matching structural parentheses, skipping quoted names."""
    pairs, stack, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch == "(":
            stack.append(i)
        elif ch == ")":
            pairs.append((stack.pop(), i))
        i += 1
    assert not stack
    return pairs


def test_rendered_parentheses_are_all_needed() -> None:
    """Dropping any one pair of parentheses from a rendering changes what it parses to."""
    checked = 0
    for f in random_formulas(300):
        text = f.render()
        for open_, close in _paren_pairs(text):
            stripped = text[:open_] + " " + text[open_ + 1 : close] + " " + text[close + 1 :]
            assert parse(stripped) != f, (text, stripped)
            checked += 1
    assert checked > 100


def test_parse_case_insensitive_keywords_and_whitespace() -> None:
    expected = Or(And(water, Not(blue)), river)
    for text in (
        "water AND NOT blue OR river",
        "water and not blue or river",
        "water AnD nOt blue oR river",
        "  water\tAND\n NOT   blue OR\r\nriver  ",
        "water AND(NOT blue)OR(river)",
    ):
        assert parse(text) == expected, text


def test_parse_redundant_parentheses() -> None:
    assert parse("((a))") == a
    assert parse("(((a AND b)) OR (c))") == Or(And(a, b), c)
    assert parse("NOT ((NOT (a)))") == Not(Not(a))
    assert parse("(a AND b) AND c") == And(And(a, b), c)  # left-assoc: parens are redundant
    assert parse("(a OR b) OR c") == parse("a OR b OR c")


def test_parse_precedence_and_associativity() -> None:
    assert parse("a OR b AND c") == Or(a, And(b, c))
    assert parse("a AND b OR c AND d") == Or(And(a, b), And(c, d))
    assert parse("NOT a AND b") == And(Not(a), b)
    assert parse("NOT a OR b") == Or(Not(a), b)
    assert parse("a AND b AND c AND d") == And(And(And(a, b), c), d)
    assert parse("a OR b OR c") == Or(Or(a, b), c)
    assert parse("NOT NOT NOT a") == Not(Not(Not(a)))


def test_parse_quoted_names() -> None:
    assert parse('"traffic light" OR "and"') == Or(Leaf("traffic light"), Leaf("and"))
    assert parse('"water"') == water  # quoting a bare name is allowed
    assert parse('"a\\"b\\\\c"') == Leaf('a"b\\c')
    assert parse('"x"AND"y"') == And(Leaf("x"), Leaf("y"))
    # A keyword glued to a name is part of the name, not an operator.
    assert parse("ANDY AND notion") == And(Leaf("ANDY"), Leaf("notion"))


def _position(message: str) -> int:
    m = re.search(r"at position (\d+) of formula", message) or re.search(
        r"at position (\d+)", message
    )
    assert m, message
    return int(m.group(1))


@pytest.mark.parametrize(
    ("text", "position", "fragments"),
    [
        ("", 0, ["Expected a formula", "empty"]),
        ("   ", 0, ["Expected a formula", "empty"]),
        ("(a", 2, ["')'", "'(' at position 0", "end of the formula"]),
        ("((a OR b)", 9, ["')'", "'(' at position 0", "end of the formula"]),
        ("a)", 1, ["end of the formula", "unbalanced", "got ')'"]),
        ("(a OR b))", 8, ["end of the formula", "got ')'"]),
        (")", 0, ["a concept name", "got ')'"]),
        ("()", 1, ["a concept name", "got ')'"]),
        ("a AND", 5, ["a concept name", "got the end of the formula"]),
        ("a OR ", 5, ["a concept name", "got the end of the formula"]),
        ("NOT", 3, ["a concept name", "got the end of the formula"]),
        ("AND a", 0, ["a concept name", "got 'AND'"]),
        ("a AND OR b", 6, ["a concept name", "got 'OR'"]),
        ("a NOT b", 2, ["AND, OR or the end", "got 'NOT'"]),
        ("a b", 2, ["AND, OR or the end", "got concept name 'b'"]),
        ('"abc', 4, ["closing '\"'", "opened at position 0", "end of the formula"]),
        ('a OR "b AND c', 13, ["closing '\"'", "opened at position 5"]),
        ('"abc\\', 5, ["escaped character", "opened at position 0"]),
        ('""', 0, ["non-empty concept name"]),
        ("a @ b", 2, ["a concept name", "got '@'"]),
        ("a AND -b", 6, ["a concept name", "got '-'"]),
    ],
)
def test_parse_errors_say_what_where(text: str, position: int, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("Expected"), message
    assert _position(message) == position, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(UsageError, match="str"):
        parse(["leaf", "a"])  # type: ignore[arg-type]


# --- JSON -------------------------------------------------------------------------------------


def test_to_json_tree_format() -> None:
    f = And(Or(water, river), Not(blue))
    assert to_json(f) == [
        "and",
        ["or", ["leaf", "water"], ["leaf", "river"]],
        ["not", ["leaf", "blue"]],
    ]
    assert to_json(Leaf('say "hi"')) == ["leaf", 'say "hi"']


def test_json_round_trip_random_formulas() -> None:
    for f in random_formulas():
        tree = to_json(f)
        assert from_json(tree) == f
        assert from_json(json.loads(json.dumps(tree))) == f


def test_from_json_folds_n_ary_left_deep() -> None:
    leaf = ["leaf", "a"], ["leaf", "b"], ["leaf", "c"], ["leaf", "d"]
    assert from_json(["and", *leaf[:3]]) == And(And(a, b), c)
    assert from_json(["or", *leaf]) == Or(Or(Or(a, b), c), d)
    assert from_json(["and", leaf[0], ["or", *leaf[1:]]]) == And(a, Or(Or(b, c), d))
    assert from_json(("not", ("leaf", "a"))) == Not(a)  # tuples work too
    # The n-ary fold agrees with how the text "a AND b AND c" parses.
    assert from_json(["and", *leaf[:3]]) == parse("a AND b AND c")


@pytest.mark.parametrize(
    ("tree", "fragments"),
    [
        ([], ["at tree,", "[]"]),
        ("a", ["at tree,", "'a'"]),
        ([3, "a"], ["at tree,"]),
        (["leaf"], ["['leaf', name]", "at tree,"]),
        (["leaf", ""], ["non-empty", "at tree,"]),
        (["leaf", 7], ["['leaf', name]", "7"]),
        (["leaf", "a", "b"], ["['leaf', name]", "'b'"]),
        (["not"], ["['not', F]", "at tree,"]),
        (["not", ["leaf", "a"], ["leaf", "b"]], ["['not', F]", "at tree,"]),
        (["and", ["leaf", "a"]], ["two or more operands", "at tree,"]),
        (["or"], ["two or more operands", "at tree,"]),
        (["xor", ["leaf", "a"], ["leaf", "b"]], ["'xor'", "at tree,"]),
        (["and", ["leaf", "a"], ["nand", ["leaf", "b"]]], ["'nand'", "at tree[2],"]),
        (["or", ["leaf", "a"], ["not", ["leaf", ""]]], ["non-empty", "at tree[2][1],"]),
        (["and", ["leaf", "a"], ["leaf", "b"], "c"], ["at tree[3],", "'c'"]),
    ],
)
def test_from_json_errors_name_the_bad_node(tree: object, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        from_json(tree)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("Expected"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_from_json_reads_every_planted_unit_formula() -> None:
    seen = 0
    for recipe in RECIPES.values():
        for unit in recipe.planted:
            f = from_json(unit.formula)
            assert f == parse(unit.concept), unit
            assert f.render() == unit.concept  # the recipes write formulas minimally
            assert set(f.leaves()) == set(C.formula_leaves(unit.formula))
            seen += 1
    assert seen >= 15
    assert any(isinstance(from_json(u.formula), And) for r in RECIPES.values() for u in r.planted)


@pytest.mark.parametrize(
    "text",
    [
        "red AND circle AND NOT blue",
        "grass OR sand OR water OR snow",
        "red AND (circle OR square) OR NOT blue AND striped",
        "NOT (red OR green) AND (star AND (cross OR diamond))",
        "red AND circle OR green AND square OR blue",
    ],
)
def test_agrees_with_the_synth_catalogue_parser(text: str) -> None:
    """bench.synth.concepts parses to n-ary trees; folded, they are what this parser reads."""
    assert from_json(C.parse_formula(text)) == parse(text)


# --- evaluation -------------------------------------------------------------------------------


MASKS = {
    "a": np.array([[True, True, False], [False, True, False]]),
    "b": np.array([[True, False, True], [False, True, True]]),
    "c": np.array([[0, 1, 0], [1, 1, 0]], dtype=np.uint8),  # read as != 0
}


def test_evaluate_against_hand_written_expectations() -> None:
    av, bv, cv = MASKS["a"], MASKS["b"], MASKS["c"].astype(bool)
    cases = {
        "a": [[True, True, False], [False, True, False]],
        "NOT a": [[False, False, True], [True, False, True]],
        "a AND b": [[True, False, False], [False, True, False]],
        "a OR b": [[True, True, True], [False, True, True]],
        "a AND NOT b": [[False, True, False], [False, False, False]],
        "(a OR b) AND NOT c": [[True, False, True], [False, False, True]],
        "a OR b AND c": [[True, True, False], [False, True, False]],
        "NOT (a OR b OR c)": [[False, False, False], [False, False, False]],
    }
    for text, expected in cases.items():
        out = evaluate(parse(text), MASKS)
        assert out.dtype == np.bool_, text
        assert out.shape == (2, 3), text
        np.testing.assert_array_equal(out, np.array(expected), err_msg=text)
    # and against numpy directly
    np.testing.assert_array_equal(evaluate(parse("NOT a AND (b OR c)"), MASKS), ~av & (bv | cv))


def test_evaluate_returns_a_new_array() -> None:
    masks = {"a": np.array([True, False])}
    out = evaluate(a, masks)
    out[:] = False
    assert masks["a"].tolist() == [True, False]


def test_evaluate_missing_concept_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'zebra'") as info:
        evaluate(And(a, Leaf("zebra")), MASKS)
    assert "a AND zebra" in str(info.value)


def test_evaluate_shape_mismatch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="shape"):
        evaluate(a & b, {"a": np.zeros((2, 3), bool), "b": np.zeros((4,), bool)})


# --- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "g"),
    [
        (Or(a, b), Or(b, a)),
        (And(a, Not(b)), And(Not(b), a)),
        (Or(a, a), a),
        (Not(Not(a)), a),
        (And(And(a, b), c), And(a, And(b, c))),
        (Not(And(a, b)), Or(Not(a), Not(b))),  # De Morgan
        (And(a, Or(b, c)), Or(And(a, b), And(a, c))),  # distributivity
        (Or(a, Not(a)), Or(b, Not(b))),  # both always true, different names
        (Or(a, And(a, b)), a),  # absorption: b does not matter
    ],
)
def test_equivalent_true(f: Formula, g: Formula) -> None:
    assert equivalent(f, g)
    assert equivalent(g, f)


@pytest.mark.parametrize(
    ("f", "g"),
    [
        (a, b),
        (a, Not(a)),
        (And(a, b), Or(a, b)),
        (Not(And(a, b)), And(Not(a), Not(b))),
        (Or(a, And(b, c)), And(Or(a, b), c)),
        (a, And(a, b)),
        (Or(a, Not(a)), And(b, Not(b))),
    ],
)
def test_equivalent_false(f: Formula, g: Formula) -> None:
    assert not equivalent(f, g)
    assert not equivalent(g, f)


def test_equivalent_random_formulas_to_their_round_trips_and_negations() -> None:
    for f in random_formulas(80):
        assert equivalent(f, parse(f.render()))
        assert not equivalent(f, Not(f))


def test_equivalent_name_limit() -> None:
    many = [Leaf(f"n{i}") for i in range(21)]
    f = many[0]
    for leaf in many[1:]:
        f = Or(f, leaf)
    with pytest.raises(UsageError, match="at most 20"):
        equivalent(f, f)
    g = many[0]
    for leaf in many[1:16]:
        g = And(g, leaf)
    assert equivalent(g, g)
