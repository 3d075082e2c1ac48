"""Decoding descriptions from a :class:`~methods.milan.model.Decoder`, batched over units.

Strategies (MILAN ``Decoder.predict``; ``reference/methods.md`` 1.6):

- ``"rerank"`` (the default, the paper's weighted PMI): beam search (beam 50, at most 15 steps)
  on ``log p(d | E)``, then every final beam is rescored as
  ``log p(d | E) - temperature * log p_LM(<start> d)`` (temperature 0.2) and the best is kept.
- ``"beam"``: the same beam search, keeping its best beam (the ``p(d | E)`` captioning ablation).
- ``"greedy"``: the arg-max token at every step (the original's validation decoding for BLEU and
  its "no PMI" baseline).

The beam search follows AllenNLP 2.10's ``BeamSearch`` with the deterministic sampler, as the
original calls it: the first step keeps the ``beam_size`` best tokens; each later step expands
every beam by its ``per_node_beam_size`` (= ``beam_size``) best tokens and keeps the
``beam_size`` best sums; a beam that has emitted ``<stop>`` can only emit ``<stop>`` again at
log-prob 0 (every other token gets the dtype's lowest finite value); the search ends when every
beam of every unit has stopped or after ``max_steps`` tokens; scores are summed log-probs without
length normalisation, sorted best first. Ties go to ``torch.topk``'s order, as in AllenNLP.

Batching: all units of a batch and all their beams advance in one tensor pass per step. The
exemplar features [B, k, F] and their attention keys are held once per unit (not copied per
beam); only the LSTM state [B, beam, H] is reordered by the back-pointers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError
from bench.progress import progress_bar
from methods.milan.numerics import content_mask, flush_denormals

if TYPE_CHECKING:
    from methods.milan.model import Decoder, LanguageModel
    from methods.milan.tokenizer import Vocab

#: Decoding strategies, the default first.
STRATEGIES = ("rerank", "beam", "greedy")

State = tuple[Tensor, ...]
#: ``step(last_tokens [B, R], state, t) -> (log-probs [B, R, V], new state)``; every state
#: tensor has the leading dimensions [B, R].
StepFn = Callable[[Tensor, State, int], tuple[Tensor, State]]


@dataclass(frozen=True, slots=True)
class Beams:
    """Final beams of a batch of units.

    tokens: int64 [B, W, T], the tokens after ``<start>``; after a beam's ``<stop>`` the row
    holds ``<stop>``. logp: [B, W], summed log-probs, best first.
    """

    tokens: Tensor
    logp: Tensor


@dataclass(frozen=True, slots=True)
class Decoded:
    """One unit's description.

    ``tokens``: word ids, cut before ``<stop>``. ``logp``: ``log p(d | E)`` summed over the
    emitted tokens (``<stop>`` included when emitted). ``lm_logp``: ``log p(d)`` under the
    language model (``"rerank"`` only). ``score``: what the strategy maximised
    (``logp - temperature * lm_logp`` for ``"rerank"``, ``logp`` otherwise).
    """

    tokens: tuple[int, ...]
    text: str
    logp: float
    lm_logp: float | None
    score: float


def _reorder(state: State, rows: Tensor) -> State:
    """Gather rows [B, R'] (indices into the current R) of every state tensor."""
    batch = torch.arange(rows.shape[0], device=rows.device).unsqueeze(1)
    return tuple(s[batch, rows] for s in state)


def beam_search(
    step: StepFn,
    state: State,
    *,
    batch_size: int,
    start: int,
    stop: int,
    beam_size: int,
    max_steps: int,
    per_node_beam_size: int | None = None,
    device: torch.device | str | None = None,
) -> Beams:
    """AllenNLP 2.10 beam search (deterministic sampler, summed log-probs) for B units at once.

    ``state`` tensors start with one row per unit ([B, 1, ...]). With a vocabulary smaller than
    the beam, the first step keeps every token and the beam widens as candidates allow.
    """
    if beam_size < 1 or max_steps < 1:
        raise ValueError(f"Expected beam_size, max_steps >= 1, got {beam_size}, {max_steps}")
    per_node = per_node_beam_size or beam_size
    b = batch_size
    last = torch.full((b, 1), start, dtype=torch.long, device=device)
    logp, state = step(last, state, 0)
    vocab_size = logp.shape[-1]
    width = min(beam_size, vocab_size)
    scores, last = logp[:, 0].topk(width, dim=-1)
    state = _reorder(state, torch.zeros((b, width), dtype=torch.long, device=last.device))
    predictions, backpointers = [last], []
    after_stop: Tensor | None = None
    for t in range(1, max_steps):
        finished = last == stop
        if bool(finished.all()):
            break
        logp, new_state = step(last, state, t)
        if bool(finished.any()):
            if after_stop is None:
                after_stop = torch.full_like(logp[0, 0], torch.finfo(logp.dtype).min)
                after_stop[stop] = 0.0
            logp = torch.where(finished.unsqueeze(-1), after_stop, logp)
        top_logp, top_tokens = logp.topk(min(per_node, vocab_size), dim=-1)  # [B, R, n]
        n = top_logp.shape[-1]
        summed = (scores.unsqueeze(-1) + top_logp).reshape(b, -1)
        scores, chosen = summed.topk(min(beam_size, summed.shape[1]), dim=-1)
        back = torch.div(chosen, n, rounding_mode="floor")
        last = top_tokens.reshape(b, -1).gather(1, chosen)
        state = _reorder(new_state, back)
        predictions.append(last)
        backpointers.append(back)
    # Follow the back-pointers from the last step to the first.
    columns = [predictions[-1]]
    rows = backpointers[-1] if backpointers else None
    for t in range(len(predictions) - 2, -1, -1):
        assert rows is not None
        columns.append(predictions[t].gather(1, rows))
        if t > 0:
            rows = backpointers[t - 1].gather(1, rows)
    tokens = torch.stack(columns[::-1], dim=2)
    return Beams(tokens=tokens, logp=scores)


def greedy_search(
    step: StepFn,
    state: State,
    *,
    batch_size: int,
    start: int,
    stop: int,
    max_steps: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Arg-max decoding: ``(tokens int64 [B, T], logp [B])``; rows hold ``<stop>`` after it."""
    last = torch.full((batch_size, 1), start, dtype=torch.long, device=device)
    done = torch.zeros((batch_size, 1), dtype=torch.bool, device=device)
    total: Tensor | None = None
    out = []
    for t in range(max_steps):
        logp, state = step(last, state, t)
        best_logp, best = logp.max(dim=-1)  # [B, 1]
        best = torch.where(done, torch.full_like(best, stop), best)
        best_logp = best_logp.masked_fill(done, 0.0)
        total = best_logp if total is None else total + best_logp
        out.append(best)
        last = best
        done = done | (best == stop)
        if bool(done.all()):
            break
    assert total is not None
    return torch.cat(out, dim=1), total[:, 0]


def decoder_step(
    decoder: Decoder, features: Tensor, *, stop: int | None = None
) -> tuple[StepFn, State]:
    """The step function and initial state of ``decoder`` for exemplar features [B, k, F].

    With ``stop``, rows whose previous token is ``stop`` are not computed (log-probs 0, state
    carried; :meth:`Decoder.step`): :func:`beam_search` and :func:`greedy_search` override a
    finished row's log-probs, so the result is the same and the work shrinks as beams finish.
    """
    keys = decoder.attend.project_keys(features)

    def step(tokens: Tensor, state: State, t: int) -> tuple[Tensor, State]:
        active = None if stop is None else tokens != stop
        logp, h, c, _ = decoder.step(tokens, state[0], state[1], features, keys, active)
        return logp, (h, c)

    return step, decoder.initial_state(features)


def lm_logprob(
    lm: LanguageModel,
    tokens: Tensor,
    *,
    start: int,
    stop: int,
    token_map: Tensor | None = None,
) -> Tensor:
    """[...]: ``log p_LM(<start> tokens)`` for tokens int64 [..., T] (ids of the decoder).

    The same value as :meth:`LanguageModel.sequence_logprob` (summed after ``<start>``, masked
    after the first ``<stop>``), computed over the prefix tree of the sequences: beams share
    most of their prefixes (and units often share first words), so each distinct prefix is run
    through the LSTM once, and nothing after a sequence's ``<stop>`` is computed.

    ``token_map`` (int64 [V_decoder]) translates decoder ids to the LM's ids when the two
    vocabularies differ; ``start``/``stop`` are decoder ids either way.
    """
    lead = tokens.shape[:-1]
    flat = tokens.reshape(-1, tokens.shape[-1])
    if token_map is not None:
        token_map = token_map.to(flat.device)
        flat = token_map[flat]
        start, stop = int(token_map[start]), int(token_map[stop])
    n, steps = flat.shape
    vocab_size = lm.config.vocab_size
    param = next(lm.parameters())
    shape = (lm.config.layers, 1, lm.config.hidden_size)
    h = torch.zeros(shape, dtype=param.dtype, device=param.device)
    c = torch.zeros_like(h)
    total = torch.zeros(n, dtype=param.dtype, device=flat.device)
    node = torch.zeros(n, dtype=torch.long, device=flat.device)  # row -> its prefix's state
    inputs = torch.full((n,), start, dtype=torch.long, device=flat.device)
    rows = torch.arange(n, device=flat.device)
    for t in range(steps):
        if rows.numel() == 0:
            break
        # A prefix is (the state it extends, the token it reads): run each distinct one once.
        unique, inverse = torch.unique(node[rows] * vocab_size + inputs[rows], return_inverse=True)
        parent, token = unique // vocab_size, unique % vocab_size
        out, (h, c) = lm.lstm(lm.embedding(token).unsqueeze(1), (h[:, parent], c[:, parent]))
        logp = F.log_softmax(lm.output(out[:, 0]), dim=-1)
        targets = flat[rows, t]
        total[rows] += logp[inverse, targets].to(total.dtype)
        node[rows] = inverse
        inputs[rows] = targets
        rows = rows[targets != stop]
    return total.reshape(lead)


def rerank_scores(
    beams: Beams,
    lm: LanguageModel,
    *,
    temperature: float,
    start: int,
    stop: int,
    token_map: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(scores [B, W], lm_logp [B, W])`` with ``scores = beams.logp - temperature * lm_logp``.

    MILAN's weighted PMI: ``log p(d | E) - lambda log p(d)``, lambda = ``temperature``.
    """
    lm_lp = lm_logprob(lm, beams.tokens, start=start, stop=stop, token_map=token_map)
    lm_lp = lm_lp.to(beams.logp.dtype)
    return beams.logp - temperature * lm_lp, lm_lp


def rerank(
    beams: Beams,
    lm: LanguageModel,
    *,
    temperature: float,
    start: int,
    stop: int,
    token_map: Tensor | None = None,
    words: int | None = None,
) -> Tensor:
    """int64 [B]: the index of the best beam of each unit after reranking (first on ties).

    ``words``: see :func:`choose` (None: an empty beam may win, as in the original code).
    """
    scores, _ = rerank_scores(
        beams, lm, temperature=temperature, start=start, stop=stop, token_map=token_map
    )
    return choose(scores, beams.tokens, stop=stop, words=words)


def has_words(tokens: Tensor, *, stop: int, words: int) -> Tensor:
    """bool [...]: whether each sequence int64 [..., T] holds a word (an id below ``words``, the
    number of non-special tokens) before its first ``stop``."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    found = (flat < words) & content_mask(flat, stop=stop)
    return found.any(dim=1).reshape(tokens.shape[:-1])


def choose(scores: Tensor, tokens: Tensor, *, stop: int, words: int | None) -> Tensor:
    """int64 [B]: the best of each unit's W beams by ``scores`` [B, W] (first on ties).

    With ``words`` (the vocabulary's number of non-special tokens), beams without a word are
    passed over unless all of a unit's beams are empty: weighted PMI rewards sequences the
    language model finds unlikely, and ``<stop>`` right after ``<start>`` is one it never saw,
    so the empty beam can win the rerank (the original code lets it; see the README).
    """
    best = scores.argmax(dim=1)
    if words is None:
        return best
    ok = has_words(tokens, stop=stop, words=words)
    among = scores.masked_fill(~ok, float("-inf")).argmax(dim=1)
    return torch.where(ok.any(dim=1), among, best)


def _cut(tokens: Tensor, stop: int) -> tuple[int, ...]:
    out = []
    for t in tokens.tolist():
        if t == stop:
            break
        out.append(int(t))
    return tuple(out)


def decode(
    decoder: Decoder,
    features: Tensor,
    vocab: Vocab,
    *,
    lm: LanguageModel | None = None,
    strategy: str = "rerank",
    beam_size: int = 50,
    temperature: float = 0.2,
    max_steps: int | None = None,
    batch_size: int = 64,
    lm_token_map: Tensor | None = None,
    allow_empty: bool = False,
    progress: bool = False,
) -> list[Decoded]:
    """Describe N units from their exemplar features [N, k, F], ``batch_size`` units at a time.

    ``max_steps`` defaults to the decoder's ``length`` (15). Models are used in eval mode
    (dropout off) and their previous mode is restored afterwards. Beam strategies keep the best
    beam that has a word; ``allow_empty=True`` keeps the best beam even when it is empty, as the
    original code does (:func:`choose`).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"Unknown MILAN decoding strategy '{strategy}'. Expected one of {list(STRATEGIES)}."
        )
    if strategy == "rerank" and lm is None:
        raise ConfigError(
            "MILAN strategy 'rerank' needs a language model (lm=...); pass one or use "
            "strategy 'beam'."
        )
    if features.dim() != 3:
        raise ValueError(f"Expected features [N, k, F], got {list(features.shape)}")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
    steps = max_steps or decoder.config.length
    param = next(decoder.parameters())
    modes = [(m, m.training) for m in (decoder, lm) if m is not None]
    out: list[Decoded] = []
    try:
        for m, _ in modes:
            m.eval()
        with (
            torch.inference_mode(),
            flush_denormals(),
            progress_bar(total=features.shape[0], desc="MILAN decoding", enabled=progress) as bar,
        ):
            for lo in range(0, features.shape[0], batch_size):
                chunk = features[lo : lo + batch_size].to(device=param.device, dtype=param.dtype)
                out.extend(
                    _decode_batch(
                        decoder,
                        chunk,
                        vocab,
                        lm=lm,
                        strategy=strategy,
                        beam_size=beam_size,
                        temperature=temperature,
                        max_steps=steps,
                        lm_token_map=lm_token_map,
                        allow_empty=allow_empty,
                    )
                )
                bar.update(chunk.shape[0])
    finally:
        for m, mode in modes:
            m.train(mode)
    return out


def _decode_batch(
    decoder: Decoder,
    features: Tensor,
    vocab: Vocab,
    *,
    lm: LanguageModel | None,
    strategy: str,
    beam_size: int,
    temperature: float,
    max_steps: int,
    lm_token_map: Tensor | None,
    allow_empty: bool,
) -> list[Decoded]:
    b = features.shape[0]
    step, state = decoder_step(decoder, features, stop=vocab.stop)
    if strategy == "greedy":
        tokens, logp = greedy_search(
            step, state, batch_size=b, start=vocab.start, stop=vocab.stop, max_steps=max_steps,
            device=features.device,
        )  # fmt: skip
        return [_decoded(tokens[i], vocab, float(logp[i]), None, float(logp[i])) for i in range(b)]
    beams = beam_search(
        step, state, batch_size=b, start=vocab.start, stop=vocab.stop, beam_size=beam_size,
        max_steps=max_steps, device=features.device,
    )  # fmt: skip
    words = None if allow_empty else len(vocab.tokens)
    if strategy == "beam":
        best = choose(beams.logp, beams.tokens, stop=vocab.stop, words=words)
        return [
            _decoded(
                beams.tokens[i, j], vocab, float(beams.logp[i, j]), None, float(beams.logp[i, j])
            )
            for i, j in enumerate(best.tolist())
        ]
    assert lm is not None
    scores, lm_lp = rerank_scores(
        beams,
        lm,
        temperature=temperature,
        start=vocab.start,
        stop=vocab.stop,
        token_map=lm_token_map,
    )
    best = choose(scores, beams.tokens, stop=vocab.stop, words=words)
    result = []
    for i in range(b):
        j = int(best[i])
        result.append(
            _decoded(
                beams.tokens[i, j],
                vocab,
                float(beams.logp[i, j]),
                float(lm_lp[i, j]),
                float(scores[i, j]),
            )
        )
    return result


def _decoded(
    tokens: Tensor, vocab: Vocab, logp: float, lm_logp: float | None, score: float
) -> Decoded:
    ids = _cut(tokens, vocab.stop)
    return Decoded(tokens=ids, text=vocab.reconstruct(ids), logp=logp, lm_logp=lm_logp, score=score)
