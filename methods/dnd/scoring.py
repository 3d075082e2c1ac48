"""Step 3 of Describe-and-Dissect: ranking generated images and scoring candidate concepts.

The generated images of all of a unit's candidates are ranked together by the unit's activation
(highest first, rank 0); ``ranks[c]`` holds the sorted ranks of candidate ``c``'s images
(``utils.rank_images``). Scores (paper section 3.3 and ``scoring_function.py``):

- **Mean**: the mean rank of a candidate's images; lower is better.
- **TopK-squared** (``topk-sq-mean``, K = 5): the mean of the squared ranks of the candidate's K
  best images; lower is better.
- **Image Products** (``compare_images``): the mean cosine similarity between the image-encoder
  embeddings of the unit's top images (probe images and crops) and of the candidate's images
  among the overall ``top_generated`` (10) best; -1 when it has none there. Higher is better.
- **Combined** (the default): candidates sorted by TopK-squared (best first) get position
  ``pos`` 0..N-1; ``score = (N - pos) * ImageProducts``; higher is better.

Ties keep the candidates' order (the order the LLM proposed them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCORINGS = ("mean", "topk-squared", "image-products", "combined")


def image_positions(activations: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``activations[c]``: float [n_c], the unit's activation on candidate c's images.
    Returns, per candidate, int64 [n_c]: each image's 0-based position in the joint ranking
    (highest activation first; ties: earlier candidate, then earlier image)."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in activations])
    order = np.argsort(-flat, kind="stable")
    position = np.empty(len(flat), dtype=np.int64)
    position[order] = np.arange(len(flat))
    offsets = np.cumsum([0] + [len(a) for a in activations])
    return [position[offsets[c] : offsets[c + 1]] for c in range(len(activations))]


def rank_images(activations: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``ranks[c]``: the sorted positions of candidate c's images (:func:`image_positions`)."""
    return [np.sort(p) for p in image_positions(activations)]


def mean_rank(ranks: np.ndarray) -> float:
    return float(np.mean(ranks)) if len(ranks) else float("inf")


def topk_squared(ranks: np.ndarray, k: int = 5) -> float:
    """Mean of the squared ranks of the ``k`` best images (``ranks`` sorted ascending)."""
    top = np.asarray(ranks[:k], dtype=np.float64)
    return float(np.mean(top**2)) if len(top) else float("inf")


def image_products(unit_emb: np.ndarray, candidate_embs: Sequence[np.ndarray]) -> list[float]:
    """Mean cosine similarity of the unit's top-image embeddings ``[T, D]`` with each
    candidate's top generated image embeddings ``[m_c, D]`` (rows L2-normalised); -1 when
    ``m_c == 0``."""
    u = np.asarray(unit_emb, dtype=np.float64)
    out = []
    for e in candidate_embs:
        e = np.asarray(e, dtype=np.float64)
        out.append(float(np.clip(u @ e.T, -1.0, 1.0).mean()) if len(e) and len(u) else -1.0)
    return out


def combined(topk_sq: Sequence[float], sims: Sequence[float]) -> list[float]:
    """``(N - pos) * sim`` with ``pos`` the candidate's place in the ascending TopK-squared
    order (ties: candidate order)."""
    n = len(topk_sq)
    order = sorted(range(n), key=lambda i: (topk_sq[i], i))
    pos = {c: p for p, c in enumerate(order)}
    return [(n - pos[c]) * float(sims[c]) for c in range(n)]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scored:
    """Every score of every candidate and the final order (best first) under ``scoring``."""

    mean: list[float]
    topk_squared: list[float]
    image_products: list[float]
    combined: list[float]
    order: list[int]
    scoring: str

    def score(self, c: int) -> float:
        return {
            "mean": self.mean,
            "topk-squared": self.topk_squared,
            "image-products": self.image_products,
            "combined": self.combined,
        }[self.scoring][c]


def order_by(scoring: str, scores: Mapping[str, Sequence[float]]) -> list[int]:
    """Candidate indices best first under ``scoring`` (ascending for the rank-based scores,
    descending for the similarity-based ones; ties: candidate order)."""
    vals = scores[scoring]
    if scoring in ("mean", "topk-squared"):
        return sorted(range(len(vals)), key=lambda i: (vals[i], i))
    return sorted(range(len(vals)), key=lambda i: (-vals[i], i))


def score_candidates(
    activations: Sequence[np.ndarray],
    unit_emb: np.ndarray | None,
    generated_embs: Sequence[np.ndarray] | None,
    *,
    scoring: str = "combined",
    k: int = 5,
    top: int = 10,
) -> Scored:
    """Score candidates from the unit's activations on their images and the embeddings.

    ``generated_embs[c]``: embeddings of *all* of candidate c's images, ``[n_c, D]`` (only those
    ranked within ``top`` are used); with ``unit_emb``/``generated_embs`` ``None`` (the
    rank-only scorings), Image Products is -1 for every candidate.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"Expected scoring in {SCORINGS}, got {scoring!r}")
    per_image = image_positions(activations)
    ranks = [np.sort(p) for p in per_image]
    means = [mean_rank(r) for r in ranks]
    tsq = [topk_squared(r, k) for r in ranks]
    if unit_emb is None or generated_embs is None:
        sims = [-1.0] * len(activations)
    else:
        chosen = [np.asarray(generated_embs[c])[per_image[c] < top] for c in range(len(ranks))]
        sims = image_products(unit_emb, chosen)
    comb = combined(tsq, sims)
    scores = {"mean": means, "topk-squared": tsq, "image-products": sims, "combined": comb}
    return Scored(
        mean=means,
        topk_squared=tsq,
        image_products=sims,
        combined=comb,
        order=order_by(scoring, scores),
        scoring=scoring,
    )
