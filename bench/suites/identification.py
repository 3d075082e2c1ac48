"""Identification scores for the text suites: does a label pick out its own unit's references?

For each method and unit ``i``, the similarity of the unit's label to every scored unit's
references (sentence-encoder cosine, the suites' text model; each unit's references embedded and
averaged), and the rank of unit ``i``'s own references among them
(:func:`metrics.faithfulness.identification`; ties share the mean rank). Reported per unit:

* ``identification-top1``: the expected top-1 accuracy with ties broken at random
  (``1 / ties`` when no other unit's references are closer, else 0);
* ``identification-mrr``: the reciprocal of the (mean tied) rank; its mean is the MRR.

A constant label is the same row for every unit: its similarities rank the units' references once,
so over the units its ranks are a permutation of 1..U and it scores chance on average by
construction (mean top-1 ``1/U``, MRR ``H_U/U``).

With ``ceiling=True`` (``milannotations``: several annotations per unit) the inter-annotator
ceiling is computed the same way: each annotation in turn is the label, its own unit's references
are the unit's *other* annotations and every other unit's references are all of theirs; a unit's
ceiling is the mean over its annotations (units with fewer than two annotations have none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bench.schema import UnitRef
from bench.suites.base import MetricValues

if TYPE_CHECKING:
    import numpy as np

    from bench.suites.base import MethodLabels, ScoreOptions
    from metrics.text import TextEncoder


def identification_values(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(top1, reciprocal_rank)`` per row of a square ``[U, U]`` similarity (own on the
    diagonal)."""
    import numpy as np

    from metrics.faithfulness import identification

    s = np.asarray(similarity, dtype=np.float64)
    _, rr = identification(s)
    own = np.diag(s)[:, None]
    higher = (s > own).sum(axis=1)
    ties = (s == own).sum(axis=1)
    return np.where(higher == 0, 1.0 / ties, 0.0), rr


def identification_metrics(
    methods: Mapping[str, MethodLabels],
    units: Sequence[UnitRef],
    references: Mapping[UnitRef, Sequence[str]],
    *,
    options: ScoreOptions,
    device: str,
    ceiling: bool = False,
    ceiling_note: str = "",
    encoder: TextEncoder | None = None,
) -> list[MetricValues]:
    """``identification-top1`` and ``identification-mrr`` of every method over ``units`` (and the
    inter-annotator ceiling with ``ceiling=True``; see the module docstring). ``encoder``
    replaces the suites' sentence encoder (tests)."""
    import numpy as np

    from bench.suites.text import embed, encoder_for, identity

    if encoder is None:
        enc, note = encoder_for(options, device, kind="sentence")
    else:
        enc, note = encoder, ""
    refs = [list(references[u]) for u in units]
    labels = {
        name: [(j, t) for j, u in enumerate(units) if (t := m.label(u)) is not None]
        for name, m in methods.items()
    }
    texts = list(
        dict.fromkeys([t for r in refs for t in r] + [t for v in labels.values() for _, t in v])
    )
    emb = embed(enc, texts, progress=options.progress)
    where = {t: i for i, t in enumerate(texts)}
    ref_emb = np.stack([emb[[where[t] for t in r]].mean(axis=0) for r in refs])
    settings = {
        "similarity": "cosine of the label's and the mean of each unit's reference embeddings",
        "encoder": identity(enc),
        "ties": "mean rank; top-1 expected with random tie-breaking",
        "candidates": "every scored unit's references",
    }
    top1 = MetricValues(
        name="identification-top1",
        settings=dict(settings),
        comparable_with_papers=False,
        note="chance is 1/units",
    )
    mrr = MetricValues(
        name="identification-mrr",
        settings=dict(settings),
        comparable_with_papers=False,
        note="mean reciprocal rank of the unit's own references",
    )
    for name, pairs in labels.items():
        if len(pairs) < 2:
            continue
        rows = [j for j, _ in pairs]
        lab = emb[[where[t] for _, t in pairs]]
        # candidates: the references of the units this method labelled
        sim = np.clip(lab @ ref_emb[rows].T, -1.0, 1.0)
        t1, rr = identification_values(sim)
        for k, j in enumerate(rows):
            top1.values.setdefault(name, {})[units[j]] = float(t1[k])
            mrr.values.setdefault(name, {})[units[j]] = float(rr[k])
    if ceiling:
        own_sum = np.stack([emb[[where[t] for t in r]].sum(axis=0) for r in refs])
        c_top1: dict[UnitRef, list[float]] = {}
        c_rr: dict[UnitRef, list[float]] = {}
        for i, r in enumerate(refs):
            if len(r) < 2:
                continue
            a = emb[[where[t] for t in r]]  # [K, D]: each annotation as the label
            sim = a @ ref_emb.T  # [K, U]
            # own references: the unit's other annotations (leave-one-out mean)
            loo = (own_sum[i][None, :] - a) / (len(r) - 1)
            own = np.einsum("kd,kd->k", a, loo)
            others = np.delete(sim, i, axis=1)
            square = np.concatenate([own[:, None], others], axis=1)
            t1, rr = _own_first(np.clip(square, -1.0, 1.0))
            c_top1[units[i]] = [float(x) for x in t1]
            c_rr[units[i]] = [float(x) for x in rr]
        for mv, vals in ((top1, c_top1), (mrr, c_rr)):
            mv.ceiling = {u: float(np.mean(v)) for u, v in vals.items()}
            mv.ceiling_note = ceiling_note or (
                "each annotation as the label, its unit's other annotations as the unit's "
                "references"
            )
    if note:
        top1.note = mrr.note = f"{mrr.note}; {note}"
    return [top1, mrr]


def _own_first(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(top1, reciprocal_rank)`` per row of ``[K, C]`` where column 0 is the own candidate."""
    import numpy as np

    own = s[:, :1]
    higher = (s > own).sum(axis=1).astype(np.float64)
    ties = (s == own).sum(axis=1).astype(np.float64)
    rank = higher + (ties + 1.0) / 2.0
    return np.where(higher == 0, 1.0 / ties, 0.0), 1.0 / rank
