"""Text both ways for the synthetic world: captions of scenes, and scenes drawn from phrases.

:func:`caption` is the synthetic ``Captioner`` backend ("a large red striped circle and a small
blue square on grass"); :func:`render_phrase` the synthetic ``TextToImage`` backend: it draws an
image that contains the concepts a short phrase names ("red striped circles on sand",
"grass OR sand", "red AND circle", "(water OR snow) AND NOT white").

Phrase grammar: words are matched against the catalogue (plurals, Broden raw names and a few
synonyms included); unknown words are ignored. Adjacent concepts are conjoined; ``and``/``AND``
conjoins, ``or``/``OR`` offers alternatives (one is picked by the seed), ``not``/``no``/
``without`` negates the next concept or group; parentheses group. A prose ``or`` between
adjectives shares the last alternative's shape: "red or green squares" is "(red AND square) OR
(green AND square)", while formula text "red OR green AND square" is literal. Several values
of one category ("red circles and blue squares") give several objects. Attributes the phrase
leaves open are sampled, never from the negated values.

:func:`read_phrase_tree` reads a phrase as a *label* (the synthetic probe's label reader, used
by :mod:`bench.presence`): as :func:`parse_phrase`, except that a context ("red squares on
grass": a preposition followed by background materials or scenes only) is marked as holding on
the image, ``["and", X, ["image", Y]]``, not on the same pixels as X.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.synth import concepts as C
from bench.synth import world as W

#: Bump when a phrase is read or drawn differently (part of the renderer's cache identity).
#: 2: a prose "or" between adjectives shares the last alternative's shapes (:func:`_share_nouns`).
PHRASE_VERSION = 2

if TYPE_CHECKING:
    import numpy as np

_MATERIAL_PHRASE = {
    "grass": "on grass",
    "sky": "in the sky",
    "water": "on water",
    "sand": "on sand",
    "brick": "on a brick wall",
    "wood": "on wood",
    "snow": "on snow",
}
_SIZE_WORD = {"small": "small", "medium": "", "large": "large"}
_PLURAL = {"cross": "crosses"}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


def _plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def describe_object(obj: W.SceneObject, *, count: int = 1, with_size: bool = True) -> str:
    """ "a large red striped circle", or with ``count=2`` "two red striped circles"."""
    words = []
    if with_size and _SIZE_WORD[obj.size]:
        words.append(_SIZE_WORD[obj.size])
    words.append(obj.color)
    if obj.pattern != "plain":
        words.append(obj.pattern)
    words.append(obj.shape if count == 1 else _plural(obj.shape))
    text = " ".join(words)
    if count == 1:
        return f"{_article(text)} {text}"
    return f"{_NUMBER_WORDS.get(count, str(count))} {text}"


def caption(scene: W.Scene) -> str:
    """A short English description of what is visible: every object (main first) and the
    background, e.g. "a large red striped circle and two small blue squares on grass"."""
    groups: list[tuple[W.SceneObject, int]] = []
    for obj in scene.objects:
        key = (obj.color, obj.pattern, obj.shape, _SIZE_WORD[obj.size])
        for j, (g, n) in enumerate(groups):
            if (g.color, g.pattern, g.shape, _SIZE_WORD[g.size]) == key:
                groups[j] = (g, n + 1)
                break
        else:
            groups.append((obj, 1))
    parts = [describe_object(o, count=n) for o, n in groups]
    if len(parts) == 1:
        things = parts[0]
    else:
        things = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{things} {_MATERIAL_PHRASE[scene.material]}"


# --- phrases -> scenes ------------------------------------------------------------------------

_SYNONYMS: dict[str, str] = {
    "stripe": "striped",
    "stripes": "striped",
    "stripy": "striped",
    "lined": "striped",
    "dot": "dotted",
    "dots": "dotted",
    "spotted": "dotted",
    "spots": "dotted",
    "polka": "dotted",
    "checker": "checkered",
    "checkers": "checkered",
    "checked": "checkered",
    "checkerboard": "checkered",
    "chequered": "checkered",
    "plaid": "checkered",
    "solid": "plain",
    "uniform": "plain",
    "round": "circle",
    "disc": "circle",
    "disk": "circle",
    "ball": "circle",
    "box": "square",
    "rectangle": "square",
    "rhombus": "diamond",
    "plus": "cross",
    "grey": "black",
    "gray": "black",
    "violet": "purple",
    "lawn": "grass",
    "grassy": "grass",
    "field": "grass",
    "clouds": "sky",
    "cloud": "sky",
    "sea": "water",
    "ocean": "water",
    "river": "water",
    "pond": "water",
    "waves": "water",
    "desert": "sand",
    "sandy": "sand",
    "dune": "sand",
    "dunes": "sand",
    "bricks": "brick",
    "wall": "brick",
    "wooden": "wood",
    "planks": "wood",
    "floor": "wood",
    "snowy": "snow",
    "ice": "snow",
}


def _word_to_concept(word: str) -> str | None:
    w = word.lower()
    for cand in (w, re.sub(r"-[cs]$", "", w)):
        if cand in _SYNONYMS:
            return _SYNONYMS[cand]
        try:
            c = C.concept(cand)
        except KeyError:
            pass
        else:
            return c.name
    for suffix in ("es", "s"):  # plurals: "circles", "crosses"
        if w.endswith(suffix):
            stem = w[: -len(suffix)]
            if stem in _SYNONYMS:
                return _SYNONYMS[stem]
            if stem in C.SHAPES:
                return stem
    return None


def _is_plural(word: str) -> bool:
    w = word.lower()
    return any(w == _plural(s) for s in C.SHAPES) or w in ("stars", "circles", "objects", "shapes")


@dataclass(frozen=True, kw_only=True, slots=True)
class PhraseSpec:
    """What one alternative of a phrase asks for: per category the required values (in order)
    and the excluded ones; ``plural``: the phrase names objects in the plural."""

    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plural: bool = False


def _plain_leaves(tree: list) -> list[str] | None:
    """The leaf names of a leaf or a conjunction of leaves; ``None`` for anything else."""
    if tree[0] == "leaf":
        return [tree[1]]
    if tree[0] == "and" and all(t[0] == "leaf" for t in tree[1:]):
        return [t[1] for t in tree[1:]]
    return None


def _share_nouns(parts: list[list]) -> list[list]:
    """English reads "red or green squares" as red squares or green squares: a prose "or"
    between adjectives (colours, patterns) shares the last alternative's shapes with the
    alternatives before it that name no shape. Formula text ("red OR square") is literal."""
    last = _plain_leaves(parts[-1])
    if last is None:
        return parts
    nouns = [n for n in last if C.concept(n).category == "object"]
    if not nouns:
        return parts
    out = []
    for part in parts[:-1]:
        names = _plain_leaves(part)
        if names and all(C.concept(n).category in ("color", "pattern") for n in names):
            part = ["and", *(["leaf", n] for n in names + nouns)]
        out.append(part)
    return [*out, parts[-1]]


def _phrase_tree(phrase: str) -> tuple[list | None, bool]:
    """Phrase -> (formula tree over catalogue names or ``None`` if it names nothing, plural)."""
    raw = re.findall(r"\(|\)|[A-Za-z][A-Za-z\-]*", phrase)
    tokens: list[str] = []
    plural = False
    for t in raw:
        low = t.lower()
        if t in "()":
            tokens.append(t)
        elif low in ("and", "with", "on", "in"):
            tokens.append("AND")
        elif low == "or":
            # "or" in prose, "OR" in formula text: only the first distributes a trailing noun
            tokens.append("OR" if t == "OR" else "or")
        elif low in ("not", "no", "without"):
            tokens.append("NOT")
        else:
            name = _word_to_concept(t)
            if name is not None:
                tokens.append("LEAF:" + name)
                plural = plural or _is_plural(t)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def parse_or() -> list | None:
        nonlocal pos
        parts = [parse_and()]
        prose = True
        while peek() in ("OR", "or"):
            prose = prose and peek() == "or"
            pos += 1
            parts.append(parse_and())
        kept = [p for p in parts if p is not None]
        if not kept:
            return None
        if prose and len(kept) > 1:
            kept = _share_nouns(kept)
        return kept[0] if len(kept) == 1 else ["or", *kept]

    def parse_and() -> list | None:
        nonlocal pos
        parts = []
        while True:
            tok = peek()
            if tok is None or tok in ("OR", "or", ")"):
                break
            if tok == "AND":
                pos += 1
                continue
            parts.append(parse_not())
        kept = [p for p in parts if p is not None]
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else ["and", *kept]

    def parse_not() -> list | None:
        nonlocal pos
        tok = peek()
        if tok == "NOT":
            pos += 1
            inner = parse_not()
            return None if inner is None else ["not", inner]
        if tok == "(":
            pos += 1
            inner = parse_or()
            if peek() == ")":
                pos += 1
            return inner
        if tok is None or not tok.startswith("LEAF:"):
            return None  # a dangling NOT: "red not"
        pos += 1
        return ["leaf", tok[5:]]

    tree = None
    while pos < len(tokens):  # stray ")" are skipped
        part = parse_or()
        if part is not None:
            tree = part if tree is None else ["and", tree, part]
        if peek() == ")":
            pos += 1
    return tree, plural


def _dnf(tree: list) -> list[tuple[frozenset[str], frozenset[str]]]:
    """Formula -> list of (positive leaves, negative leaves) conjunctions."""
    op = tree[0]
    if op == "leaf":
        return [(frozenset([tree[1]]), frozenset())]
    if op == "not":
        inner = tree[1]
        if inner[0] == "leaf":
            return [(frozenset(), frozenset([inner[1]]))]
        if inner[0] == "not":
            return _dnf(inner[1])
        flipped = "or" if inner[0] == "and" else "and"  # De Morgan
        return _dnf([flipped, *(["not", s] for s in inner[1:])])
    if op == "or":
        return [c for sub in tree[1:] for c in _dnf(sub)]
    out: list[tuple[frozenset[str], frozenset[str]]] = [(frozenset(), frozenset())]
    for sub in tree[1:]:
        out = [(p1 | p2, n1 | n2) for p1, n1 in out for p2, n2 in _dnf(sub)]
    return out


def parse_phrase(phrase: str) -> tuple[list[PhraseSpec], list | None]:
    """The alternatives a phrase allows (one :class:`PhraseSpec` each) and its formula tree."""
    tree, plural = _phrase_tree(phrase)
    if tree is None:
        return [PhraseSpec(plural=plural)], None
    specs = []
    order = {name: i for i, name in enumerate(C.formula_leaves(tree))}
    for pos, neg in _dnf(tree):
        required: dict[str, list[str]] = {}
        excluded: dict[str, list[str]] = {}
        for name in sorted(pos, key=order.__getitem__):
            required.setdefault(C.concept(name).category, []).append(name)
        for name in sorted(neg, key=order.__getitem__):
            excluded.setdefault(C.concept(name).category, []).append(name)
        if any(set(required.get(k, ())) & set(v) for k, v in excluded.items()):
            continue  # contradictory alternative ("red AND NOT red")
        specs.append(
            PhraseSpec(
                required={k: tuple(v) for k, v in required.items()},
                excluded={k: tuple(v) for k, v in excluded.items()},
                plural=plural,
            )
        )
    return specs or [PhraseSpec(plural=plural)], tree


#: Words that introduce a context ("red squares *on* grass"), read by :func:`read_phrase_tree`.
CONTEXT_PREPOSITIONS: frozenset[str] = frozenset(
    {"on", "in", "near", "over", "with", "without", "at", "under", "above", "against",
     "inside", "within", "beside", "behind", "atop", "across", "amid", "among"}
)  # fmt: skip
#: Categories that are a context in the world: the background material and its scene.
CONTEXT_CATEGORIES: tuple[str, ...] = ("material", "scene")
_NEGATIONS = frozenset({"not", "no"})


def _context_split(phrase: str) -> tuple[str, str] | None:
    """``(thing, context)`` texts of "X on Y" where the tail from a preposition names only
    context concepts (materials, scenes) and the head names something; ``None`` otherwise.
    The first such preposition at parenthesis depth 0 wins; a "not"/"no" right before it goes
    with the context ("red squares not on grass"); the context's prepositions are dropped, so
    "on snow or on sand" reads as ``snow OR sand``."""
    raw = re.findall(r"\(|\)|[A-Za-z][A-Za-z\-]*", phrase)
    depth = 0
    for p, tok in enumerate(raw):
        depth += {"(": 1, ")": -1}.get(tok, 0)
        if depth != 0 or tok.lower() not in CONTEXT_PREPOSITIONS:
            continue
        start = p
        while start > 0 and raw[start - 1].lower() in _NEGATIONS:
            start -= 1
        tail = raw[start:]
        level = 0
        for t in tail:
            level += {"(": 1, ")": -1}.get(t, 0)
            if level < 0:
                break
        if level != 0:
            continue
        words = [t for t in tail if t.lower() == "without" or t.lower() not in CONTEXT_PREPOSITIONS]
        names = [n for t in words if t not in "()" and (n := _word_to_concept(t)) is not None]
        if not names or any(C.concept(n).category not in CONTEXT_CATEGORIES for n in names):
            continue
        head = " ".join(raw[:start])
        if _phrase_tree(head)[0] is None:
            continue
        return head, " ".join(words)
    return None


def read_phrase_tree(phrase: str) -> list | None:
    """The phrase as a formula tree over the world's concepts *for reading a label*, or
    ``None`` when it names none: :func:`parse_phrase`'s tree, except that a context, "X
    on/in/near/over/with Y" where Y names only background materials or scenes, is read as
    ``["and", X, ["image", Y]]``: X per pixel, Y on the image (``["image", F]``: F holds on the
    image, see :mod:`bench.presence`). "red squares on grass" is then the red square pixels of
    images with grass (per pixel, no square pixel is a grass pixel). Phrases without such a
    context read exactly as :func:`parse_phrase` reads them."""
    split = _context_split(phrase)
    if split is None:
        return _phrase_tree(phrase)[0]
    thing, where = (_phrase_tree(text)[0] for text in split)
    if thing is None or where is None:  # _context_split checked both; never taken
        return _phrase_tree(phrase)[0]
    return ["and", thing, ["image", where]]


def phrase_scene(phrase: str, seed: int) -> W.Scene:
    """The scene :func:`render_phrase` draws for ``phrase`` and ``seed``."""
    import numpy as np

    rng = np.random.default_rng([abs(int(seed)), 0x9E3779B1])
    specs, _ = parse_phrase(phrase)
    spec = specs[int(rng.integers(len(specs)))]

    def allowed(category: str) -> tuple[str, ...]:
        vals = tuple(v for v in C.values(category) if v not in spec.excluded.get(category, ()))
        return vals or C.values(category)

    object_cats = ("color", "object", "pattern")
    n_req = max((len(spec.required.get(c, ())) for c in object_cats), default=0)
    materials = spec.required.get("material")
    scene_names = spec.required.get("scene")
    if scene_names:
        by_scene = {v: k for k, v in C.SCENE_OF_MATERIAL.items()}
        materials = (by_scene[scene_names[0]],)
    material_choices = (materials[0],) if materials else allowed("material")
    if n_req == 0:
        n = 1
        objects = [{c: allowed(c) for c in object_cats}]
        main_sizes: tuple[str, ...] = ("small",) if materials else ("medium", "large")
    else:
        n = max(n_req, int(rng.integers(2, 4)) if spec.plural else 1)
        objects = []
        for k in range(n):
            obj = {}
            for c in object_cats:
                req = spec.required.get(c, ())
                obj[c] = (req[k % len(req)],) if req else allowed(c)
            objects.append(obj)
        main_sizes = ("medium", "large") if n <= 2 else ("medium",)
    return W.sample_scene(rng, materials=material_choices, objects=objects, main_sizes=main_sizes)


def render_phrase(phrase: str, seed: int, size: int = W.DEFAULT_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: an image of the concepts ``phrase`` names (see the module doc)."""
    return W.render(phrase_scene(phrase, seed), size).image


def render_phrase_labeled(phrase: str, seed: int, size: int = W.DEFAULT_SIZE) -> W.Rendered:
    """Like :func:`render_phrase`, with the scene and its label maps."""
    return W.render(phrase_scene(phrase, seed), size)
