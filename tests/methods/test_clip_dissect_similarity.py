"""CLIP-Dissect's similarity functions: the chunked, all-units-at-once code equals a direct
per-unit, per-rank loop of the paper's formulas on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.errors import ConfigError, DataError, UnknownNameError
from methods.clip_dissect import similarity as S


def _case(seed: int = 0, n: int = 40, u: int = 6, c: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((n, c), generator=g, dtype=torch.float64) * 0.3 + 0.1  # CLIP-like cosines
    acts = torch.randn((n, u), generator=g, dtype=torch.float64)
    return p, acts


def _pmi_loop(p, acts, top_k, a, lam, min_prob, soft, p_start=0.998, p_end=0.97):
    pn, an = p.numpy(), acts.numpy()
    q = np.exp(a * pn) / np.exp(a * pn).sum(1, keepdims=True)
    u_total, c = an.shape[1], pn.shape[1]
    log_p = np.zeros((u_total, c))
    for k in range(u_total):
        top = np.argsort(-an[:, k], kind="stable")[:top_k]
        for ci in range(c):
            total = 0.0
            for r, i in enumerate(top):
                if soft:
                    pr = p_start - r / top_k * (p_start - p_end)
                    total += math.log(1 + pr * (q[i, ci] - 1) + min_prob)
                else:
                    total += math.log(q[i, ci] + min_prob)
            log_p[k, ci] = total
    prior = np.log(np.exp(log_p).mean(0))
    return log_p - lam * prior


def test_soft_wpmi_equals_a_per_unit_per_rank_loop() -> None:
    p, acts = _case()
    got = S.soft_wpmi(p, acts, top_k=10, unit_chunk=4, concept_chunk=4).numpy()
    want = _pmi_loop(p, acts, top_k=10, a=10, lam=1, min_prob=1e-7, soft=True)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_wpmi_equals_a_per_unit_loop_with_its_constants() -> None:
    p, acts = _case(seed=1)
    got = S.wpmi(p, acts, unit_chunk=5, concept_chunk=2).numpy()  # top_k=28, a=2, lam=0.6
    want = _pmi_loop(p, acts, top_k=28, a=2, lam=0.6, min_prob=1e-7, soft=False)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_chunk_sizes_do_not_change_results() -> None:
    p, acts = _case(seed=2, u=13, c=21)
    for name in S.SIMILARITY_FUNCTIONS:
        kw = {"top_k": 10} if name in ("soft_wpmi", "wpmi") else {}
        a = S.similarity(name, p, acts, unit_chunk=3, concept_chunk=5, **kw)
        b = S.similarity(name, p, acts, unit_chunk=64, concept_chunk=4096, **kw)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cos_and_cos_cubed_equal_numpy() -> None:
    p, acts = _case(seed=3)
    pn, an = p.numpy(), acts.numpy()
    cos = (an / np.linalg.norm(an, axis=0)).T @ (pn / np.linalg.norm(pn, axis=0))
    np.testing.assert_allclose(S.cos_similarity(p, acts).numpy(), cos, rtol=1e-10)
    ac = (an - an.mean(0)) ** 3
    pc = (pn - pn.mean(0)) ** 3
    cubed = (ac / np.linalg.norm(ac, axis=0)).T @ (pc / np.linalg.norm(pc, axis=0))
    np.testing.assert_allclose(S.cos_similarity_cubed(p, acts).numpy(), cubed, rtol=1e-10)


def test_rank_reorder_equals_a_direct_loop() -> None:
    p, acts = _case(seed=4, n=100)
    got = S.rank_reorder(p, acts, top_fraction=0.1).numpy()
    pn, an = p.numpy(), acts.numpy()
    for k in range(an.shape[1]):
        top = np.argsort(-an[:, k], kind="stable")[:10]
        vals = an[top, k]
        asc = np.sort(vals)
        base = np.mean(np.abs(vals[:, None] - vals[None, :]) ** 3)
        for ci in range(pn.shape[1]):
            sims = pn[top, ci]
            rank = np.argsort(np.argsort(sims, kind="stable"), kind="stable")
            err = np.mean(np.abs(vals - asc[rank]) ** 3) / base
            assert got[k, ci] == pytest.approx(-err / sims.mean() ** 0.5, rel=1e-9)


def test_the_unit_whose_top_images_show_a_concept_gets_it() -> None:
    n, c = 200, 5
    rng = np.random.default_rng(5)
    p = rng.random((n, c)) * 0.1 + 0.15
    acts = rng.normal(size=(n, c))
    for k in range(c):  # unit k fires on the images where concept k is shown, more where clearer
        shown = rng.choice(n, 20, replace=False)
        p[shown, k] += 0.15
        acts[:, k] = 0.3 * acts[:, k] + 20 * p[:, k]
    pt, at = torch.from_numpy(p), torch.from_numpy(acts)
    for name in S.SIMILARITY_FUNCTIONS:
        kw = {"top_k": 20} if name in ("soft_wpmi", "wpmi") else {}
        best = S.similarity(name, pt, at, **kw).argmax(1).tolist()
        assert best == list(range(c)), name


def test_bad_inputs() -> None:
    p, acts = _case()
    with pytest.raises(DataError, match="same images"):
        S.soft_wpmi(p[:5], acts)
    with pytest.raises(ConfigError, match="top_k"):
        S.soft_wpmi(p, acts, top_k=1000)
    with pytest.raises(DataError, match="finite"):
        S.cos_similarity(p, acts * float("nan"))
    with pytest.raises(UnknownNameError):
        S.similarity("softwpmi", p, acts)
