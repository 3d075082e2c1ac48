"""CLIP-Dissect's similarity functions between units and concepts (Oikarinen & Weng, ICLR 2023,
section 3 and appendix; constants of the original repository's ``similarity.py``).

Inputs, for one layer:

* ``image_concept``: ``float [N, C]``, the cosine between every probe image's and every concept's
  embedding in the joint image-text space (``P`` in the paper);
* ``activations``: ``float [N, U]``, every unit's spatially pooled activation on every image.

Every function returns ``float [U, C]`` (higher is more similar) and is computed in chunks of units
and concepts so that memory stays bounded (about ``unit_chunk * top_k * concept_chunk`` floats),
never one unit at a time. The softmax over concepts is taken with a per-image normaliser computed
once over the whole concept set, so chunking concepts changes nothing.

Deviation: ``rank_reorder`` divides by the expected error of a random reordering, computed exactly
(the mean of ``|x_i - x_j|^p`` over all pairs) where the original estimates it from five unseeded
random permutations; the original's labels therefore vary from run to run, ours do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SIMILARITY_FUNCTIONS",
    "cos_similarity",
    "cos_similarity_cubed",
    "rank_reorder",
    "similarity",
    "soft_wpmi",
    "wpmi",
]

UNIT_CHUNK = 16
CONCEPT_CHUNK = 2048


def _check(image_concept: torch.Tensor, activations: torch.Tensor) -> None:
    if image_concept.ndim != 2 or activations.ndim != 2:
        raise DataError(
            f"Expected image_concept [N, C] and activations [N, U], got shapes "
            f"{tuple(image_concept.shape)} and {tuple(activations.shape)}."
        )
    if image_concept.shape[0] != activations.shape[0]:
        raise DataError(
            f"Expected the same images in both, got {image_concept.shape[0]} rows of concept "
            f"similarities and {activations.shape[0]} rows of activations."
        )
    import torch

    if not bool(torch.isfinite(activations).all()) or not bool(torch.isfinite(image_concept).all()):
        raise DataError("Expected finite activations and image-concept similarities (NaN found).")


def _log_pmi(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    top_k: int,
    a: float,
    lam: float,
    min_prob: float,
    p_in_examples: torch.Tensor | None,
    unit_chunk: int,
    concept_chunk: int,
) -> torch.Tensor:
    import torch

    n, c = image_concept.shape
    if not 0 < top_k <= n:
        raise ConfigError(f"Expected 0 < top_k <= {n} probe images, got top_k={top_k}.")
    logits = a * image_concept
    lse = torch.logsumexp(logits, dim=1, keepdim=True)  # [N, 1]: the softmax's normaliser
    top = torch.topk(activations, k=top_k, dim=0).indices.T  # [U, K]
    u_total = top.shape[0]
    log_p = torch.empty((u_total, c), dtype=image_concept.dtype, device=image_concept.device)
    if p_in_examples is not None:
        slope = p_in_examples[None, :, None]
        offset = (1.0 - p_in_examples + min_prob)[None, :, None]
    for c0 in range(0, c, concept_chunk):
        q = torch.exp(logits[:, c0 : c0 + concept_chunk] - lse)  # [N, Cc]
        for u0 in range(0, u_total, unit_chunk):
            g = q[top[u0 : u0 + unit_chunk]]  # [Uc, K, Cc], a fresh tensor: updated in place
            if p_in_examples is not None:
                # 1 + p_r (Q - 1) + min_prob, as p_r Q + (1 - p_r + min_prob): fewer passes
                g.mul_(slope).add_(offset)
            else:
                g.add_(min_prob)
            log_p[u0 : u0 + unit_chunk, c0 : c0 + concept_chunk] = g.log_().sum(1)
    prior = torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(u_total)
    return log_p - lam * prior


def soft_wpmi(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    min_prob: float = 1e-7,
    p_start: float = 0.998,
    p_end: float = 0.97,
    unit_chunk: int = UNIT_CHUNK,
    concept_chunk: int = CONCEPT_CHUNK,
) -> torch.Tensor:
    """SoftWPMI, the paper's default: for unit k with top images ``i_1..i_K`` (by activation),
    ``log p(c|E_k) = sum_r log(1 + p_r (Q[i_r, c] - 1) + min_prob)``, ``Q = softmax(a P)`` over
    concepts, ``p_r`` falling linearly from ``p_start`` to ``p_end``;
    ``sim[k, c] = log p(c|E_k) - lam * log p(c)`` with ``log p(c)`` the log of the mean of
    ``p(c|E_k)`` over the units given together (the prior)."""
    import torch

    _check(image_concept, activations)
    r = torch.arange(top_k, dtype=image_concept.dtype, device=image_concept.device)
    p_r = p_start - r / top_k * (p_start - p_end)
    return _log_pmi(
        image_concept,
        activations,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        p_in_examples=p_r,
        unit_chunk=unit_chunk,
        concept_chunk=concept_chunk,
    )


def wpmi(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    top_k: int = 28,
    a: float = 2.0,
    lam: float = 0.6,
    min_prob: float = 1e-7,
    unit_chunk: int = UNIT_CHUNK,
    concept_chunk: int = CONCEPT_CHUNK,
) -> torch.Tensor:
    """WPMI: as :func:`soft_wpmi` without the softening, ``log p(c|E_k) = sum_r log(Q[i_r, c] +
    min_prob)``, with the original's constants (top 28, a = 2, lambda = 0.6)."""
    _check(image_concept, activations)
    return _log_pmi(
        image_concept,
        activations,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        p_in_examples=None,
        unit_chunk=unit_chunk,
        concept_chunk=concept_chunk,
    )


