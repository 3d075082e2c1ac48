"""MILAN's model core: tokenizer, mask pooling, decoder/LM equations, decoding, checkpoints.

The decoder and language model are checked against the documented equations
(reference/milan-checkpoint.md) written out below with plain tensor operations on the state
dict, never by calling the modules under test.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from methods.milan import checkpoint as ck
from methods.milan.decoding import (
    Beams,
    beam_search,
    choose,
    decode,
    decoder_step,
    greedy_search,
    has_words,
    lm_logprob,
    rerank,
    rerank_scores,
)
from methods.milan.encoder import PyramidEncoder, pool_features, torchvision_pyramid
from methods.milan.model import (
    Decoder,
    DecoderConfig,
    DecodingDefaults,
    LanguageModel,
    LanguageModelConfig,
    MilanModel,
    content_mask,
)
from methods.milan.tokenizer import SPECIALS, Vocab, detokenize, tokenize

torch.set_num_threads(1)

WORDS = "the red dog runs on green grass near a blue sky with white clouds".split()


# --- tokenizer and vocabulary -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (
            "Black-and-white stripes, dogs' ears.",
            ["black", "-", "and", "-", "white", "stripes", ",", "dogs", "'", "ears", "."],
        ),
        ("The dog's tail.", ["the", "dog", "'s", "tail", "."]),
        ("Don't stop", ["do", "n't", "stop"]),
        ("it's its fur", ["it", "'s", "its", "fur"]),
        ("e.g. cats", ["e.g.", "cats"]),
        ("red,blue things...", ["red", ",", "blue", "things", "..."]),
        ("(windows) here!", ["(", "windows", ")", "here", "!"]),
        ("3-4 dogs", ["3", "-", "4", "dogs"]),
        ("the letter a.", ["the", "letter", "a."]),
        ("Top-left corner; edges:", ["top", "-", "left", "corner", ";", "edges", ":"]),
        ('"Quoted" text', ['"', "quoted", '"', "text"]),
        ("cannot  see\tit", ["can", "not", "see", "it"]),
        ("dogs.Cats", ["dogs", ".", "cats"]),
    ],
)
def test_tokenize_matches_spacy_on_captions(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_tokenize_keeps_case_when_asked() -> None:
    assert tokenize("Red Dogs.", lowercase=False) == ["Red", "Dogs", "."]


def test_vocab_orders_by_frequency_then_alphabet_and_appends_specials() -> None:
    vocab = Vocab.build(["b a cat.", "a b", "A d"])
    # a: 3, b: 2, then ".", cat, d once each, alphabetically.
    assert vocab.tokens == ("a", "b", ".", "cat", "d")
    assert (vocab.start, vocab.stop, vocab.pad, vocab.unk) == (5, 6, 7, 8)
    assert len(vocab) == 9
    assert [vocab.token(i) for i in range(5, 9)] == list(SPECIALS)
    assert Vocab.build(["A d", "a b", "b a cat."]) == vocab  # order of captions is irrelevant
    assert Vocab.build(["b a cat.", "a b", "A d"], min_count=2).tokens == ("a", "b")


def test_encode_adds_specials_truncates_and_pads() -> None:
    vocab = Vocab(("red", "dog", "."))
    s, e, p, u = vocab.start, vocab.stop, vocab.pad, vocab.unk
    assert vocab.encode("Red dog.") == [s, 0, 1, 2, e]
    assert vocab.encode("red cat", length=5) == [s, 0, u, e, p, p]
    # Words are cut so that <stop> still fits in `length` ids after <start>.
    assert vocab.encode("red red red red", length=3) == [s, 0, 0, e]
    assert vocab.encode("red", start=False, stop=False) == [0]
    batch = vocab.encode_batch(["red", "dog dog"], length=4)
    assert batch.tolist() == [[s, 0, e, p, p], [s, 1, 1, e, p]]


def test_reconstruct_cuts_at_stop_drops_specials_and_formats() -> None:
    words = ("red", "dots", ".", "blue", "sky", ",", "black", "-", "white", ";", "grass", ":")
    vocab = Vocab(words)
    ids = [vocab.start] + [vocab.id(w) for w in "red dots . blue sky , black - white".split()]
    ids += [vocab.unk, vocab.id(";"), vocab.id("grass"), vocab.stop, vocab.id("red"), vocab.pad]
    assert vocab.decode(ids) == "red dots . blue sky , black - white ; grass".split()
    assert vocab.reconstruct(ids) == "Red dots. Blue sky, black-white; grass"
    assert detokenize(["a", "b", ":", "c", "."]) == "A b: c."


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        # The original removes " ." then " ," and finally re-joins the pieces split at "."
        # with ". ", which puts the space back between a period and a comma.
        (["nature", ".", ",", "food"], "Nature. , food"),
        (["red", ".", ".", "blue"], "Red. . Blue"),
        (["red", "things", "..."], "Red things. . ."),
        (["e.g.", "cats"], "E. G. Cats"),
        # Only "." starts a sentence; "!" and "?" do not.
        (["wow", "!", "cool", "?", "yes"], "Wow ! cool ? yes"),
        # The rest of each sentence is lower-cased (str.capitalize).
        (["DNA", "strands", ".", "BIG", "dogs"], "Dna strands. Big dogs"),
        (["3", "-", "4", "dogs", ".", "2", "cats"], "3-4 dogs. 2 cats"),
        (["a", "-", "-", "b", ";", "c", ",", "d"], "A--b; c, d"),
        ([], ""),
    ],
)
def test_detokenize_follows_the_originals_rule(tokens: list[str], text: str) -> None:
    assert detokenize(tokens) == text


def test_reconstruct_of_a_period_then_a_comma_is_the_originals() -> None:
    vocab = Vocab(("nature", ".", ",", "food"))
    ids = [vocab.start] + [vocab.id(w) for w in ("nature", ".", ",", "food")] + [vocab.stop]
    assert vocab.reconstruct(ids) == "Nature. , food"


def test_vocab_json_round_trip(tmp_path: Path) -> None:
    vocab = Vocab.build(["Black-and-white stripes, dogs' ears.", "the dog's tail"])
    again = Vocab.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab and again.tokens == vocab.tokens
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab
    with pytest.raises(Exception, match="specials"):
        Vocab.from_json({"tokens": ["a"], "specials": ["<s>"]})
    with pytest.raises(Exception, match="unique"):
        Vocab(("a", "a"))


# --- mask pooling -------------------------------------------------------------------------------


def test_pool_features_equals_hand_computation() -> None:
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0:2, 0:2] = 1.0  # top-left quarter
    mask[0, 0, 3, 3] = 1.0
    # Level 1 (4x4, same size: interpolation is the identity), 2 channels.
    level1 = torch.arange(2 * 2 * 16, dtype=torch.float32).reshape(2, 2, 4, 4)
    # Level 2 (2x2): bilinear with align_corners=False samples the centre of each 2x2 block,
    # i.e. the block means of the mask: [[1, 0], [0, 0.25]].
    level2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]])
    out = pool_features([level1, level2], mask)
    assert out.shape == (2, 3)
    # Unit 0, level 1: mask pixels (0,0),(0,1),(1,0),(1,1),(3,3), weights 1/5 each.
    cells = [0, 1, 4, 5, 15]
    expected_l1 = [sum(c * 16 + i for i in cells) / 5 for c in range(2)]
    # Unit 0, level 2: weights [[1, 0], [0, .25]] / 1.25.
    expected_l2 = (1.0 * 1 + 0.25 * 4) / 1.25
    torch.testing.assert_close(out[0], torch.tensor([*expected_l1, expected_l2]))
    # Unit 1's mask is empty: zero vectors at every level (skipped, as in the original).
    assert torch.equal(out[1], torch.zeros(3))


def test_pyramid_encoder_hooks_the_named_layers_and_normalises() -> None:
    encoder = torchvision_pyramid("resnet18", weights=None)
    assert encoder.feature_size == 64 + 64 + 128 + 256 + 512
    assert not any(p.requires_grad for p in encoder.parameters())
    net = encoder.backbone
    images = torch.rand(2, 3, 3, 48, 48)
    masks = (torch.rand(2, 3, 1, 48, 48) > 0.5).to(torch.uint8)
    out = encoder.encode(images, masks, batch_size=4)
    assert out.shape == (2, 3, 1024)
    # Independent forward through resnet18's stages on normalised images.
    x = images.reshape(6, 3, 48, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        c1 = net.conv1((x - mean) / std)
        l1 = net.layer1(net.maxpool(net.relu(net.bn1(c1))))
        l2 = net.layer2(l1)
        l3 = net.layer3(l2)
        l4 = net.layer4(l3)
        expected = pool_features([c1, l1, l2, l3, l4], masks.reshape(6, 1, 48, 48).float())
    torch.testing.assert_close(out.reshape(6, -1), expected, rtol=1e-4, atol=1e-5)
    # uint8 images are read as 0..255.
    out8 = encoder.encode((images * 255).round().to(torch.uint8), masks)
    torch.testing.assert_close(out8, out, rtol=0, atol=0.05)


def test_pyramid_encoder_sizes_and_errors() -> None:
    assert torchvision_pyramid("resnet50", weights=None).feature_size == 3904
    from bench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="layer4x"):
        PyramidEncoder(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)), ["layer4x"])
    with pytest.raises(UnknownNameError, match="resnet50"):
        torchvision_pyramid("resnet5O", weights=None)


# --- the documented equations, written out -------------------------------------------------------


def _lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's LSTM cell equations (gate order i, f, g, o)."""
    z = w_ih @ x + b_ih + w_hh @ h + b_hh
    i, f, g, o = z.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def reference_decoder(sd: dict, features: torch.Tensor, tokens: torch.Tensor):
    """(log-probs [B, T, V], alpha [B, T, k]) from the state dict, one sample at a time."""
    w = {k: v.double() for k, v in sd.items()}
    all_logp, all_alpha = [], []
    for b in range(features.shape[0]):
        f = features[b].double()
        mean = f.mean(0)
        h = torch.tanh(w["init_h.0.weight"] @ mean + w["init_h.0.bias"])
        c = torch.tanh(w["init_c.0.weight"] @ mean + w["init_c.0.bias"])
        logps, alphas = [], []
        for t in range(tokens.shape[1] - 1):
            q = w["attend.query_to_hidden.weight"] @ h + w["attend.query_to_hidden.bias"]
            scores = torch.stack(
                [
                    w["attend.output.0.weight"][0]
                    @ torch.tanh(
                        q + w["attend.key_to_hidden.weight"] @ f[i] + w["attend.key_to_hidden.bias"]
                    )
                    + w["attend.output.0.bias"][0]
                    for i in range(f.shape[0])
                ]
            )
            alpha = torch.exp(scores - torch.logsumexp(scores, 0))
            attended = (alpha[:, None] * f).sum(0)
            gate = torch.sigmoid(w["feature_gate.0.weight"] @ h + w["feature_gate.0.bias"])
            x = torch.cat([w["embedding.weight"][tokens[b, t]], gate * attended])
            h, c = _lstm_cell(
                x,
                h,
                c,
                w["lstm.weight_ih"],
                w["lstm.weight_hh"],
                w["lstm.bias_ih"],
                w["lstm.bias_hh"],
            )
            logits = w["output.1.weight"] @ h + w["output.1.bias"]
            logps.append(logits - torch.logsumexp(logits, 0))
            alphas.append(alpha)
        all_logp.append(torch.stack(logps))
        all_alpha.append(torch.stack(alphas))
    return torch.stack(all_logp), torch.stack(all_alpha)


