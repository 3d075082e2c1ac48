"""Training MILAN: unit split, BLEU, early stopping, and a toy dataset the model must learn."""

from __future__ import annotations

import pytest
import torch

from methods.milan import train as milan_train
from methods.milan.tokenizer import Vocab
from methods.milan.train import (
    DecoderTrainingConfig,
    EarlyStopping,
    LMTrainingConfig,
    corpus_bleu,
    greedy_texts,
    split_units,
    train_decoder,
    train_milan,
)

torch.set_num_threads(1)

CLASSES = (
    "red circles on green grass",
    "blue stripes in the sky",
    "white dotted squares on sand",
    "yellow checkered triangles near water",
)
SMALL = {"embedding_size": 16, "hidden_size": 32, "dropout": 0.1, "length": 7, "lr": 1e-2}


def toy_units(n: int = 48, k: int = 6, f: int = 12, seed: int = 0):
    """Units whose exemplar features are noisy copies of one of four class prototypes, each
    annotated three times with its class caption."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(len(CLASSES), f, generator=gen) * 2
    labels = [i % len(CLASSES) for i in range(n)]
    features = prototypes[labels][:, None, :] + 0.3 * torch.randn(n, k, f, generator=gen)
    captions = [[CLASSES[c]] * 3 for c in labels]
    return features, captions, labels


def test_split_units_is_seeded_disjoint_and_by_unit() -> None:
    train, val = split_units(50, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert sorted(train + val) == list(range(50))
    assert split_units(50, 0.1, seed=3) == (train, val)
    assert split_units(50, 0.1, seed=4)[1] != val
    assert len(split_units(3, 0.1)[1]) == 1  # at least one unit is held out
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="hold_out"):
        split_units(10, 0.0)


def test_corpus_bleu_normalises_like_milan() -> None:
    import sacrebleu

    preds = ["Red circles on the green grass.", "a blue sky with white clouds"]
    refs = [
        ["red circles on green grass", "circles that are red on grass. "],
        ["blue sky with clouds", "a blue sky with white clouds", "third reference"],
    ]
    expected = sacrebleu.corpus_bleu(
        ["red circles on the green grass", "a blue sky with white clouds"],
        [
            ["red circles on green grass", "blue sky with clouds"],
            ["circles that are red on grass", "a blue sky with white clouds"],
        ],  # two streams: zip(*refs) drops the third reference of the second unit
    ).score
    assert corpus_bleu(preds, refs) == pytest.approx(expected)
    assert 0 < expected < 100
    assert corpus_bleu(["The red dog runs fast."], [["the red dog runs fast"]]) == pytest.approx(
        100
    )


def test_early_stopping_waits_patience_plus_one_and_keeps_the_best_state() -> None:
    module = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=2, decreasing=False)
    decisions = []
    for epoch, value in enumerate([1.0, 3.0, 3.0, 2.0, 2.5, 9.0], start=1):
        with torch.no_grad():
            module.weight.fill_(epoch)
        decisions.append(stopper.update(value, epoch, module))
        if decisions[-1]:
            break
    # Best 3.0 at epoch 2; the equal 3.0 is no improvement; stop at the 3rd bad epoch (5).
    assert decisions == [False, False, False, False, True]
    assert stopper.best == 3.0 and stopper.best_epoch == 2
    stopper.restore(module)
    assert module.weight.item() == 2.0
    falling = EarlyStopping(patience=0, decreasing=True)
    assert [falling.update(v, i, module) for i, v in enumerate([2.0, 1.0, 1.5])] == [
        False,
        False,
        True,
    ]


def test_training_on_a_toy_dataset_learns_the_captions() -> None:
    features, captions, labels = toy_units()
    model, report = train_milan(
        features,
        captions,
        decoder_config=DecoderTrainingConfig(
            **SMALL, batch_size=16, max_epochs=12, patience=2, hold_out=0.25
        ),
        lm_config=LMTrainingConfig(
            embedding_size=16, hidden_size=32, dropout=0.1, length=7, lr=1e-2, batch_size=32,
            max_epochs=6,
        ),
    )  # fmt: skip
    dec = report.decoder
    assert len(report.val_units) == 12 and not set(report.val_units) & set(report.train_units)
    # Loss falls and validation BLEU rises to a perfect score on held-out units.
    assert dec.epochs[-1].train_loss < 0.5 * dec.epochs[0].train_loss
    assert dec.epochs[0].val_metric < 90 and dec.best_value == pytest.approx(100)
    for record in dec.epochs:
        assert record.train_loss == pytest.approx(record.train_nll + record.train_penalty)
        assert record.seconds > 0
    val = list(report.val_units)
    texts = greedy_texts(model.decoder, features[val], model.vocab)
    assert [t.lower() for t in texts] == [CLASSES[labels[u]] for u in val]
    # The language model learned too (held-out units' captions are its validation set).
    assert report.lm is not None
    assert report.lm.best_value < report.lm.epochs[0].val_metric
    assert report.to_json()["decoder"]["best_epoch"] == dec.best_epoch


def test_early_stopping_restores_the_best_epochs_weights(monkeypatch) -> None:
    features, captions, _ = toy_units(n=24, k=4)
    config = DecoderTrainingConfig(**SMALL, batch_size=8, max_epochs=30, patience=1, seed=5)
    vocab = Vocab.build(c for caps in captions for c in caps)
    decoder, history = train_decoder(features, captions, vocab, config)
    assert history.stopped_early and len(history.epochs) == history.best_epoch + 2
    # Same seed, stopped at the best epoch: the restored weights are exactly those.
    again, short = train_decoder(
        features, captions, vocab, DecoderTrainingConfig(
            **SMALL, batch_size=8, max_epochs=history.best_epoch, patience=1, seed=5
        )
    )  # fmt: skip
    assert [r.val_metric for r in short.epochs] == [
        r.val_metric for r in history.epochs[: history.best_epoch]
    ]
    for (name, a), b in zip(decoder.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # ... which differ from the last epoch's: without the restore the run ends elsewhere.
    monkeypatch.setattr(EarlyStopping, "restore", lambda self, module: None)
    last, _ = train_decoder(features, captions, vocab, config)
    assert not torch.equal(last.lstm.weight_hh, decoder.lstm.weight_hh)


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    features, captions, _ = toy_units(n=16, k=3)
    vocab = Vocab.build(c for caps in captions for c in caps)
    config = DecoderTrainingConfig(**SMALL, batch_size=8, max_epochs=2, patience=5)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, h1 = train_decoder(features, captions, vocab, config)
    assert torch.equal(torch.rand(1), expected_next)
    second, h2 = train_decoder(features, captions, vocab, config)
    assert [r.train_loss for r in h1.epochs] == [r.train_loss for r in h2.epochs]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_language_model_validates_on_the_held_out_units_captions(monkeypatch) -> None:
    features, _, _ = toy_units(n=10, k=2)
    captions = [[f"unit {u} caption {j}" for j in range(3)] for u in range(10)]
    seen = {}

    def fake_train_lm(train_captions, val_captions, vocab, config, **kw):
        seen["train"], seen["val"] = list(train_captions), list(val_captions)
        raise RuntimeError("stop here")

    monkeypatch.setattr(milan_train, "train_lm", fake_train_lm)
    monkeypatch.setattr(
        milan_train,
        "train_decoder",
        lambda *a, **kw: (None, None),
    )
    with pytest.raises(RuntimeError, match="stop here"):
        train_milan(features, captions, decoder_config=DecoderTrainingConfig(hold_out=0.2, seed=1))
    _, val_units = split_units(10, 0.2, seed=1)
    assert seen["val"] == [c for u in val_units for c in captions[u]]
    assert seen["train"] == [c for u in range(10) if u not in val_units for c in captions[u]]


def test_training_input_errors() -> None:
    from bench.errors import DataError

    features, captions, _ = toy_units(n=8, k=2)
    vocab = Vocab.build(c for caps in captions for c in caps)
    with pytest.raises(DataError, match="one list of captions per unit"):
        train_decoder(features, captions[:-1], vocab)
    with pytest.raises(DataError, match="training and validation captions"):
        milan_train.train_lm(["a caption"], [], vocab)
