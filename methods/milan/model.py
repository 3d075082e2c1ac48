"""MILAN's captioner (Show-Attend-Tell over exemplar features) and its language model.

Shapes: ``B`` units (or training samples), ``k`` exemplars per unit, ``F`` features per exemplar
(3904 for the ResNet-50/101 pyramid), ``R`` decoding rows per unit (1 for teacher forcing and
greedy decoding, the beam width for beam search), ``V`` vocabulary ids (words + 4 specials).

The parameter names are those of the released checkpoints (``milan-<key>.pth``, see
``reference/milan-checkpoint.md``) so that ``load_state_dict`` takes them directly:

==========================  ===================================================================
``init_h.0``, ``init_c.0``  ``h0, c0 = tanh(Linear(mean_k f))``
``attend.*``                ``alpha = softmax_k(output.0(tanh(query_to_hidden(h)``
                            ``+ key_to_hidden(f_k))))``, ``A = min(H, F)`` wide unless
                            ``attention_hidden_size`` says otherwise (the original's rule)
``feature_gate.0``          ``gate = sigmoid(Linear(h))``
``lstm``                    ``h, c = LSTMCell([embedding(token); gate * sum_k alpha_k f_k])``
``output.1``                ``log p(next | ...) = log_softmax(Linear(Dropout(h)))``
                            (``output.0`` is the dropout)
==========================  ===================================================================

The language model (``lm.*`` in a released file) is a 2-layer LSTM over token embeddings
(``padding_idx=<pad>``) with a log-softmax output layer (``output.0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.milan.numerics import content_mask

if TYPE_CHECKING:
    from methods.milan.decoding import Decoded
    from methods.milan.tokenizer import Vocab

#: Elements of the attention's tanh intermediate computed at once when decoding (about 4 MiB).
_ATTENTION_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderConfig:
    """Sizes of a :class:`Decoder` (MILAN's defaults, ``src/milan/decoders.py``)."""

    vocab_size: int
    feature_size: int
    #: Token embedding size.
    embedding_size: int = 128
    #: LSTM hidden size.
    hidden_size: int = 512
    #: Attention hidden size; None means ``min(hidden_size, feature_size)``, the original's
    #: rule (:attr:`attention_size`): 512 for the released checkpoints (3904 features), the
    #: feature size when it is smaller (128 for the synthetic world's encoder).
    attention_hidden_size: int | None = None
    #: Dropout before the output layer.
    dropout: float = 0.5
    #: Most tokens a description has (decoding steps, ``<stop>`` included).
    length: int = 15

    @property
    def attention_size(self) -> int:
        """The attention's hidden width: ``attention_hidden_size`` when given, else
        ``min(hidden_size, feature_size)`` (MILAN's ``Attention``)."""
        return self.attention_hidden_size or min(self.hidden_size, self.feature_size)

    def to_json(self) -> dict[str, int | float | None]:
        return {
            "vocab_size": self.vocab_size,
            "feature_size": self.feature_size,
            "embedding_size": self.embedding_size,
            "hidden_size": self.hidden_size,
            "attention_hidden_size": self.attention_hidden_size,
            "dropout": self.dropout,
            "length": self.length,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class LanguageModelConfig:
    """Sizes of a :class:`LanguageModel` (MILAN's defaults, ``src/milan/lms.py``)."""

    vocab_size: int
    #: The ``<pad>`` id (the embedding's ``padding_idx``).
    pad_index: int
    embedding_size: int = 128
    hidden_size: int = 512
    layers: int = 2
    #: Dropout between LSTM layers.
    dropout: float = 0.5

    def to_json(self) -> dict[str, int | float]:
        return {
            "vocab_size": self.vocab_size,
            "pad_index": self.pad_index,
            "embedding_size": self.embedding_size,
            "hidden_size": self.hidden_size,
            "layers": self.layers,
            "dropout": self.dropout,
        }


class Attention(nn.Module):
    """Additive attention of a query (the LSTM state) over keys (the exemplar features)."""

    def __init__(self, query_size: int, key_size: int, hidden_size: int):
        super().__init__()
        self.query_to_hidden = nn.Linear(query_size, hidden_size)
        self.key_to_hidden = nn.Linear(key_size, hidden_size)
        self.output = nn.Sequential(nn.Linear(hidden_size, 1))

    def project_keys(self, features: Tensor) -> Tensor:
        """[B, k, F] -> [B, k, A]. Independent of the state: computed once per unit."""
        return self.key_to_hidden(features)

    def forward(self, query: Tensor, keys: Tensor, rows: Tensor | None = None) -> Tensor:
        """Weights ``alpha`` [B, R, k] (softmax over k) for queries [B, R, H], keys [B, k, A].

        ``rows`` (int64 [N], optional): indices into the flattened [B * R] rows; only those are
        computed and the other rows' weights are 0.
        """
        linear = self.output[0]
        assert isinstance(linear, nn.Linear)
        if rows is not None:
            return self._rows(query, keys, rows, linear)
        projected = self.query_to_hidden(query)
        b, r, a = projected.shape
        # The [B, R, k, A] intermediate of beam search (50 rows x 15 exemplars per unit) is large:
        # without gradients it is built a few units at a time so that it stays in cache.
        chunk = (
            b if torch.is_grad_enabled() else max(1, _ATTENTION_CHUNK // (r * keys.shape[1] * a))
        )
        scores = []
        for lo in range(0, b, chunk):
            hidden = projected[lo : lo + chunk].unsqueeze(2) + keys[lo : lo + chunk].unsqueeze(1)
            scores.append(F.linear(torch.tanh(hidden), linear.weight, linear.bias).squeeze(-1))
        return torch.softmax(torch.cat(scores) if len(scores) > 1 else scores[0], dim=-1)

    def _rows(self, query: Tensor, keys: Tensor, rows: Tensor, linear: nn.Linear) -> Tensor:
        b, r, _ = query.shape
        k, a = keys.shape[1], keys.shape[2]
        projected = self.query_to_hidden(query.reshape(b * r, -1)[rows])  # [N, A]
        unit = torch.div(rows, r, rounding_mode="floor")
        n = rows.shape[0]
        chunk = n if torch.is_grad_enabled() else max(1, _ATTENTION_CHUNK // (k * a))
        scores = []
        for lo in range(0, n, chunk):
            hidden = keys.index_select(0, unit[lo : lo + chunk])  # [n, k, A], a fresh tensor
            hidden = hidden.add_(projected[lo : lo + chunk].unsqueeze(1)).tanh_()
            scores.append(F.linear(hidden, linear.weight, linear.bias).squeeze(-1))
        alpha = torch.softmax(torch.cat(scores) if len(scores) > 1 else scores[0], dim=-1)
        return alpha.new_zeros(b * r, k).index_copy_(0, rows, alpha).reshape(b, r, k)


class Decoder(nn.Module):
    """Show-Attend-Tell over the k exemplar feature vectors of a unit."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        feats, hidden = config.feature_size, config.hidden_size
        attention = config.attention_size
        self.init_h = nn.Sequential(nn.Linear(feats, hidden), nn.Tanh())
        self.init_c = nn.Sequential(nn.Linear(feats, hidden), nn.Tanh())
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.attend = Attention(hidden, feats, attention)
        self.feature_gate = nn.Sequential(nn.Linear(hidden, feats), nn.Sigmoid())
        self.lstm = nn.LSTMCell(config.embedding_size + feats, hidden)
        self.output = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(hidden, config.vocab_size)
        )

    def _check_features(self, features: Tensor) -> None:
        if features.dim() != 3 or features.shape[-1] != self.config.feature_size:
            raise ValueError(
                f"Expected features [B, k, {self.config.feature_size}], got {list(features.shape)}"
            )

    def initial_state(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(h0, c0)``, each [B, 1, H], from the mean exemplar feature [B, k, F]."""
        mean = features.mean(dim=1)
        return self.init_h(mean).unsqueeze(1), self.init_c(mean).unsqueeze(1)

    def step(
        self,
        tokens: Tensor,
        h: Tensor,
        c: Tensor,
        features: Tensor,
        keys: Tensor,
        active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One decoding step for R rows per unit.

        tokens: int64 [B, R] (the previous token), h, c: [B, R, H], features: [B, k, F],
        keys: ``attend.project_keys(features)`` [B, k, A].
        Returns ``(log p(next token) [B, R, V], h [B, R, H], c [B, R, H], alpha [B, R, k])``.

        ``active`` (bool [B, R], optional): the rows to compute. The attention, the feature gate,
        the LSTM cell and the output layer run on those rows only; the other rows get
        log-probs 0, attention weights 0 and keep their ``h``, ``c``. Decoding passes the rows whose
        beam has not emitted ``<stop>``: a finished beam's next log-probs are overridden by the
        search, so computing them is wasted work (most beams of a trained model finish early).
        """
        b, r = tokens.shape
        rows = None
        if active is not None and not bool(active.all()):
            rows = active.reshape(-1).nonzero().squeeze(1)
            if rows.numel() == 0:
                logp = h.new_zeros(b, r, self.config.vocab_size)
                return logp, h, c, h.new_zeros(b, r, features.shape[1])
        alpha = self.attend(h, keys, rows)
        attended = torch.bmm(alpha, features)  # [B, R, F]; inactive rows are 0
        h_flat, c_flat = h.reshape(b * r, -1), c.reshape(b * r, -1)
        if rows is None:
            h_in, c_in, tok, att = h_flat, c_flat, tokens.reshape(-1), attended.reshape(b * r, -1)
        else:
            h_in, c_in = h_flat[rows], c_flat[rows]
            tok, att = tokens.reshape(-1)[rows], attended.reshape(b * r, -1)[rows]
        gated = self.feature_gate(h_in) * att
        inputs = torch.cat([self.embedding(tok), gated], dim=-1)
        h2, c2 = self.lstm(inputs, (h_in, c_in))
        logp = F.log_softmax(self.output(h2), dim=-1)
        if rows is not None:
            logp = logp.new_zeros(b * r, logp.shape[-1]).index_copy_(0, rows, logp)
            h2 = h_flat.index_copy(0, rows, h2)
            c2 = c_flat.index_copy(0, rows, c2)
        return logp.reshape(b, r, -1), h2.reshape(b, r, -1), c2.reshape(b, r, -1), alpha

    def forward(self, features: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: ``(log-probs [B, T, V], alpha [B, T, k])`` with ``T = L - 1``.

        tokens: int64 [B, L], ``<start>`` first; step t reads ``tokens[:, t]`` and predicts
        ``tokens[:, t + 1]``. Every step is run for every row, also after ``<stop>``.
        """
        self._check_features(features)
        if tokens.dim() != 2 or tokens.shape[0] != features.shape[0] or tokens.shape[1] < 2:
            raise ValueError(
                f"Expected tokens [{features.shape[0]}, L >= 2], got {list(tokens.shape)}"
            )
        h, c = self.initial_state(features)
        keys = self.attend.project_keys(features)
        logps, alphas = [], []
        for t in range(tokens.shape[1] - 1):
            logp, h, c, alpha = self.step(tokens[:, t : t + 1], h, c, features, keys)
            logps.append(logp[:, 0])
            alphas.append(alpha[:, 0])
        return torch.stack(logps, dim=1), torch.stack(alphas, dim=1)

    def loss(
        self, features: Tensor, tokens: Tensor, *, pad: int, penalty_weight: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, nll, penalty)``, with ``total = nll + penalty_weight * penalty`` (MILAN).

        ``nll``: mean negative log-likelihood over the target positions ``tokens[:, 1:]`` that
        are not ``<pad>`` (``NLLLoss(ignore_index=pad)``; ``<stop>`` is a target).
        ``penalty``: the doubly-stochastic attention regulariser ``mean_{b,i} (1 - sum_t
        alpha[b, t, i])^2``, where the sum runs over ALL ``T = L - 1`` steps that are run,
        including those after ``<stop>`` whose targets are ``<pad>``, as the original runs every
        step of the padded batch. :func:`methods.milan.train.train_decoder` pads every caption to
        the fixed length ``length + 1``, so T = ``length`` and the penalty does not depend on how
        captions are batched.
        """
        logp, alpha = self(features, tokens)
        targets = tokens[:, 1:]
        nll = F.nll_loss(logp.reshape(-1, logp.shape[-1]), targets.reshape(-1), ignore_index=pad)
        penalty = ((1.0 - alpha.sum(dim=1)) ** 2).mean()
        return nll + penalty_weight * penalty, nll, penalty


class LanguageModel(nn.Module):
    """``p(d)``: a 2-layer LSTM language model over token ids."""

    def __init__(self, config: LanguageModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(
            config.vocab_size, config.embedding_size, padding_idx=config.pad_index
        )
        self.lstm = nn.LSTM(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.output = nn.Sequential(nn.Linear(config.hidden_size, config.vocab_size))

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token log-probs [B, L, V] for tokens int64 [B, L]: position t predicts t + 1."""
        hidden, _ = self.lstm(self.embedding(tokens))
        return F.log_softmax(self.output(hidden), dim=-1)

    def token_logprobs(self, tokens: Tensor) -> Tensor:
        """[B, L - 1]: ``log p(tokens[:, t] | tokens[:, :t])`` for t >= 1."""
        logp = self(tokens[:, :-1])
        return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)

    def sequence_logprob(self, tokens: Tensor, *, stop: int, pad: int | None = None) -> Tensor:
        """[B]: ``log p(d)`` of ``<start> d``, summed over the tokens after ``<start>``.

        tokens: int64 [B, L] with ``<start>`` first. Tokens after the first ``<stop>`` are
        masked out (the ``<stop>`` itself counts); ``<pad>`` tokens are masked too.
        """
        lp = self.token_logprobs(tokens)
        mask = content_mask(tokens[:, 1:], stop=stop, pad=pad)
        return lp.masked_fill(~mask, 0.0).sum(dim=1)

    def loss(self, tokens: Tensor, *, pad: int) -> Tensor:
        """Mean NLL over the target positions ``tokens[:, 1:]`` that are not ``<pad>``."""
        logp = self(tokens[:, :-1])
        return F.nll_loss(
            logp.reshape(-1, logp.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=pad
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DecodingDefaults:
    """How a model decodes unless told otherwise (MILAN's defaults)."""

    #: One of :data:`methods.milan.decoding.STRATEGIES`.
    strategy: str = "rerank"
    #: lambda of the weighted PMI ``log p(d|E) - lambda log p(d)``.
    temperature: float = 0.2
    beam_size: int = 50

    def to_json(self) -> dict[str, str | float | int]:
        return {
            "strategy": self.strategy,
            "temperature": self.temperature,
            "beam_size": self.beam_size,
        }


@dataclass(frozen=True, kw_only=True)
class MilanModel:
    """A trained MILAN: vocabulary, decoder, language model, and how to encode and decode.

    ``lm_token_map`` (int64 [V]) maps decoder ids to language-model ids when the LM was built
    with another vocabulary (``lm_vocab``); None when they share ``vocab``. ``encoder_config``
    says which pyramid encoder produced the features the decoder was trained on.
    """

    vocab: Vocab
    decoder: Decoder
    lm: LanguageModel | None
    decoding: DecodingDefaults = DecodingDefaults()
    encoder_config: dict[str, Any] = field(default_factory=dict)
    lm_vocab: Vocab | None = None
    lm_token_map: Tensor | None = None
    source: str = ""

    def describe(
        self,
        features: Tensor,
        *,
        strategy: str | None = None,
        beam_size: int | None = None,
        temperature: float | None = None,
        batch_size: int = 64,
        allow_empty: bool = False,
        progress: bool = False,
    ) -> list[Decoded]:
        """Descriptions of N units from exemplar features [N, k, F] (defaults: ``decoding``)."""
        from methods.milan.decoding import decode

        return decode(
            self.decoder,
            features,
            self.vocab,
            lm=self.lm,
            strategy=strategy or self.decoding.strategy,
            beam_size=beam_size or self.decoding.beam_size,
            temperature=self.decoding.temperature if temperature is None else temperature,
            batch_size=batch_size,
            lm_token_map=self.lm_token_map,
            allow_empty=allow_empty,
            progress=progress,
        )


def token_map(vocab: Vocab, lm_vocab: Vocab) -> Tensor | None:
    """int64 [len(vocab)]: each decoder id's id in ``lm_vocab`` (``<unk>`` when absent);
    None when the vocabularies are the same."""
    if vocab == lm_vocab:
        return None
    ids = [lm_vocab.id(t) for t in vocab.tokens]
    ids += [lm_vocab.start, lm_vocab.stop, lm_vocab.pad, lm_vocab.unk]
    return torch.tensor(ids, dtype=torch.long)