def reference_lm_logprob(sd: dict, tokens: list[int], stop: int, layers: int = 2) -> float:
    """log p(tokens[1:] | tokens[0]) under the 2-layer LSTM LM, cut after the first <stop>."""
    w = {k: v.double() for k, v in sd.items()}
    hidden = w["lstm.weight_hh_l0"].shape[1]
    h = [torch.zeros(hidden, dtype=torch.float64) for _ in range(layers)]
    c = [torch.zeros(hidden, dtype=torch.float64) for _ in range(layers)]
    total = 0.0
    for t in range(len(tokens) - 1):
        x = w["embedding.weight"][tokens[t]]
        for layer in range(layers):
            h[layer], c[layer] = _lstm_cell(
                x,
                h[layer],
                c[layer],
                w[f"lstm.weight_ih_l{layer}"],
                w[f"lstm.weight_hh_l{layer}"],
                w[f"lstm.bias_ih_l{layer}"],
                w[f"lstm.bias_hh_l{layer}"],
            )
            x = h[layer]
        logits = w["output.0.weight"] @ x + w["output.0.bias"]
        total += float(logits[tokens[t + 1]] - torch.logsumexp(logits, 0))
        if tokens[t + 1] == stop:
            break
    return total


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def _tiny(vocab: Vocab, feature_size: int = 5, **kw) -> tuple[Decoder, LanguageModel]:
    dec = Decoder(
        DecoderConfig(
            vocab_size=len(vocab),
            feature_size=feature_size,
            embedding_size=kw.get("embedding_size", 4),
            hidden_size=kw.get("hidden_size", 6),
            length=kw.get("length", 5),
        )
    )
    lm = LanguageModel(
        LanguageModelConfig(
            vocab_size=len(vocab), pad_index=vocab.pad, embedding_size=4, hidden_size=6
        )
    )
    _randomise(dec, kw.get("scale", 0.5))
    _randomise(lm, 0.5)
    return dec.eval(), lm.eval()


