"""The milan and milan-captioning methods: training data and held-out targets, the trained-model
cache, released checkpoints used by the method, `bench milan train|evaluate`, and (slow) the rate
at which descriptions of the held-out synthetic target's planted units name their concept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import milannotations as M
from bench.cache import Cache
from bench.cli import main
from bench.errors import ConfigError
from bench.schema import UnitRef, read_descriptions
from bench.testing import TINY_MILANNOTATIONS, tiny_evidence, write_tiny_milannotations
from methods.base import MethodContext
from methods.milan import (
    MODEL_STAGE,
    Milan,
    MilanCaptioning,
    MilanConfig,
    default_train_keys,
    synthetic_encoder,
    train_cached,
    training_data,
)

TRAIN = dict(encoder="synthetic", max_epochs=30, patience=5, batch_size=16, beam_size=5)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("milannotations")
    write_tiny_milannotations(root)
    return root


def test_synthetic_targets_train_on_the_others() -> None:
    keys = default_train_keys("synth.resnet", "synthetic")
    assert keys == "not-synth.resnet-synthetic"
    resolved = M.resolve_keys(keys)
    assert "synth.resnet/synthetic" not in resolved
    assert set(resolved) == set(M.synthetic_keys()) - {"synth.resnet/synthetic"}
    assert default_train_keys("resnet50", "torchvision") == "base"


def test_trained_model_is_cached_by_content(tiny_root: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cfg = MilanConfig(**{**TRAIN, "max_epochs": 2})
    enc = synthetic_encoder()
    data = training_data("alexnet/places365", cache, root=str(tiny_root))
    model, entry, hit = train_cached(data, enc, cfg, cache)
    assert not hit
    # The original's attention width, min(hidden 512, features 128).
    assert enc.feature_size == 128 and model.decoder.config.attention_size == 128
    assert tuple(model.decoder.attend.key_to_hidden.weight.shape) == (128, 128)
    _, entry2, hit2 = train_cached(data, enc, cfg, cache)
    assert hit2 and entry2 == entry
    # Decoding settings do not change the trained model; training settings do.
    assert train_cached(
        data, enc, MilanConfig(**{**TRAIN, "max_epochs": 2, "beam_size": 7}), cache
    )[2]
    assert not train_cached(data, enc, MilanConfig(**{**TRAIN, "max_epochs": 3}), cache)[2]
    # So does the data: another annotation is another model.
    other = tmp_path / "other"
    write_tiny_milannotations(other)
    csv = other / "alexnet-places365" / "annotations.csv"
    csv.write_text(csv.read_text().replace("small red", "tiny red", 1))
    changed = training_data("alexnet/places365", cache, root=str(other))
    assert not train_cached(changed, enc, cfg, cache)[2]
    report = json.loads((entry / "training.json").read_text())
    assert report["units"] == len(data) and report["keys"] == ["alexnet/places365"]


def test_held_out_units_are_described_by_what_training_taught(
    tiny_root: Path, tmp_path: Path
) -> None:
    """Trained on red-square and blue-square units, MILAN names the colour of the units held out
    for validation, with wPMI and with the captioning ablation; the method runs end to end on
    recorded evidence. (The tiny target's maps are flat on its squares, so its exemplar masks
    at the 0.99 quantile are empty, as the original's would be: the method then describes
    unmasked, all-zero features, and only the plumbing is checked there.)"""
    import numpy as np

    from methods.milan import encode_units

    cache = Cache(tmp_path / "cache")
    data = training_data("alexnet/places365", cache, root=str(tiny_root))
    model, entry, _ = train_cached(data, synthetic_encoder(), MilanConfig(**TRAIN), cache)
    val = json.loads((entry / "training.json").read_text())["report"]["val_units"]
    assert len(val) == 4
    held = [data[i] for i in val]
    features = encode_units(
        synthetic_encoder(), np.stack([u.images for u in held]), np.stack([u.masks for u in held])
    )
    for strategy in ("rerank", "beam", "greedy"):
        decoded = model.describe(features, strategy=strategy, beam_size=5)
        for unit, d in zip(held, decoded, strict=True):
            colour = "red" if unit.unit % 2 == 0 else "blue"
            assert colour in d.text.lower(), (strategy, unit.unit, d.text)

    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache, target=ev.target)
    units = [UnitRef(layer="conv", index=0), UnitRef(layer="conv", index=2)]
    for cls in (Milan, MilanCaptioning):
        method = cls(train_keys="alexnet/places365", annotations_root=str(tiny_root), **TRAIN)
        for d in method.describe(units, ev, ctx):
            assert d.ok and d.label, d.error
            assert d.extras["model"] == "trained" and d.extras["cached"] is True
            assert d.extras["train_keys"] == ["alexnet/places365"]
            assert d.score_name == ("wpmi" if cls is Milan else "log p(d|E)")
            assert d.extras["strategy"] == ("rerank" if cls is Milan else "greedy")
            assert len(d.extras["exemplars"]) == 15
    assert TINY_MILANNOTATIONS  # the fixture's vocabulary, documented in bench.testing


def test_a_released_checkpoint_is_used_as_given(tmp_path: Path) -> None:
    """A checkpoint in the authors' format (random weights here) loads into the method, which
    then decodes exactly as the loaded model does on the same exemplar features."""
    from bench.exemplars import compute_exemplars
    from methods.milan import checkpoint, encode_units
    from methods.milan.model import Decoder, DecoderConfig, LanguageModel, LanguageModelConfig
    from methods.milan.tokenizer import Vocab

    enc = synthetic_encoder()
    torch.manual_seed(0)
    vocab = Vocab.build(["red squares", "blue circles on grass", "striped things"])
    decoder = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=enc.feature_size)).eval()
    lm = LanguageModel(LanguageModelConfig(vocab_size=len(vocab), pad_index=vocab.pad)).eval()
    path = tmp_path / "milan-base.pth"
    checkpoint.write_released_format(path, decoder, lm, vocab, enc.config)

    cache = Cache(tmp_path / "cache")
    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache, target=ev.target)
    units = [UnitRef(layer="conv", index=i) for i in range(3)]
    got = Milan(model=str(path), beam_size=5).describe(units, ev, ctx)
    model = checkpoint.load_released(path)
    ex = compute_exemplars(ev, "conv", [0, 1, 2])
    want = model.describe(encode_units(enc, ex.images, ex.masks), beam_size=5)
    for d, w in zip(got, want, strict=True):
        if w.text.strip():
            assert d.ok and d.label == w.text and d.score == pytest.approx(float(w.score))
        else:
            assert d.status == "error" and "no words" in d.error
        assert d.extras.get("model", str(path)) == str(path)

    # milan-captioning decodes greedily unless told to search a beam, and says which it used.
    features = encode_units(enc, ex.images, ex.masks)
    greedy = model.describe(features, strategy="greedy")
    beam = model.describe(features, strategy="beam", beam_size=5)
    assert any(g.tokens != b.tokens for g, b in zip(greedy, beam, strict=True))
    default = MilanCaptioning(model=str(path), beam_size=5)
    assert default.identity()["config"]["strategy"] == "greedy"
    beam_method = MilanCaptioning(model=str(path), strategy="beam", beam_size=5)
    for method, want in ((default, greedy), (beam_method, beam)):
        strategy = method.config.strategy
        for d, w in zip(method.describe(units, ev, ctx), want, strict=True):
            if w.text.strip():
                assert d.ok and d.label == w.text and d.score == pytest.approx(float(w.score))
                assert d.extras["strategy"] == strategy and d.score_name == "log p(d|E)"
            else:
                assert d.status == "error"


def test_bad_model_and_keys_are_clear_errors(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache, target=ev.target)
    with pytest.raises(ConfigError, match="Expected milan.model"):
        Milan(model=str(tmp_path / "missing.pth")).fit(ctx)
    with pytest.raises(ConfigError, match="strategy"):
        Milan(strategy="sample")
    assert Milan().config.strategy == "rerank" and MilanCaptioning().config.strategy == "greedy"
    assert MilanCaptioning(strategy="beam").config.strategy == "beam"
    with pytest.raises(Exception, match="not-alexnet"):
        Milan(train_keys="not-alexnet", encoder="synthetic").fit(ctx)


def test_cli_trains_a_model_and_runs_with_it(tiny_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    cache = str(tmp_path / "cache")
    args = ["milan", "train", "--keys", "alexnet/places365", "--root", str(tiny_root)]
    args += ["--config", "encoder=synthetic", "--config", "max_epochs=3", "--out", str(out)]
    assert main([*args, "--cache-dir", cache]) == 0
    assert (out / "model.safetensors").is_file() and (out / "milan.json").is_file()
    # --cache-dir is honoured: the trained model is cached there (and only there)
    assert len(list((Path(cache) / MODEL_STAGE).iterdir())) == 1
    info = json.loads(capsys.readouterr().out.rsplit("}", 1)[0] + "}")
    assert info["train_keys"] == ["alexnet/places365"] and info["units"] == 40
    run_dir = tmp_path / "run"
    code = main(
        ["run", "--methods", "milan", "--units", "layer1:0-2", "--config", f"milan.model={out}"]
        + ["--config", "milan.beam_size=3", "--out", str(run_dir), "--cache-dir", cache]
    )
    assert code in (0, 1)  # an untrained-looking model may emit nothing for some unit
    ds = read_descriptions(run_dir / "milan" / "units.jsonl")
    assert [d.unit.index for d in ds] == [0, 1, 2]
    assert any(d.ok for d in ds)
    # Holding out the only key leaves nothing to train on.
    assert main([*args[:-2], "--hold-out", "alexnet/places365", "--cache-dir", cache]) != 0


@pytest.mark.slow
def test_planted_units_are_named_far_more_often_than_chance(tmp_path: Path) -> None:
    """Held out from training, synth.resnet's planted units get descriptions that name (some of)
    their concept far more often than its other units' descriptions do."""
    from bench.api import RunConfig, run
    from bench.synth.targets import load_card
    from bench.synth.text import parse_phrase

    def leaves(tree, out):
        if tree and tree[0] == "leaf":
            out.add(tree[1])
        elif tree and tree[0] in ("and", "or"):
            for t in tree[1:]:
                leaves(t, out)
        return out

    res = run(RunConfig(methods=("milan",), target="synth.resnet", out=str(tmp_path / "r")))
    ds = {(d.unit.layer, d.unit.index): d.label for d in read_descriptions(
        res.run_dir / "milan" / "units.jsonl")}  # fmt: skip
    planted = load_card("synth.resnet")["planted_units"]
    keys = {(p["layer"], p["unit"]) for p in planted}
    hits = chance = 0.0
    for p in planted:
        want = leaves(p["formula"], set())
        hits += bool(want & leaves(parse_phrase(ds[p["layer"], p["unit"]])[1], set()))
        others = [k for k in ds if k not in keys]
        chance += sum(bool(want & leaves(parse_phrase(ds[k])[1], set())) for k in others) / len(
            others
        )
    assert hits / len(planted) >= 5 * chance / len(planted) and hits >= 2
