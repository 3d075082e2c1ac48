"""Training MILAN's decoder and language model (``Decoder.fit``, ``LanguageModel.fit``).

Decoder (reference/methods.md 1.5): AdamW (lr 1e-3, weight decay 1e-2), batches of 64, one
sample per annotation, teacher forcing, loss = NLL (ignoring ``<pad>``) + 1.0 x the
doubly-stochastic attention penalty (:meth:`methods.milan.model.Decoder.loss` says exactly which
steps count), 10% of the *units* held out (seeded), early stopping on the held-out units' corpus
BLEU (sacrebleu; greedy decoding; predictions and references lower-cased and stripped of
``". "``) with patience 4, at most 100 epochs, and the best epoch's weights restored.

Language model: AdamW, batches of 128, early stopping on validation NLL with patience 4.

Early stopping is the original's: after the best epoch, training continues until ``patience + 1``
epochs in a row have not improved on it (``num_bad > patience``); improvements are strict.

Runs are deterministic for a given seed: the global torch RNG is forked (the caller's stream is
left untouched) and seeded, and the shuffling uses its own seeded generator.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError, DataError
from bench.progress import progress_bar
from methods.milan.model import (
    Decoder,
    DecoderConfig,
    DecodingDefaults,
    LanguageModel,
    LanguageModelConfig,
    MilanModel,
)
from methods.milan.tokenizer import Vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderTrainingConfig:
    """Decoder sizes and optimisation (MILAN's defaults)."""

    embedding_size: int = 128
    hidden_size: int = 512
    attention_hidden_size: int | None = None
    dropout: float = 0.5
    #: Most tokens per description (``<stop>`` included); captions are truncated to fit.
    length: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 100
    #: Epochs without a better validation BLEU tolerated (the stop comes at ``patience + 1``).
    patience: int = 4
    #: Weight of the doubly-stochastic attention penalty.
    penalty_weight: float = 1.0
    #: Fraction of units held out for validation (split by unit).
    hold_out: float = 0.1
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True, slots=True)
class LMTrainingConfig:
    """Language-model sizes and optimisation (MILAN's defaults)."""

    embedding_size: int = 128
    hidden_size: int = 512
    layers: int = 2
    dropout: float = 0.5
    length: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 4
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochRecord:
    epoch: int
    #: Mean training loss over the epoch's batches (for the decoder: NLL + penalty).
    train_loss: float
    #: The validation value early stopping watches (BLEU 0-100, or NLL per token).
    val_metric: float
    seconds: float
    train_nll: float | None = None
    train_penalty: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class History:
    """Per-epoch records, the restored epoch, and whether early stopping ended the run."""

    metric: str
    epochs: tuple[EpochRecord, ...]
    best_epoch: int
    best_value: float
    stopped_early: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "stopped_early": self.stopped_early,
            "epochs": [{f: getattr(r, f) for f in r.__dataclass_fields__} for r in self.epochs],
        }