def test_teacher_forced_loss_and_attention_penalty_equal_hand_computation() -> None:
    vocab = Vocab(("red", "dog", "sky"))
    dec, _ = _tiny(vocab)
    features = torch.randn(3, 2, 5)
    tokens = vocab.encode_batch(["red dog", "sky", "red red sky"], length=4)  # [3, 5], padded
    with torch.no_grad():
        total, nll, penalty = dec.loss(features, tokens, pad=vocab.pad, penalty_weight=0.7)
    logp, alpha = reference_decoder(dec.state_dict(), features, tokens)
    targets = tokens[:, 1:]
    picked = [
        float(logp[b, t, targets[b, t]])
        for b in range(3)
        for t in range(4)
        if targets[b, t] != vocab.pad
    ]
    assert len(picked) == 3 + 2 + 4  # words + <stop>; pads ignored
    expected_nll = -sum(picked) / len(picked)
    # Attention summed over all 4 steps (also those whose target is <pad>), per exemplar.
    expected_penalty = float(((1 - alpha.sum(dim=1)) ** 2).mean())
    assert math.isclose(float(nll), expected_nll, rel_tol=1e-5)
    assert math.isclose(float(penalty), expected_penalty, rel_tol=1e-5)
    assert math.isclose(float(total), expected_nll + 0.7 * expected_penalty, rel_tol=1e-5)
    with torch.no_grad():
        ours_logp, ours_alpha = dec(features, tokens)
    torch.testing.assert_close(ours_logp.double(), logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_alpha.double(), alpha, rtol=1e-5, atol=1e-6)


def test_lm_sequence_logprob_masks_after_first_stop() -> None:
    vocab = Vocab(("red", "dog"))
    _, lm = _tiny(vocab)
    seq = [vocab.start, 0, 1, vocab.stop, 0, vocab.stop]
    with torch.no_grad():
        got = float(lm.sequence_logprob(torch.tensor([seq]), stop=vocab.stop)[0])
    assert math.isclose(got, reference_lm_logprob(lm.state_dict(), seq, vocab.stop), rel_tol=1e-5)
    assert content_mask(torch.tensor([[0, 5, 1, 5]]), stop=5).tolist() == [
        [True, True, False, False]
    ]


def test_lm_scores_stop_at_the_first_stop_of_a_padded_caption() -> None:
    """The original's LM score also adds the token after the first <stop> of a padded caption
    (its mask is one position late); ours, in both the module and the reranker's prefix-tree
    version, counts up to and including the first <stop> only."""
    vocab = Vocab(("red", "dog"))
    _, lm = _tiny(vocab)
    red, dog, stop, pad = vocab.id("red"), vocab.id("dog"), vocab.stop, vocab.pad
    rows = [[red, stop, pad, pad], [red, dog, stop, stop], [dog, stop, red, dog]]
    tokens = torch.tensor(rows)
    with torch.no_grad():
        tree = lm_logprob(lm, tokens, start=vocab.start, stop=stop)
        module = lm.sequence_logprob(
            torch.cat([torch.full((3, 1), vocab.start), tokens], dim=1), stop=stop, pad=pad
        )
    for row, a, b in zip(rows, tree.tolist(), module.tolist(), strict=True):
        seq = [vocab.start, *row]
        want = reference_lm_logprob(lm.state_dict(), seq, stop)
        cut = seq.index(stop) + 1  # the original would also count seq[cut]
        late = reference_lm_logprob(lm.state_dict(), seq[: cut + 1], stop=-1)
        assert math.isclose(a, want, rel_tol=1e-5) and math.isclose(b, want, rel_tol=1e-5)
        assert abs(late - want) > 1e-3  # the original's value is another number


# --- released checkpoints -------------------------------------------------------------------------


def _released_pair(feature_size: int = 40) -> tuple[Vocab, Decoder, LanguageModel]:
    vocab = Vocab(tuple(WORDS))  # 14 words -> 18 ids, as in the reference's example
    dec = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=feature_size))
    lm = LanguageModel(LanguageModelConfig(vocab_size=len(vocab), pad_index=vocab.pad))
    _randomise(dec, 0.05)
    _randomise(lm, 0.05)
    return vocab, dec, lm


