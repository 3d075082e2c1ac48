"""MILAN decoding: batched over units against one unit at a time, and training time per epoch.

Setup: a :class:`methods.milan.model.Decoder` and :class:`~methods.milan.model.LanguageModel` at
the released sizes (embedding 128, hidden 512, 2-layer LM) with random weights (seed 0), a
vocabulary of ``--vocab`` ids (default 4000; the MILANNOTATIONS vocabulary is of that order), and
random exemplar features [``--units``, 15, ``--features``] (default 64 units, F = 3904, the
ResNet-50/101 pyramid).

- **Batched** (ours): ``decode(..., strategy="rerank", beam_size=50, batch_size=--units)``: every
  unit's 50 beams advance in one tensor pass per step, then the final beams of all units are
  rescored by the language model in one pass.
- **One unit at a time** (the baseline): the same function with ``batch_size=1`` on the first
  ``--single`` units (default 8), i.e. beam search and reranking unit after unit, as a loop over
  units calling a per-unit decoder would.

Both paths run the same arithmetic, so the descriptions of the baseline's units are compared
with the batched ones (a float32 near-tie between two beams may rarely flip one). Then the
decoder's training time per epoch is timed on random captions (``--train-units`` units x 3
captions, batch 64, teacher forcing with the attention penalty, plus the validation BLEU pass).

Prints units/second for both paths and their ratio against the target (10x), ``MISSED`` when it
is not met (exit 0: a report, not a test). Threads: ``--threads`` (default 1, so that the
numbers are per core and comparable across machines).

``python -m perf.milan_perf --help`` for options.
"""

from __future__ import annotations

import argparse
import sys
import time

TARGET_RATIO = 10.0


def _models(vocab_size: int, feature_size: int, seed: int = 0, device: str = "cpu"):
    import torch

    from methods.milan.model import Decoder, DecoderConfig, LanguageModel, LanguageModelConfig
    from methods.milan.tokenizer import Vocab

    torch.manual_seed(seed)
    vocab = Vocab(tuple(f"w{i}" for i in range(vocab_size - 4)))
    decoder = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=feature_size)).eval()
    lm = LanguageModel(LanguageModelConfig(vocab_size=len(vocab), pad_index=vocab.pad)).eval()
    return vocab, decoder.to(device), lm.to(device)


def decoding_ratio(
    *,
    units: int,
    single: int,
    vocab_size: int,
    feature_size: int,
    exemplars: int,
    beam: int,
    device: str = "cpu",
) -> float:
    import torch

    from methods.milan.decoding import decode

    vocab, decoder, lm = _models(vocab_size, feature_size, device=device)
    features = torch.randn(
        units, exemplars, feature_size, generator=torch.Generator().manual_seed(1)
    )
    common = {"lm": lm, "strategy": "rerank", "beam_size": beam}

    began = time.perf_counter()
    batched = decode(decoder, features, vocab, batch_size=units, **common)
    batched_s = time.perf_counter() - began

    single = min(single, units)
    began = time.perf_counter()
    one_by_one = decode(decoder, features[:single], vocab, batch_size=1, **common)
    single_s = time.perf_counter() - began

    same = sum(a.tokens == b.tokens for a, b in zip(batched, one_by_one, strict=False))
    batched_rate, single_rate = units / batched_s, single / single_s
    ratio = batched_rate / single_rate
    print(
        f"decoding on {device} (rerank, beam {beam}, V={vocab_size}, k={exemplars}, "
        f"F={feature_size}):\n"
        f"  batched:            {units:4d} units in {batched_s:7.2f} s = "
        f"{batched_rate:7.2f} units/s\n"
        f"  one unit at a time: {single:4d} units in {single_s:7.2f} s = "
        f"{single_rate:7.2f} units/s\n"
        f"  same description for {same}/{single} units; ratio {ratio:.2f}x "
        f"(target {TARGET_RATIO:.0f}x){'' if ratio >= TARGET_RATIO else '  MISSED'}",
        flush=True,
    )
    return ratio


def training_epoch(
    *, units: int, feature_size: int, exemplars: int, vocab_words: int, device: str = "cpu"
) -> float:
    import random

    import torch

    from methods.milan.tokenizer import Vocab
    from methods.milan.train import DecoderTrainingConfig, train_decoder

    rng = random.Random(0)
    words = [f"w{i}" for i in range(vocab_words)]
    captions = [
        [" ".join(rng.choices(words, k=rng.randint(3, 10))) for _ in range(3)] for _ in range(units)
    ]
    vocab = Vocab.build(c for caps in captions for c in caps)
    features = torch.randn(
        units, exemplars, feature_size, generator=torch.Generator().manual_seed(2)
    )
    began = time.perf_counter()
    _, history = train_decoder(
        features, captions, vocab, DecoderTrainingConfig(max_epochs=1, hold_out=0.1), device=device
    )
    total = time.perf_counter() - began
    epoch = history.epochs[0]
    samples = sum(len(c) for c in captions) * 0.9
    print(
        f"training (decoder at the released sizes, {units} units x 3 captions, V={len(vocab)}, "
        f"F={feature_size}):\n"
        f"  one epoch incl. validation BLEU: {epoch.seconds:.2f} s "
        f"({samples / epoch.seconds:.1f} samples/s; {total:.2f} s with setup)",
        flush=True,
    )
    return epoch.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.milan_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=64, help="units decoded in one batch")
    parser.add_argument("--single", type=int, default=8, help="units decoded one at a time")
    parser.add_argument("--vocab", type=int, default=4000, help="vocabulary size (ids)")
    parser.add_argument("--features", type=int, default=3904, help="feature size F")
    parser.add_argument("--exemplars", type=int, default=15, help="exemplars per unit (k)")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--train-units", type=int, default=128)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    args = parser.parse_args([] if argv is None else argv)

    import torch

    torch.set_num_threads(args.threads)
    decoding_ratio(
        units=args.units,
        single=args.single,
        vocab_size=args.vocab,
        feature_size=args.features,
        exemplars=args.exemplars,
        beam=args.beam,
        device=args.device,
    )
    if not args.skip_training:
        training_epoch(
            units=args.train_units,
            feature_size=args.features,
            exemplars=args.exemplars,
            vocab_words=min(args.vocab, 2000),
            device=args.device,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