class EarlyStopping:
    """MILAN's ``EarlyStopping``: keeps the best value and a copy of the best state; ``update``
    returns True once ``patience + 1`` consecutive values failed to improve strictly on it."""

    def __init__(self, patience: int, *, decreasing: bool):
        if patience < 0:
            raise ValueError(f"Expected patience >= 0, got {patience}")
        self.patience = patience
        self.decreasing = decreasing
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.num_bad = 0

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.decreasing else value > self.best

    def update(self, value: float, epoch: int, module: nn.Module) -> bool:
        if self.improves(value):
            self.best, self.best_epoch, self.num_bad = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.num_bad += 1
        return self.num_bad > self.patience

    def restore(self, module: nn.Module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def split_units(n_units: int, hold_out: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train, validation)`` unit indices, sorted: a seeded random ``hold_out`` fraction
    (rounded, at least 1 and at most ``n_units - 1``) is held out."""
    if not 0 < hold_out < 1:
        raise ConfigError(f"Expected 0 < hold_out < 1, got {hold_out}.")
    if n_units < 2:
        raise DataError(f"Expected at least 2 annotated units to hold some out, got {n_units}.")
    n_val = min(max(1, round(hold_out * n_units)), n_units - 1)
    order = np.random.default_rng(seed).permutation(n_units)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-100) as MILAN computes it (``src/utils/metrics.py``).

    Texts are lower-cased and stripped of ``". "``; the references of each prediction are
    positional streams (``zip(*refs)``), so only as many streams as the smallest reference count.
    """
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(
            f"Expected one reference list per prediction, got {len(predictions)} predictions "
            f"and {len(references)} reference lists"
        )
    if any(len(r) == 0 for r in references):
        raise DataError("Expected every validation unit to have at least one reference caption.")
    preds = [p.lower().strip(". ") for p in predictions]
    normalised = [[r.lower().strip(". ") for r in rs] for rs in references]
    streams = [list(s) for s in zip(*normalised, strict=False)]  # truncates, as the original
    return float(sacrebleu.corpus_bleu(preds, streams).score)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    from methods.milan.numerics import flush_denormals

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), flush_denormals():
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_captions(captions: Sequence[Sequence[str]], n_units: int) -> None:
    if len(captions) != n_units:
        raise DataError(
            f"Expected one list of captions per unit ({n_units}), got {len(captions)} lists."
        )
    for i, caps in enumerate(captions):
        if isinstance(caps, str):
            raise DataError(f"Expected a list of captions for unit {i}, got a string.")


def _loop(
    *,
    what: str,
    max_epochs: int,
    patience: int,
    decreasing: bool,
    module: nn.Module,
    train_epoch: Callable[[], tuple[float, float | None, float | None]],
    validate: Callable[[], float],
    metric: str,
    progress: bool,
) -> History:
    stopper = EarlyStopping(patience, decreasing=decreasing)
    records: list[EpochRecord] = []
    stopped = False
    with progress_bar(total=max_epochs, desc=what, enabled=progress, unit="epoch") as bar:
        for epoch in range(1, max_epochs + 1):
            began = time.perf_counter()
            loss, nll, penalty = train_epoch()
            value = validate()
            records.append(
                EpochRecord(
                    epoch=epoch,
                    train_loss=loss,
                    val_metric=value,
                    seconds=time.perf_counter() - began,
                    train_nll=nll,
                    train_penalty=penalty,
                )
            )
            stop = stopper.update(value, epoch, module)
            log.info(
                "%s epoch %d: train loss %.4f, %s %.4f (best %.4f at epoch %d)",
                what, epoch, loss, metric, value, stopper.best, stopper.best_epoch,
            )  # fmt: skip
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.3f} {metric} {value:.3f}")
            if stop:
                stopped = True
                break
    stopper.restore(module)
    return History(
        metric=metric,
        epochs=tuple(records),
        best_epoch=stopper.best_epoch,
        best_value=float("nan") if stopper.best is None else float(stopper.best),
        stopped_early=stopped,
    )


def greedy_texts(
    decoder: Decoder, features: Tensor, vocab: Vocab, *, batch_size: int = 64
) -> list[str]:
    """Greedy descriptions (the original's validation decoding) of units [N, k, F]."""
    from methods.milan.decoding import decode

    return [
        d.text for d in decode(decoder, features, vocab, strategy="greedy", batch_size=batch_size)
    ]