def test_released_checkpoint_loads_and_matches_documented_equations(tmp_path: Path) -> None:
    vocab, dec, lm = _released_pair()
    path = tmp_path / "milan-base.pth"
    encoder_config = {"config": "resnet101", "pretrained": True}
    ck.write_released_format(path, dec, lm, vocab, encoder_config)
    assert "confection" not in sys.modules  # the writer's stand-in module is gone again
    # The file really references spaCy's class: a plain weights-only load refuses it.
    with pytest.raises(Exception, match="confection"):
        torch.load(path, weights_only=True)

    model = ck.load_released(path)
    assert len(model.vocab) == 18 and model.vocab.tokens == tuple(WORDS)
    assert model.decoding == DecodingDefaults(strategy="rerank", temperature=0.2, beam_size=50)
    assert model.encoder_config == {**encoder_config, "class": "PyramidConvEncoder"}
    assert model.decoder.config.feature_size == 40 and model.decoder.config.hidden_size == 512
    assert model.lm is not None and model.lm_token_map is None

    features = torch.randn(2, 3, 40)
    tokens = vocab.encode_batch(["the red dog runs", "a blue sky"], length=5)
    ref_logp, ref_alpha = reference_decoder(dec.state_dict(), features, tokens)
    with torch.no_grad():
        logp, alpha = model.decoder(features, tokens)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=1e-4, atol=1e-5)

    sequences = [
        [vocab.start, vocab.id("red"), vocab.id("dog"), vocab.stop, vocab.id("sky")],
        [vocab.start, vocab.id("a"), vocab.id("blue"), vocab.id("sky"), vocab.id("with")],
    ]
    with torch.no_grad():
        got = model.lm.sequence_logprob(torch.tensor(sequences), stop=vocab.stop)
    for seq, value in zip(sequences, got.tolist(), strict=True):
        ref = reference_lm_logprob(lm.state_dict(), seq, vocab.stop)
        assert math.isclose(value, ref, rel_tol=1e-4, abs_tol=1e-4)


def test_attention_width_is_the_smaller_of_hidden_and_feature_size() -> None:
    """MILAN's ``Attention`` maps query and keys to ``min(query_size, key_size)`` values unless
    told a width: 512 for the released 3904-feature pyramid, the feature size below 512."""
    sizes = {}
    for feats, explicit in ((3904, None), (512, None), (256, None), (128, None), (128, 64)):
        config = DecoderConfig(vocab_size=6, feature_size=feats, attention_hidden_size=explicit)
        dec = Decoder(config)
        sizes[feats, explicit] = (
            config.attention_size,
            tuple(dec.attend.query_to_hidden.weight.shape),
            tuple(dec.attend.key_to_hidden.weight.shape),
            tuple(dec.attend.output[0].weight.shape),
        )
    assert sizes == {
        (3904, None): (512, (512, 512), (512, 3904), (1, 512)),
        (512, None): (512, (512, 512), (512, 512), (1, 512)),
        (256, None): (256, (256, 512), (256, 256), (1, 256)),
        (128, None): (128, (128, 512), (128, 128), (1, 128)),
        (128, 64): (64, (64, 512), (64, 128), (1, 64)),
    }


def test_released_checkpoint_with_256_features_loads_and_decodes(tmp_path: Path) -> None:
    """A released-format file whose encoder gives 256 features (fewer than the 512 hidden
    units) has the original's 256-wide attention; it loads, its decoder matches the documented
    equations, and it decodes with every strategy."""
    vocab, dec, lm = _released_pair(feature_size=256)
    path = tmp_path / "milan-small.pth"
    ck.write_released_format(path, dec, lm, vocab, {"config": "resnet18"})
    raw = ck._safe_torch_load(path)
    assert raw["properties"]["attention_hidden_size"] is None  # as in the released files
    state = raw["state_dict"]
    # The original's shapes for hidden 512 and 256 features (reference/milan-checkpoint.md,
    # with the attention min(512, 256) = 256 wide).
    assert tuple(state["attend.query_to_hidden.weight"].shape) == (256, 512)
    assert tuple(state["attend.key_to_hidden.weight"].shape) == (256, 256)
    assert tuple(state["attend.output.0.weight"].shape) == (1, 256)
    assert tuple(state["lstm.weight_ih"].shape) == (2048, 128 + 256)

    model = ck.load_released(path)
    assert model.decoder.config.feature_size == 256 and model.decoder.config.attention_size == 256
    features = torch.randn(3, 15, 256)
    tokens = vocab.encode_batch(["the red dog runs", "a blue sky", "white clouds"], length=5)
    ref_logp, ref_alpha = reference_decoder(dict(state), features, tokens)
    with torch.no_grad():
        logp, alpha = model.decoder(features, tokens)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=1e-4, atol=1e-5)
    for strategy in ("rerank", "beam", "greedy"):
        decoded = model.describe(features, strategy=strategy, beam_size=10)
        assert len(decoded) == 3
        for d in decoded:
            assert d.text == model.vocab.reconstruct(d.tokens)
            assert math.isfinite(d.score) and d.logp <= 0.0
            assert (d.lm_logp is not None) == (strategy == "rerank")


def test_released_checkpoint_with_a_wrong_attention_width_is_refused(tmp_path: Path) -> None:
    """A file whose attention width is not what its properties say is a clear error."""
    vocab = Vocab(tuple(WORDS))
    dec = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=256, attention_hidden_size=512))
    path = tmp_path / "milan-wrong.pth"
    ck.write_released_format(path, dec, None, vocab, {"config": "resnet18"})
    obj = ck._safe_torch_load(path)
    obj["properties"]["attention_hidden_size"] = None  # claims the default width, min(512, 256)
    torch.save(obj, path)
    with pytest.raises(ck.CheckpointError, match="attend.query_to_hidden"):
        ck.load_released(path)
    obj["properties"]["attention_hidden_size"] = 512  # says what it holds: loads
    torch.save(obj, path)
    assert ck.load_released(path).decoder.config.attention_size == 512


