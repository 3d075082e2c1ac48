"""INVERT: AUROC of every candidate of a beam step against sklearn, the shared beam search
against brute-force enumeration for both objectives (AUROC here, IoU on plain masks; CompExp's
own IoU objective is checked the same way in tests/bench/test_dissect.py), image-level concepts
from the concept table, and the method on the kit's tiny world."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench.search import Scored, beam_search, expand, tree_key, tree_length
from methods.invert.search import AurocObjective


def random_world(seed: int, n: int = 60, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, c + 1), dtype=bool)
    labels[:, 1:] = rng.random((n, c)) < rng.uniform(0.15, 0.5, size=c)
    # activations with ties (rounded), loosely driven by concepts 1 and 2
    acts = np.round(labels[:, 1] * 1.0 + 0.7 * labels[:, 2] + rng.normal(0, 0.6, n), 1)
    return labels, acts


def evaluate(tree: Any, labels: np.ndarray) -> np.ndarray:
    op = tree[0]
    if op == "leaf":
        return labels[:, int(tree[1])].copy()
    if op == "not":
        return ~evaluate(tree[1], labels)
    a, b = evaluate(tree[1], labels), evaluate(tree[2], labels)
    return a & b if op == "and" else a | b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_candidate_auroc_equals_sklearn(seed: int) -> None:
    labels, acts = random_world(seed)
    obj = AurocObjective(labels, acts, max_fraction=0.9)
    score, value, eligible = obj.primitives()
    order = [int(a) for a in np.argsort(-score, kind="stable") if eligible[a]][:3]
    beam = [Scored(obj.atom(a), float(score[a]), float(value[a]), 1) for a in order]
    s, _ = obj.expansions(beam)
    checked = dropped = 0
    for j, entry in enumerate(beam):
        f = evaluate(entry.tree, labels)
        for a in range(s.shape[1]):
            for k, op in enumerate(obj.operators):
                tree = expand(entry.tree, obj.atom(a), op)
                if a in (0, obj.n_codes):  # no atom
                    assert s[j, a, k] == -np.inf
                    continue
                m = evaluate(tree, labels)
                frac = m.mean()
                if m.all() or not m.any() or np.array_equal(m, f) or frac > 0.9:
                    assert s[j, a, k] == -np.inf, tree
                    dropped += 1
                    continue
                assert s[j, a, k] == pytest.approx(roc_auc_score(m, acts), abs=1e-12), tree
                checked += 1
    assert checked > 20 and dropped > 0


def enumerate_invert(labels, acts, max_length, max_fraction):
    """Best AUROC over every left-deep formula of up to ``max_length`` atoms (concepts and
    negated concepts, AND/OR), the original's rules: a formula starts from an atom in the
    fraction range; an expansion must change the membership, be neither empty nor everything,
    and stay in the range."""
    c = labels.shape[1] - 1
    atoms = [["leaf", i] for i in range(1, c + 1)] + [["not", ["leaf", i]] for i in range(1, c + 1)]
    masks = {tree_key(t): evaluate(t, labels) for t in atoms}

    def ok(m):
        return m.any() and not m.all() and m.mean() <= max_fraction

    level = [(t, masks[tree_key(t)]) for t in atoms if ok(masks[tree_key(t)])]
    best = max(roc_auc_score(m, acts) for _, m in level)
    for _ in range(max_length - 1):
        nxt = []
        for (t, m), a, op in itertools.product(level, atoms, ("and", "or")):
            am = masks[tree_key(a)]
            new = m & am if op == "and" else m | am
            if ok(new) and not np.array_equal(new, m):
                nxt.append((expand(t, a, op), new))
        if nxt:
            best = max(best, max(roc_auc_score(m, acts) for _, m in nxt))
        level = nxt
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_length", [1, 2, 3])
def test_search_finds_the_enumerated_auroc_optimum(seed: int, max_length: int) -> None:
    labels, acts = random_world(seed, c=3)
    obj = AurocObjective(labels, acts, max_fraction=0.5)
    # A beam as wide as the candidate set is exhaustive over the same grammar.
    found = beam_search(obj, beam_size=100_000, max_length=max_length, key=obj.key)
    best = enumerate_invert(labels, acts, max_length, 0.5)
    assert found.best.value == pytest.approx(best, abs=1e-12)
    assert tree_length(found.best.tree) <= 2 * max_length
    assert found.best.value == pytest.approx(
        roc_auc_score(evaluate(found.best.tree, labels), acts), abs=1e-12
    )
    # the default beam is a heuristic: never above the optimum
    default = beam_search(obj, beam_size=5, max_length=max_length, key=obj.key)
    assert default.best.value <= best + 1e-12


class MaskIoU:
    """A plain IoU objective for the generic search: candidates evaluated on pixel masks one by
    one (no algebra), operators OR, AND, AND NOT, like CompExp."""

    operators = ("or", "and", "and not")

    def __init__(self, masks: np.ndarray, unit: np.ndarray):
        self.masks, self.unit = masks, unit  # [C + 1, P], [P]

    def atom(self, a: int) -> list:
        return ["leaf", a]

    def iou(self, m: np.ndarray) -> float:
        union = (m | self.unit).sum()
        return float((m & self.unit).sum() / union) if union else 0.0

    def primitives(self):
        v = np.array([self.iou(m) for m in self.masks])
        s = v.copy()
        s[0] = -np.inf
        return s, v, v > 0

    def expansions(self, beam):
        out = np.full((len(beam), len(self.masks), 3), -np.inf)
        for j, b in enumerate(beam):
            for a in range(1, len(self.masks)):
                for k, op in enumerate(self.operators):
                    m = evaluate(expand(b.tree, ["leaf", a], op), self.masks.T)
                    out[j, a, k] = self.iou(m)
        return out, out


def enumerate_iou(masks, unit, max_length):
    codes = range(1, len(masks))
    obj = MaskIoU(masks, unit)
    level = [["leaf", c] for c in codes]
    best = max(obj.iou(masks[c]) for c in codes)
    for _ in range(max_length - 1):
        level = [
            expand(t, ["leaf", c], op)
            for t, c, op in itertools.product(level, codes, ("or", "and", "and not"))
        ]
        best = max(best, max(obj.iou(evaluate(t, masks.T)) for t in level))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_the_enumerated_iou_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((5, 200)) < rng.uniform(0.1, 0.5, size=(5, 1))
    masks[0] = False
    unit = (masks[1] & ~masks[3]) | (rng.random(200) < 0.05)
    found = beam_search(MaskIoU(masks, unit), beam_size=100_000, max_length=3)
    assert found.best.value == pytest.approx(enumerate_iou(masks, unit, 3), abs=1e-12)
    assert found.best.value > found.single.value


def test_image_concepts_any_pixel_or_whole_image(tmp_path) -> None:
    from bench.dissect import build_concept_table, image_concepts
    from bench.testing import TinyProbe

    probe = TinyProbe(n=9)
    table = build_concept_table(probe, None)
    labels = image_concepts(table, chunk_images=4)
    name = {c.name: i + 1 for i, c in enumerate(table.concepts)}
    for i in range(len(probe)):
        colour = probe._colour(i)
        for other in ("red", "green", "blue"):
            assert labels[i, name[other]] == (other == colour)
        assert labels[i, name["grey"]] and labels[i, name["square"]] and labels[i, name["plain"]]
    assert not labels[:, 0].any()


def test_invert_labels_the_tiny_colour_detectors(tmp_path) -> None:
    from bench.cache import Cache
    from bench.schema import UnitRef
    from bench.testing import TinyProbe, tiny_evidence
    from methods.base import MethodContext
    from methods.invert import Invert

    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    units = [UnitRef(layer="conv", index=i) for i in range(3)]
    out = Invert().describe(units, ev, MethodContext(cache=cache))
    for d, colour in zip(out, ("red", "green", "blue"), strict=True):
        assert d.status == "ok", d.error
        assert d.label == colour, d
        assert d.score_name == "auroc" and d.score > 0.9
        assert 0.0 <= d.extras["p_value"] < 0.01
        # its formulas are over image-level labels: the faithfulness suite scores them per image
        assert d.extras["formula_level"] == "image"
        acts = np.asarray(ev.layer("conv").pooled_mean[:, d.unit.index], dtype=np.float64)
        member = np.array([TinyProbe()._colour(i) == colour for i in range(len(acts))])
        assert d.score == pytest.approx(roc_auc_score(member, acts), abs=1e-12)