def train_decoder(
    features: Tensor,
    captions: Sequence[Sequence[str]],
    vocab: Vocab,
    config: DecoderTrainingConfig = DecoderTrainingConfig(),
    *,
    val_units: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Decoder, History]:
    """Train a decoder on units' exemplar features [N, k, F] and their captions.

    ``captions[i]`` lists unit i's annotations; each is one training sample. ``val_units``
    (indices) are held out for early stopping; by default :func:`split_units` picks
    ``config.hold_out`` of the units with ``config.seed``. Returns the decoder with the weights
    of its best validation epoch (in eval mode) and the history.
    """
    if features.dim() != 3:
        raise ValueError(f"Expected features [N, k, F], got {list(features.shape)}")
    n = features.shape[0]
    _check_captions(captions, n)
    if val_units is None:
        train_units, val = split_units(n, config.hold_out, config.seed)
    else:
        val = sorted(set(int(u) for u in val_units))
        if not val or val[0] < 0 or val[-1] >= n or len(val) == n:
            raise ConfigError(
                f"Expected validation units among 0..{n - 1}, leaving some for training; got "
                f"{len(val)} units."
            )
        train_units = [u for u in range(n) if u not in set(val)]
    samples = [(u, c) for u in train_units for c in captions[u]]
    if not samples:
        raise DataError("Expected captions for the training units, found none.")
    dev = torch.device(device)
    unit_index = torch.tensor([u for u, _ in samples], dtype=torch.long)
    tokens = vocab.encode_batch([c for _, c in samples], length=config.length)
    features = features.float()
    val_features = features[val]
    val_refs = [list(captions[u]) for u in val]

    with _seeded(config.seed, dev) as generator:
        decoder = Decoder(
            DecoderConfig(
                vocab_size=len(vocab),
                feature_size=features.shape[-1],
                embedding_size=config.embedding_size,
                hidden_size=config.hidden_size,
                attention_hidden_size=config.attention_hidden_size,
                dropout=config.dropout,
                length=config.length,
            )
        ).to(dev)
        optimizer = torch.optim.AdamW(
            decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

        def train_epoch() -> tuple[float, float | None, float | None]:
            decoder.train()
            totals = np.zeros(3)
            batches = _batches(len(samples), config.batch_size, generator)
            for rows in batches:
                feats = features[unit_index[rows]].to(dev)
                loss, nll, penalty = decoder.loss(
                    feats,
                    tokens[rows].to(dev),
                    pad=vocab.pad,
                    penalty_weight=config.penalty_weight,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals += [loss.item(), nll.item(), penalty.item()]
            mean = totals / len(batches)
            return float(mean[0]), float(mean[1]), float(mean[2])

        def validate() -> float:
            return corpus_bleu(greedy_texts(decoder, val_features, vocab), val_refs)

        history = _loop(
            what="MILAN decoder",
            max_epochs=config.max_epochs,
            patience=config.patience,
            decreasing=False,
            module=decoder,
            train_epoch=train_epoch,
            validate=validate,
            metric="val_bleu",
            progress=progress,
        )
    return decoder.eval(), history


def _lm_nll(
    lm: LanguageModel, tokens: Tensor, pad: int, batch_size: int, dev: torch.device
) -> float:
    """Mean NLL per non-pad target token over all of ``tokens``."""
    total, count = 0.0, 0
    lm.eval()
    with torch.inference_mode():
        for lo in range(0, tokens.shape[0], batch_size):
            batch = tokens[lo : lo + batch_size].to(dev)
            logp = lm(batch[:, :-1])
            targets = batch[:, 1:]
            total += float(
                F.nll_loss(
                    logp.reshape(-1, logp.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=pad,
                    reduction="sum",
                )
            )
            count += int((targets != pad).sum())
    return total / max(count, 1)


def train_lm(
    captions: Sequence[str],
    val_captions: Sequence[str],
    vocab: Vocab,
    config: LMTrainingConfig = LMTrainingConfig(),
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[LanguageModel, History]:
    """Train the language model p(d) on ``captions``, stopping early on ``val_captions``' NLL.

    Pass the captions of the units the decoder trains on and, for validation, the captions of
    its held-out units (:func:`train_milan` does). This fixes a bug of the original
    ``train_milan.py``, which passed the decoder's held-out *unit* indices as indices into the
    flat list of sentences, so the LM validated on an unrelated handful of sentences and trained
    on the held-out units' captions.
    """
    if not captions or not val_captions:
        raise DataError(
            f"Expected training and validation captions for the language model, got "
            f"{len(captions)} and {len(val_captions)}."
        )
    dev = torch.device(device)
    tokens = vocab.encode_batch(list(captions), length=config.length)
    val_tokens = vocab.encode_batch(list(val_captions), length=config.length)
    with _seeded(config.seed, dev) as generator:
        lm = LanguageModel(
            LanguageModelConfig(
                vocab_size=len(vocab),
                pad_index=vocab.pad,
                embedding_size=config.embedding_size,
                hidden_size=config.hidden_size,
                layers=config.layers,
                dropout=config.dropout,
            )
        ).to(dev)
        optimizer = torch.optim.AdamW(
            lm.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

        def train_epoch() -> tuple[float, float | None, float | None]:
            lm.train()
            total = 0.0
            batches = _batches(tokens.shape[0], config.batch_size, generator)
            for rows in batches:
                loss = lm.loss(tokens[rows].to(dev), pad=vocab.pad)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            return total / len(batches), None, None

        history = _loop(
            what="MILAN language model",
            max_epochs=config.max_epochs,
            patience=config.patience,
            decreasing=True,
            module=lm,
            train_epoch=train_epoch,
            validate=lambda: _lm_nll(lm, val_tokens, vocab.pad, config.batch_size, dev),
            metric="val_nll",
            progress=progress,
        )
    return lm.eval(), history


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingReport:
    """What :func:`train_milan` did: the unit split and both histories."""

    train_units: tuple[int, ...]
    val_units: tuple[int, ...]
    decoder: History
    lm: History | None

    def to_json(self) -> dict[str, Any]:
        return {
            "train_units": list(self.train_units),
            "val_units": list(self.val_units),
            "decoder": self.decoder.to_json(),
            "lm": self.lm.to_json() if self.lm is not None else None,
        }


def train_milan(
    features: Tensor,
    captions: Sequence[Sequence[str]],
    *,
    vocab: Vocab | None = None,
    decoder_config: DecoderTrainingConfig = DecoderTrainingConfig(),
    lm_config: LMTrainingConfig | None = LMTrainingConfig(),
    decoding: DecodingDefaults | None = None,
    encoder_config: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[MilanModel, TrainingReport]:
    """Train decoder and language model on one split of the units (MILAN's ``train_milan.py``).

    The vocabulary is built from every caption (as the original's indexer) unless given. The
    decoder holds out ``decoder_config.hold_out`` of the units; the LM trains on the other units'
    captions and validates on the held-out units' captions. ``lm_config=None`` skips the LM (the
    model then decodes with strategy ``"beam"``).
    """
    _check_captions(captions, features.shape[0])
    decoding = decoding or DecodingDefaults()
    vocab = vocab or Vocab.build(c for caps in captions for c in caps)
    train_units, val_units = split_units(
        features.shape[0], decoder_config.hold_out, decoder_config.seed
    )
    decoder, dec_history = train_decoder(
        features,
        captions,
        vocab,
        decoder_config,
        val_units=val_units,
        device=device,
        progress=progress,
    )
    lm = lm_history = None
    if lm_config is not None:
        lm, lm_history = train_lm(
            [c for u in train_units for c in captions[u]],
            [c for u in val_units for c in captions[u]],
            vocab,
            lm_config,
            device=device,
            progress=progress,
        )
    elif decoding.strategy == "rerank":
        decoding = DecodingDefaults(
            strategy="beam", temperature=decoding.temperature, beam_size=decoding.beam_size
        )
    model = MilanModel(
        vocab=vocab,
        decoder=decoder,
        lm=lm,
        decoding=decoding,
        encoder_config=dict(encoder_config or {}),
        source="trained",
    )
    report = TrainingReport(
        train_units=tuple(train_units),
        val_units=tuple(val_units),
        decoder=dec_history,
        lm=lm_history,
    )
    return model, report