def test_released_loader_reads_spacy_config_as_plain_data(tmp_path: Path) -> None:
    vocab, dec, lm = _released_pair(feature_size=8)
    path = tmp_path / "milan-cls.pth"
    ck.write_released_format(path, dec, lm, vocab, {"config": "resnet50"}, nlp_bytes=b"\x00spacy")
    raw = ck._safe_torch_load(path)
    nlp = raw["properties"]["indexer"]["properties"]["tokenize"]["properties"]["nlp"]
    config, blob = nlp
    assert type(config).__name__ == "OrderedDict" and config["nlp"]["lang"] == "en"
    assert config.is_interpolated is True and config.section_order[1] == "nlp"
    assert blob == b"\x00spacy"


_CALLS: list[str] = []


def _record_call(what: str) -> str:
    _CALLS.append(what)
    return what


class _Exploit:
    def __reduce__(self):
        return (_record_call, ("code ran",))


def test_released_loader_errors(tmp_path: Path) -> None:
    vocab, dec, lm = _released_pair(feature_size=8)
    with pytest.raises(ck.CheckpointError, match="No MILAN checkpoint"):
        ck.load_released(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    ck.write_released_format(good, dec, lm, vocab, {"config": "resnet101"})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.load_released(truncated)
    exploit = tmp_path / "exploit.pth"
    torch.save({"properties": {}, "state_dict": {}, "payload": _Exploit()}, exploit)
    with pytest.raises(ck.CheckpointError, match="not allowed"):
        ck.load_released(exploit)
    assert _CALLS == []
    plain = tmp_path / "plain.pth"
    torch.save(dec.state_dict(), plain)
    with pytest.raises(ck.CheckpointError, match="'properties'"):
        ck.load_released(plain)
    lemma = tmp_path / "lemma.pth"
    obj = ck._safe_torch_load(good)
    obj["properties"]["indexer"]["properties"]["tokenize"]["properties"]["lemmatize"] = True
    torch.save(obj, lemma)
    with pytest.raises(ck.CheckpointError, match="lemmatize"):
        ck.load_released(lemma)
    bad_shape = tmp_path / "bad_shape.pth"
    obj = ck._safe_torch_load(good)
    obj["state_dict"]["lstm.weight_hh"] = torch.zeros(3, 3)
    torch.save(obj, bad_shape)
    with pytest.raises(ck.CheckpointError, match="decoder weights"):
        ck.load_released(bad_shape)


def test_released_language_model_with_its_own_vocabulary_is_mapped(tmp_path: Path) -> None:
    vocab, dec, _ = _released_pair(feature_size=8)
    lm_vocab = Vocab(tuple(reversed(WORDS[:10])))
    lm = LanguageModel(LanguageModelConfig(vocab_size=len(lm_vocab), pad_index=lm_vocab.pad))
    _randomise(lm, 0.05)
    path = tmp_path / "milan-gen.pth"
    ck.write_released_format(path, dec, lm, vocab, {"config": "resnet101"}, lm_vocab=lm_vocab)
    model = ck.load_released(path)
    assert model.lm_vocab == lm_vocab and model.lm_token_map is not None
    words = ["red", "sky", "clouds"]  # "clouds" is not in the LM's vocabulary -> <unk>
    tokens = torch.tensor([[vocab.id(w) for w in words] + [vocab.stop]])
    with torch.no_grad():
        got = float(
            lm_logprob(
                model.lm, tokens, start=vocab.start, stop=vocab.stop, token_map=model.lm_token_map
            )
        )
    lm_ids = [lm_vocab.start, lm_vocab.id("red"), lm_vocab.id("sky"), lm_vocab.unk, lm_vocab.stop]
    assert math.isclose(
        got, reference_lm_logprob(lm.state_dict(), lm_ids, lm_vocab.stop), rel_tol=1e-4
    )


def test_safetensors_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    vocab, dec, lm = _released_pair(feature_size=16)
    model = MilanModel(
        vocab=vocab,
        decoder=dec.eval(),
        lm=lm.eval(),
        decoding=DecodingDefaults(beam_size=4),
        encoder_config={"arch": "resnet101", "layers": ["conv1"]},
    )
    ck.save(model, tmp_path / "milan")
    assert sorted(p.name for p in (tmp_path / "milan").iterdir()) == [
        ck.CONFIG_FILE,
        ck.WEIGHTS_FILE,
    ]
    again = ck.load(tmp_path / "milan")
    assert again.vocab == vocab and again.decoding == model.decoding
    assert again.encoder_config == model.encoder_config
    features = torch.randn(3, 4, 16)
    tokens = vocab.encode_batch(["the red dog", "sky", "a white cloud"], length=6)
    with torch.no_grad():
        assert torch.equal(again.decoder(features, tokens)[0], dec(features, tokens)[0])
        assert torch.equal(again.lm(tokens), lm(tokens))
    assert again.describe(features) == model.describe(features)
    (tmp_path / "milan" / ck.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ck.CheckpointError, match="safetensors"):
        ck.load(tmp_path / "milan")
    with pytest.raises(ck.CheckpointError, match="Expected a saved MILAN model"):
        ck.load(tmp_path / "nothing")


def test_version_1_models_keep_their_hidden_size_wide_attention(tmp_path: Path) -> None:
    """Our format's version 1 (None meant ``hidden_size``) still loads, with its old width."""
    vocab, _, lm = _released_pair(feature_size=16)
    dec = Decoder(DecoderConfig(vocab_size=len(vocab), feature_size=16, attention_hidden_size=512))
    model = MilanModel(vocab=vocab, decoder=dec.eval(), lm=lm.eval())
    ck.save(model, tmp_path / "milan")
    meta_path = tmp_path / "milan" / ck.CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == 2
    meta["format_version"] = 1
    meta["decoder"]["attention_hidden_size"] = None
    meta_path.write_text(json.dumps(meta))
    again = ck.load(tmp_path / "milan")
    assert again.decoder.config.attention_size == 512
    features = torch.randn(2, 3, 16)
    tokens = vocab.encode_batch(["the red dog", "sky"], length=4)
    with torch.no_grad():
        assert torch.equal(again.decoder(features, tokens)[0], dec(features, tokens)[0])
    meta["format_version"] = 2  # read with today's rule, the 512-wide weights do not fit
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="decoder weights"):
        ck.load(tmp_path / "milan")
    meta["format_version"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="format version 3"):
        ck.load(tmp_path / "milan")


