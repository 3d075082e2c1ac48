"""MILAN decoding: batched over units against one unit at a time, and training time per epoch.

Two decoding workloads, both with ``strategy="rerank"`` and beam 50 (the paper's defaults):

- **synthetic** (the embedded default, what ``bench run --methods milan`` decodes): the model
  MILAN trains on the synthetic annotations of the other synthetic targets (from the cache;
  trained on the first run, about two minutes), describing the annotated units of
  ``synth.resnet`` from their exemplars (synthetic encoder, F = 128).
- **released** (the released sizes): a decoder and language model at the released sizes
  (embedding 128, hidden 512, 2-layer LM) with random weights (seed 0), a vocabulary of
  ``--vocab`` ids (default 4000), random exemplar features [``--units``, 15, ``--features``]
  (default 64 units, F = 3904, the ResNet-50/101 pyramid). Random weights rarely emit
  ``<stop>``, so every beam runs all 15 steps: the heaviest case.

For each workload:

- **Batched** (ours): ``decode(..., batch_size=<all units>)``: every unit's running beams
  advance in one tensor pass per step, then the final beams of all units are rescored by the
  language model over one prefix tree.
- **One unit at a time** (the baseline): the same function with ``batch_size=1`` on the first
  ``--single`` units, i.e. beam search and reranking unit after unit, as a loop over units
  calling a per-unit decoder would. Both paths run the same code per unit, so their
  descriptions are compared (a float32 near-tie between two beams may rarely flip one).

The ratio is printed against the target (10x), ``MISSED`` when it is not met (exit 0: a report,
not a test). Beside it, the **ceiling**: the matrix arithmetic of the batched path, counted
with ``torch.utils.flop_counter`` (plus the language model's LSTM, which the counter does not
see; element-wise work such as the attention's tanh is not counted, so the ceiling is
generous), divided by this machine's measured float32 matrix-multiply peak at the same thread
count, gives the least time any implementation of that arithmetic could take; the one-unit
path's time over it is the most any batching could gain here.

Then the decoder's training time per epoch (batch 64, teacher forcing with the attention
penalty, plus the validation BLEU pass): on the synthetic annotations (the synthetic workload's
training data) and at the released sizes on random captions (``--train-units`` units x 3).

Threads: ``--threads`` (default 1, so that the numbers are per core and comparable across
machines). ``python -m perf.milan_perf --help`` for options.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import dataclass
from typing import Any

TARGET_RATIO = 10.0
#: The held-out target of the synthetic workload.
SYNTHETIC_TARGET = "synth.resnet"


@dataclass
class Workload:
    name: str
    about: str
    vocab: Any
    decoder: Any
    lm: Any
    features: Any  # float32 [U, k, F]


def _models(vocab_size: int, feature_size: int, seed: int = 0, device: str = "cpu"):
    import torch

    from methods.milan.model import Decoder, DecoderConfig, LanguageModel, LanguageModelConfig
    from methods.milan.tokenizer import Vocab

    torch.manual_seed(seed)
    vocab = Vocab(tuple(f"w{i}" for i in range(vocab_size - 4)))
    decoder = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=feature_size)).eval()
    lm = LanguageModel(LanguageModelConfig(vocab_size=len(vocab), pad_index=vocab.pad)).eval()
    return vocab, decoder.to(device), lm.to(device)


def released_workload(
    *, units: int, vocab_size: int, feature_size: int, exemplars: int, device: str = "cpu"
) -> Workload:
    import torch

    vocab, decoder, lm = _models(vocab_size, feature_size, device=device)
    features = torch.randn(
        units, exemplars, feature_size, generator=torch.Generator().manual_seed(1)
    )
    return Workload(
        name="released",
        about=f"released sizes, random weights: V={len(vocab)}, k={exemplars}, F={feature_size}",
        vocab=vocab,
        decoder=decoder,
        lm=lm,
        features=features,
    )


@functools.cache
def synthetic_data(cache_dir: str | None = None):
    """``(encoder, training data, held-out data, cache)`` of the synthetic workload (loaded
    once: decoding and training timings share it)."""
    from bench.cache import Cache
    from methods.milan import MilanConfig, default_train_keys, make_encoder, training_data

    cache = Cache(cache_dir)
    encoder = make_encoder(MilanConfig(), synthetic=True)
    keys = default_train_keys(SYNTHETIC_TARGET, "synthetic")
    train = training_data([keys], cache, progress=True)
    held = training_data([f"{SYNTHETIC_TARGET}/synthetic"], cache, progress=True)
    return encoder, train, held, cache


def synthetic_workload(cache_dir: str | None = None, device: str = "cpu") -> Workload:
    import numpy as np

    from methods.milan import MilanConfig, encode_units, train_cached

    encoder, train, held, cache = synthetic_data(cache_dir)
    model, _, hit = train_cached(train, encoder, MilanConfig(), cache, progress=True)
    features = encode_units(
        encoder, np.stack([u.images for u in held]), np.stack([u.masks for u in held])
    )
    return Workload(
        name="synthetic",
        about=(
            f"the embedded default: MILAN trained on {len(train)} units of "
            f"{', '.join(train.keys)} ({'cached' if hit else 'trained now'}), describing "
            f"{SYNTHETIC_TARGET}; V={len(model.vocab)}, k={features.shape[1]}, "
            f"F={features.shape[2]}"
        ),
        vocab=model.vocab,
        decoder=model.decoder.to(device),
        lm=model.lm.to(device),
        features=features,
    )


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s, best of ``repeats``) at the current
    torch thread count."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = a @ b
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best / 1e9


def lm_lstm_flops_per_row(lm) -> int:
    """Multiply-add FLOPs of one token through the language model's LSTM layers."""
    cfg = lm.config
    total, width = 0, cfg.embedding_size
    for _ in range(cfg.layers):
        total += 2 * 4 * cfg.hidden_size * (width + cfg.hidden_size)
        width = cfg.hidden_size
    return total