def _cosine_over_images(
    x: torch.Tensor, y: torch.Tensor, min_norm: float, unit_chunk: int, concept_chunk: int
) -> torch.Tensor:
    import torch

    xn = x / torch.clamp(torch.linalg.vector_norm(x, dim=0, keepdim=True), min=min_norm)
    yn = y / torch.clamp(torch.linalg.vector_norm(y, dim=0, keepdim=True), min=min_norm)
    out = torch.empty((xn.shape[1], yn.shape[1]), dtype=x.dtype, device=x.device)
    for u0 in range(0, xn.shape[1], unit_chunk * 16):
        for c0 in range(0, yn.shape[1], concept_chunk):
            block = xn[:, u0 : u0 + unit_chunk * 16].T @ yn[:, c0 : c0 + concept_chunk]
            out[u0 : u0 + unit_chunk * 16, c0 : c0 + concept_chunk] = block
    return torch.clamp(out, -1.0, 1.0)


def cos_similarity(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    unit_chunk: int = UNIT_CHUNK,
    concept_chunk: int = CONCEPT_CHUNK,
) -> torch.Tensor:
    """Cosine over images between a unit's activations and a concept's similarities."""
    _check(image_concept, activations)
    return _cosine_over_images(activations, image_concept, 0.0, unit_chunk, concept_chunk)


def cos_similarity_cubed(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    min_norm: float = 1e-3,
    unit_chunk: int = UNIT_CHUNK,
    concept_chunk: int = CONCEPT_CHUNK,
) -> torch.Tensor:
    """Both sides mean-centred over images and cubed (stressing the extremes), then the cosine;
    norms clipped below at ``min_norm`` as in the original."""
    _check(image_concept, activations)
    x = (activations - activations.mean(0, keepdim=True)) ** 3
    y = (image_concept - image_concept.mean(0, keepdim=True)) ** 3
    return _cosine_over_images(x, y, min_norm, unit_chunk, concept_chunk)


def rank_reorder(
    image_concept: torch.Tensor,
    activations: torch.Tensor,
    *,
    p: float = 3.0,
    top_fraction: float = 0.05,
    scale_p: float = 0.5,
    unit_chunk: int = UNIT_CHUNK,
    concept_chunk: int = CONCEPT_CHUNK,
) -> torch.Tensor:
    """Rank reorder: on a unit's top ``top_fraction`` images, reassign its (sorted) activation
    values in the order of a concept's similarities and measure the ``p``-error against the true
    activations, relative to the expected error of a random order and divided by the concept's
    mean similarity on those images to the power ``scale_p``; the negated error is the
    similarity."""
    import torch

    _check(image_concept, activations)
    n = activations.shape[0]
    top_n = int(n * top_fraction)
    if top_n < 2:
        raise ConfigError(
            f"rank_reorder needs at least 2 top images; {n} images x top_fraction "
            f"{top_fraction} gives {top_n}."
        )
    values, idx = torch.topk(activations, k=top_n, dim=0)  # [T, U], descending
    values, idx = values.T, idx.T  # [U, T]
    ascending = values.flip(1)
    # exact expectation of mean |x_i - x_perm(i)|^p over uniform random permutations
    baseline = (values[:, :, None] - values[:, None, :]).abs().pow(p).mean(dim=(1, 2))  # [U]
    u_total, c = values.shape[0], image_concept.shape[1]
    out = torch.empty((u_total, c), dtype=image_concept.dtype, device=image_concept.device)
    for u0 in range(0, u_total, unit_chunk):
        sl = slice(u0, u0 + unit_chunk)
        for c0 in range(0, c, concept_chunk):
            sims = image_concept[idx[sl], c0 : c0 + concept_chunk]  # [Uc, T, Cc]
            ranks = sims.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
            asc = ascending[sl][:, :, None].expand_as(ranks)
            reorg = torch.gather(asc, 1, ranks)
            err = (values[sl][:, :, None] - reorg).abs().pow(p).mean(1)  # [Uc, Cc]
            avg = sims.mean(1)
            out[sl, c0 : c0 + concept_chunk] = -(err / baseline[sl, None]) / avg.pow(scale_p)
    return out


SIMILARITY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "soft_wpmi": soft_wpmi,
    "wpmi": wpmi,
    "cos": cos_similarity,
    "cos_cubed": cos_similarity_cubed,
    "rank_reorder": rank_reorder,
}


def similarity(name: str, image_concept: torch.Tensor, activations: torch.Tensor, **kw: Any) -> Any:
    """The similarity function ``name`` (one of :data:`SIMILARITY_FUNCTIONS`)."""
    try:
        fn = SIMILARITY_FUNCTIONS[name]
    except KeyError:
        from bench.errors import UnknownNameError

        raise UnknownNameError("similarity function", name, SIMILARITY_FUNCTIONS) from None
    return fn(image_concept, activations, **kw)