def test_fetch_released_downloads_once_and_pins_the_checksum(tmp_path: Path, serve_bytes) -> None:
    vocab, dec, lm = _released_pair(feature_size=8)
    ck.write_released_format(tmp_path / "src.pth", dec, lm, vocab, {"config": "resnet101"})
    base, hits = serve_bytes((tmp_path / "src.pth").read_bytes())
    path = ck.fetch_released("base", tmp_path / "models", base_url=base, timeout=5)
    assert path.name == "milan-base.pth" and hits == ["/milan-base.pth"]
    assert ck.load_released(path).vocab == vocab
    ck.fetch_released("base", tmp_path / "models", base_url=base, download=False)
    assert len(hits) == 1
    from bench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="base"):
        ck.released_url("bsae")


# --- decoding -------------------------------------------------------------------------------


def _table_step(table: dict[tuple[int, ...], list[float]]):
    """A step function reading log-probs from a table keyed by the prefix ``<start> ...``.

    The state holds the tokens before the last one ([B, R, t], empty at first)."""

    def step(tokens, state, t):
        prefix = state[0]
        b, r = tokens.shape
        rows = []
        for i in range(b):
            for j in range(r):
                rows.append(table[(*prefix[i, j].tolist(), int(tokens[i, j]))])
        logp = torch.tensor(rows, dtype=torch.float64).reshape(b, r, -1)
        new_prefix = torch.cat([prefix, tokens.unsqueeze(-1)], dim=-1)
        return logp, (new_prefix,)

    return step


def _enumerate(table, vocab_size: int, stop: int, steps: int, start: int):
    """Every distinct finished sequence with its summed log-prob (stop ends it)."""
    results = {}
    for seq in itertools.product(range(vocab_size), repeat=steps):
        total, prefix, emitted = 0.0, (start,), []
        for tok in seq:
            total += table[prefix][tok]
            emitted.append(tok)
            prefix = prefix + (tok,)
            if tok == stop:
                break
        padded = tuple(emitted + [stop] * (steps - len(emitted)))
        results[padded] = total
    return results


def _log(p: list[float]) -> list[float]:
    return [math.log(x) if x > 0 else -1e9 for x in p]


def test_beam_search_with_beam_equal_to_vocabulary_finds_the_best_on_a_garden_path() -> None:
    # Tokens a=0, b=1, c=2, <stop>=3; <start>=4. Greedy takes "a" (0.6) but every continuation
    # of "a" is flat; "b" (0.4) is followed by "c" (0.9) then <stop> (0.9).
    start, stop, vocab_size = 4, 3, 4
    flat = _log([0.25, 0.25, 0.25, 0.25])
    table = {(start,): _log([0.6, 0.4, 0.0, 0.0])}
    for p in itertools.product(range(vocab_size), repeat=1):
        table[(start, *p)] = flat
    table[(start, 1)] = _log([0.05, 0.03, 0.9, 0.02])
    for p in itertools.product(range(vocab_size), repeat=2):
        table[(start, *p)] = flat
    table[(start, 1, 2)] = _log([0.04, 0.03, 0.03, 0.9])
    everything = _enumerate(table, vocab_size, stop, 3, start)
    best_seq, best_score = max(everything.items(), key=lambda kv: kv[1])
    assert best_seq == (1, 2, 3)

    initial = (torch.zeros((1, 1, 0), dtype=torch.long),)
    beams = beam_search(
        _table_step(table), initial, batch_size=1, start=start, stop=stop,
        beam_size=vocab_size, max_steps=3,
    )  # fmt: skip
    assert tuple(beams.tokens[0, 0].tolist()) == best_seq
    assert math.isclose(float(beams.logp[0, 0]), best_score, rel_tol=1e-12)
    for row, score in zip(beams.tokens[0].tolist(), beams.logp[0].tolist(), strict=True):
        assert math.isclose(score, everything[tuple(row)], rel_tol=1e-12)
    greedy, _ = greedy_search(
        _table_step(table), initial, batch_size=1, start=start, stop=stop, max_steps=3
    )
    assert greedy[0, 0].item() == 0  # greedy is led down the garden path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_keeping_every_prefix_returns_the_exact_top_sequences(seed: int) -> None:
    """With beam >= V^2 on 3 steps no prefix is ever dropped: the beams are the exact top-W
    sequences of the enumeration, <stop> semantics included."""
    start, stop, vocab_size = 5, 4, 5
    gen = torch.Generator().manual_seed(seed)
    table = {}
    for length in range(3):
        for p in itertools.product(range(vocab_size), repeat=length):
            table[(start, *p)] = F.log_softmax(
                torch.randn(vocab_size, generator=gen, dtype=torch.float64) * 2, 0
            ).tolist()
    everything = _enumerate(table, vocab_size, stop, 3, start)
    ranked = sorted(everything.items(), key=lambda kv: -kv[1])
    width = vocab_size**2
    beams = beam_search(
        _table_step(table), (torch.zeros((1, 1, 0), dtype=torch.long),),
        batch_size=1, start=start, stop=stop, beam_size=width, max_steps=3,
    )  # fmt: skip
    got = [
        (tuple(r), s) for r, s in zip(beams.tokens[0].tolist(), beams.logp[0].tolist(), strict=True)
    ]
    assert [s for _, s in got] == pytest.approx([s for _, s in ranked[:width]], rel=1e-12)
    assert {r for r, _ in got} == {r for r, _ in ranked[:width]} or got[-1][1] == ranked[width][1]