def counted_flops(run, lm) -> float:
    """Matrix FLOPs of ``run()``: ``torch.utils.flop_counter`` plus the LM's LSTM (the counter
    does not see the fused LSTM kernel), counted through a forward hook on its rows."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = [0]

    def hook(module, args, output) -> None:
        x = args[0]
        rows[0] += x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)

    handle = lm.lstm.register_forward_hook(hook)
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        handle.remove()
    return counter.get_total_flops() + rows[0] * lm_lstm_flops_per_row(lm)


def decoding_ratio(work: Workload, *, single: int, beam: int, peak: float) -> float:
    from methods.milan.decoding import decode

    units = work.features.shape[0]
    single = min(single, units)
    common = {"lm": work.lm, "strategy": "rerank", "beam_size": beam}
    features = work.features

    began = time.perf_counter()
    batched = decode(work.decoder, features, work.vocab, batch_size=units, **common)
    batched_s = time.perf_counter() - began

    began = time.perf_counter()
    one_by_one = decode(work.decoder, features[:single], work.vocab, batch_size=1, **common)
    single_s = time.perf_counter() - began

    batched_flops = counted_flops(
        lambda: decode(work.decoder, features, work.vocab, batch_size=units, **common), work.lm
    )
    single_flops = counted_flops(
        lambda: decode(work.decoder, features[:single], work.vocab, batch_size=1, **common),
        work.lm,
    )

    same = sum(a.tokens == b.tokens for a, b in zip(batched, one_by_one, strict=False))
    batched_rate, single_rate = units / batched_s, single / single_s
    ratio = batched_rate / single_rate
    least_s = batched_flops / units / (peak * 1e9)  # per unit, at the matmul peak
    ceiling = (single_s / single) / least_s
    print(
        f"decoding, {work.name} workload ({work.about}; rerank, beam {beam}):\n"
        f"  batched:            {units:4d} units in {batched_s:7.2f} s = "
        f"{batched_rate:7.2f} units/s  ({batched_flops / units / 1e9:6.2f} GFLOP/unit, "
        f"{batched_flops / batched_s / 1e9:5.1f} GFLOP/s)\n"
        f"  one unit at a time: {single:4d} units in {single_s:7.2f} s = "
        f"{single_rate:7.2f} units/s  ({single_flops / single / 1e9:6.2f} GFLOP/unit, "
        f"{single_flops / single_s / 1e9:5.1f} GFLOP/s)\n"
        f"  same description for {same}/{single} units; ratio {ratio:.2f}x "
        f"(target {TARGET_RATIO:.0f}x){'' if ratio >= TARGET_RATIO else '  MISSED'}\n"
        f"  ceiling {ceiling:.2f}x: the batched path's matrix arithmetic at this machine's "
        f"matmul peak ({peak:.0f} GFLOP/s) takes at least {least_s * 1e3:.1f} ms/unit, "
        f"against {single_s / single * 1e3:.1f} ms/unit one at a time",
        flush=True,
    )
    return ratio


def _time_epoch(features, captions, vocab, device: str) -> float:
    from methods.milan.train import DecoderTrainingConfig, train_decoder

    _, history = train_decoder(
        features, captions, vocab, DecoderTrainingConfig(max_epochs=1, hold_out=0.1), device=device
    )
    return history.epochs[0].seconds


def training_epoch_synthetic(cache_dir: str | None = None, device: str = "cpu") -> float:
    import numpy as np

    from methods.milan import encode_units
    from methods.milan.tokenizer import Vocab

    encoder, train, _, _ = synthetic_data(cache_dir)
    features = encode_units(
        encoder, np.stack([u.images for u in train]), np.stack([u.masks for u in train])
    )
    captions = [list(u.annotations) for u in train]
    vocab = Vocab.build(c for caps in captions for c in caps)
    seconds = _time_epoch(features, captions, vocab, device)
    samples = sum(len(c) for c in captions) * 0.9
    print(
        f"training on the synthetic annotations ({len(train)} units of "
        f"{', '.join(train.keys)}, {sum(len(c) for c in captions)} captions, V={len(vocab)}, "
        f"F={features.shape[2]}):\n"
        f"  one epoch incl. validation BLEU: {seconds:.2f} s ({samples / seconds:.1f} samples/s)",
        flush=True,
    )
    return seconds


def training_epoch_released(
    *, units: int, feature_size: int, exemplars: int, vocab_words: int, device: str = "cpu"
) -> float:
    import random

    import torch

    from methods.milan.tokenizer import Vocab

    rng = random.Random(0)
    words = [f"w{i}" for i in range(vocab_words)]
    captions = [
        [" ".join(rng.choices(words, k=rng.randint(3, 10))) for _ in range(3)] for _ in range(units)
    ]
    vocab = Vocab.build(c for caps in captions for c in caps)
    features = torch.randn(
        units, exemplars, feature_size, generator=torch.Generator().manual_seed(2)
    )
    seconds = _time_epoch(features, captions, vocab, device)
    samples = sum(len(c) for c in captions) * 0.9
    print(
        f"training at the released sizes ({units} units x 3 random captions, V={len(vocab)}, "
        f"F={feature_size}):\n"
        f"  one epoch incl. validation BLEU: {seconds:.2f} s ({samples / seconds:.1f} samples/s)",
        flush=True,
    )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.milan_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload", choices=("synthetic", "released", "both"), default="both",
        help="which decoding workload(s) to time",
    )  # fmt: skip
    parser.add_argument("--units", type=int, default=64, help="released: units in one batch")
    parser.add_argument("--single", type=int, default=8, help="units decoded one at a time")
    parser.add_argument("--vocab", type=int, default=4000, help="released: vocabulary size")
    parser.add_argument("--features", type=int, default=3904, help="released: feature size F")
    parser.add_argument("--exemplars", type=int, default=15, help="released: exemplars (k)")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--train-units", type=int, default=128, help="released: training units")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--cache-dir", default=None, help="synthetic: the bench cache")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    args = parser.parse_args([] if argv is None else argv)

    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"float32 matmul peak at {args.threads} thread(s): {peak:.0f} GFLOP/s", flush=True)
    if args.device != "cpu":
        print("  (the ceilings below use this CPU peak, not the device's)", flush=True)
    synthetic = args.workload in ("synthetic", "both")
    released = args.workload in ("released", "both")
    if synthetic:
        work = synthetic_workload(args.cache_dir, device=args.device)
        decoding_ratio(work, single=max(args.single, 32), beam=args.beam, peak=peak)
    if released:
        work = released_workload(
            units=args.units,
            vocab_size=args.vocab,
            feature_size=args.features,
            exemplars=args.exemplars,
            device=args.device,
        )
        decoding_ratio(work, single=args.single, beam=args.beam, peak=peak)
    if not args.skip_training:
        if synthetic:
            training_epoch_synthetic(args.cache_dir, device=args.device)
        if released:
            training_epoch_released(
                units=args.train_units,
                feature_size=args.features,
                exemplars=args.exemplars,
                vocab_words=min(args.vocab, 2000),
                device=args.device,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