def test_reranking_changes_the_winner_when_the_lm_says_so() -> None:
    vocab = Vocab(("common", "rare"))
    lm = LanguageModel(
        LanguageModelConfig(
            vocab_size=len(vocab), pad_index=vocab.pad, embedding_size=3, hidden_size=4
        )
    )
    with torch.no_grad():
        for p in lm.parameters():
            p.zero_()  # every LSTM state is 0: the LM's distribution is softmax(output bias)
        lm.output[0].bias[vocab.id("common")] = 5.0
    log_z = math.log(math.exp(5.0) + (len(vocab) - 1))
    common, rare, stop = vocab.id("common"), vocab.id("rare"), vocab.stop
    beams = Beams(
        tokens=torch.tensor([[[common, common, stop], [rare, rare, stop]]]),
        logp=torch.tensor([[-1.0, -1.5]]),
    )
    lm_common = 2 * (5.0 - log_z) + (0.0 - log_z)
    lm_rare = 3 * (0.0 - log_z)
    scores, lm_lp = rerank_scores(beams, lm, temperature=0.2, start=vocab.start, stop=stop)
    torch.testing.assert_close(lm_lp[0], torch.tensor([lm_common, lm_rare]))
    torch.testing.assert_close(
        scores[0], torch.tensor([-1.0 - 0.2 * lm_common, -1.5 - 0.2 * lm_rare])
    )
    assert rerank(beams, lm, temperature=0.2, start=vocab.start, stop=stop).tolist() == [1]
    assert rerank(beams, lm, temperature=0.0, start=vocab.start, stop=stop).tolist() == [0]


def test_choose_passes_over_empty_beams_unless_all_are_empty() -> None:
    vocab = Vocab(("red", "dog"))
    red, stop, unk = vocab.id("red"), vocab.stop, vocab.unk
    tokens = torch.tensor(
        [
            [[stop, stop], [unk, stop], [red, stop]],  # empty, no word, a word
            [[stop, stop], [unk, stop], [stop, stop]],  # nothing has a word
        ]
    )
    scores = torch.tensor([[0.0, -1.0, -2.0], [-3.0, -1.0, -2.0]])
    words = len(vocab.tokens)
    assert has_words(tokens, stop=stop, words=words).tolist() == [
        [False, False, True],
        [False, False, False],
    ]
    assert choose(scores, tokens, stop=stop, words=words).tolist() == [2, 1]
    assert choose(scores, tokens, stop=stop, words=None).tolist() == [0, 1]


def test_decoding_does_not_describe_a_unit_with_the_empty_beam_that_wpmi_prefers() -> None:
    # The decoder's output is its bias alone: <stop> first is likelier than any word but "red".
    # The LM finds <stop> after <start> very unlikely, so -0.2 log p_LM lifts the empty beam
    # above "red" in the rerank; the original code would describe the unit with nothing.
    vocab = Vocab(("red", "dog"))
    dec, lm = _tiny(vocab, feature_size=3, length=3)
    with torch.no_grad():
        dec.output[1].weight.zero_()
        dec.output[1].bias.fill_(-20.0)
        dec.output[1].bias[[vocab.id("red"), vocab.id("dog"), vocab.stop]] = torch.tensor(
            [0.0, -6.0, -1.0]
        )
        for p in lm.parameters():
            p.zero_()
        lm.output[0].bias.fill_(-20.0)
        lm.output[0].bias[[vocab.id("red"), vocab.id("dog"), vocab.stop]] = torch.tensor(
            [4.0, 4.0, -40.0]
        )
    features = torch.randn(1, 2, 3)
    kept = decode(dec, features, vocab, lm=lm, strategy="rerank", beam_size=6, allow_empty=True)
    assert kept[0].tokens == ()
    chosen = decode(dec, features, vocab, lm=lm, strategy="rerank", beam_size=6)
    assert chosen[0].tokens and chosen[0].text
    assert chosen[0].score < kept[0].score  # it passed over the empty beam's higher wPMI


@pytest.mark.parametrize("strategy", ["rerank", "beam", "greedy"])
def test_batched_decoding_equals_one_unit_at_a_time(strategy: str) -> None:
    vocab = Vocab(tuple(WORDS[:8]))
    dec, lm = _tiny(vocab, feature_size=7, hidden_size=8, length=6, scale=0.8)
    dec, lm = dec.double(), lm.double()
    features = torch.randn(5, 3, 7, dtype=torch.float64)
    batched = decode(dec, features, vocab, lm=lm, strategy=strategy, beam_size=6, batch_size=5)
    single = decode(dec, features, vocab, lm=lm, strategy=strategy, beam_size=6, batch_size=1)
    assert [d.tokens for d in batched] == [d.tokens for d in single]
    for a, b in zip(batched, single, strict=True):
        assert a.text == vocab.reconstruct(a.tokens)
        assert a.score == pytest.approx(b.score, rel=1e-10)
        assert a.logp == pytest.approx(b.logp, rel=1e-10)
    assert len({d.tokens for d in batched}) > 1  # the units are not all described alike


def test_skipping_finished_beams_changes_no_result() -> None:
    # A decoder biased towards <stop> makes beams finish at different steps, so the skipped
    # rows are a real mix of finished and running ones.
    vocab = Vocab(tuple(WORDS[:6]))
    dec, _ = _tiny(vocab, feature_size=5, hidden_size=8, length=7, scale=0.8)
    dec = dec.double()
    with torch.no_grad():
        dec.output[1].bias[vocab.stop] += 1.5
    features = torch.randn(4, 3, 5, dtype=torch.float64)
    runs = {}
    with torch.no_grad():
        for skip in (False, True):
            step, state = decoder_step(dec, features, stop=vocab.stop if skip else None)
            beams = beam_search(
                step, state, batch_size=4, start=vocab.start, stop=vocab.stop, beam_size=8,
                max_steps=7,
            )  # fmt: skip
            step, state = decoder_step(dec, features, stop=vocab.stop if skip else None)
            greedy = greedy_search(
                step, state, batch_size=4, start=vocab.start, stop=vocab.stop, max_steps=7
            )
            runs[skip] = beams, greedy
    (full, greedy_full), (skipped, greedy_skipped) = runs[False], runs[True]
    lengths = (full.tokens != vocab.stop).sum(dim=2)
    assert lengths.min() < lengths.max()  # beams finished at different steps
    assert torch.equal(full.tokens, skipped.tokens)
    torch.testing.assert_close(full.logp, skipped.logp, rtol=1e-12, atol=1e-12)
    assert torch.equal(greedy_full[0], greedy_skipped[0])
    torch.testing.assert_close(greedy_full[1], greedy_skipped[1], rtol=1e-12, atol=1e-12)


def test_greedy_scores_stop_summing_at_stop() -> None:
    """A greedy description's log-prob is summed up to and including its first <stop>; the
    original's greedy decoding keeps adding the arg-max log-probs of the steps after it."""
    vocab = Vocab(tuple(WORDS[:6]))
    dec, _ = _tiny(vocab, feature_size=5, hidden_size=8, length=6, scale=0.8)
    dec = dec.double()
    with torch.no_grad():
        dec.output[1].bias[vocab.stop] += 1.5  # some units stop early
    features = torch.randn(6, 3, 5, dtype=torch.float64)
    decoded = decode(dec, features, vocab, strategy="greedy")
    with torch.no_grad():
        # Free-running arg-max over all 6 steps, never stopping: what the original sums.
        step, state = decoder_step(dec, features)
        last = torch.full((6, 1), vocab.start)
        running = torch.zeros(6, dtype=torch.float64)
        for t in range(6):
            logp, state = step(last, state, t)
            best_logp, last = logp.max(dim=-1)
            running += best_logp[:, 0]
    early = 0
    for u, d in enumerate(decoded):
        emitted = list(d.tokens) + ([vocab.stop] if len(d.tokens) < 6 else [])
        tokens = torch.tensor([[vocab.start, *emitted]])
        ref_logp, _ = reference_decoder(dec.state_dict(), features[u : u + 1], tokens)
        want = float(ref_logp[0].gather(1, tokens[:, 1:].T).sum())
        assert d.logp == pytest.approx(want, abs=1e-9) and d.score == d.logp
        if len(emitted) < 6:
            early += 1
            assert running[u] < want - 1e-3  # the original's sum goes on after <stop>
    assert early >= 2


def test_decoder_step_leaves_inactive_rows_alone() -> None:
    vocab = Vocab(tuple(WORDS[:4]))
    dec, _ = _tiny(vocab, feature_size=5)
    features = torch.randn(2, 3, 5)
    keys = dec.attend.project_keys(features)
    h, c = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    tokens = torch.tensor([[0, 1, 2], [3, 0, 1]])
    active = torch.tensor([[True, False, True], [False, False, True]])
    with torch.no_grad():
        logp, h2, c2, _ = dec.step(tokens, h, c, features, keys)
        logp_a, h2_a, c2_a, _ = dec.step(tokens, h, c, features, keys, active)
    torch.testing.assert_close(logp_a[active], logp[active])
    torch.testing.assert_close(h2_a[active], h2[active])
    torch.testing.assert_close(c2_a[active], c2[active])
    assert torch.equal(logp_a[~active], torch.zeros_like(logp[~active]))
    assert torch.equal(h2_a[~active], h[~active]) and torch.equal(c2_a[~active], c[~active])
    with torch.no_grad():
        none = dec.step(tokens, h, c, features, keys, torch.zeros_like(active))
    assert torch.equal(none[0], torch.zeros_like(logp))
    assert torch.equal(none[1], h) and torch.equal(none[2], c)


def test_beam_scores_are_the_decoders_sequence_logprobs() -> None:
    vocab = Vocab(("red", "dog"))
    dec, _ = _tiny(vocab, feature_size=4, length=3, scale=1.0)
    features = torch.randn(2, 3, 4)
    step, state = decoder_step(dec, features)
    with torch.no_grad():
        beams = beam_search(
            step, state, batch_size=2, start=vocab.start, stop=vocab.stop,
            beam_size=len(vocab) ** 2, max_steps=3,
        )  # fmt: skip
        for u in range(2):
            best = beams.tokens[u, 0]
            tokens = torch.cat([torch.tensor([vocab.start]), best]).unsqueeze(0)
            logp, _ = dec(features[u : u + 1], tokens)
            picked = logp[0].gather(1, best.unsqueeze(1)).squeeze(1)
            keep = content_mask(best.unsqueeze(0), stop=vocab.stop)[0]
            assert float(beams.logp[u, 0]) == pytest.approx(float(picked[keep].sum()), abs=1e-5)
            # Exhaustive check: no sequence of 3 tokens scores higher.
            every = torch.tensor(list(itertools.product(range(len(vocab)), repeat=3)))
            inputs = torch.cat([torch.full((len(every), 1), vocab.start), every], dim=1)
            all_logp, _ = dec(features[u : u + 1].expand(len(every), -1, -1), inputs)
            scores = all_logp.gather(2, every.unsqueeze(2)).squeeze(2)
            scores = scores.masked_fill(~content_mask(every, stop=vocab.stop), 0).sum(1)
            assert float(beams.logp[u, 0]) == pytest.approx(float(scores.max()), abs=1e-5)


def test_decode_rejects_bad_strategies() -> None:
    from bench.errors import ConfigError

    vocab = Vocab(("red",))
    dec, _ = _tiny(vocab)
    with pytest.raises(ConfigError, match="needs a language model"):
        decode(dec, torch.randn(1, 2, 5), vocab, strategy="rerank")
    with pytest.raises(ConfigError, match="Unknown MILAN decoding strategy"):
        decode(dec, torch.randn(1, 2, 5), vocab, strategy="sample")
