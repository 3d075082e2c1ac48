"""Metrics: AUROC/AUPRC against hand computations, bootstrap coverage and paired tests, and the
text-similarity wrappers against the libraries called directly with the same models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.errors import ConfigError, DataError, NonFiniteError, UnknownNameError
from metrics.classification import (
    auprc_result,
    auroc,
    auroc_result,
    average_precision,
    midranks,
)
from metrics.result import MetricResult
from metrics.stats import (
    bootstrap_ci,
    bootstrap_means,
    paired_bootstrap,
    significance_groups,
)

# --- AUROC / AUPRC ------------------------------------------------------------------------------

# Positives score {0.9, 0.8, 0.7}; negatives {0.8, 0.7, 0.7, 0.1}: ties across the classes.
TIED_SCORES = [0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.1]
TIED_LABELS = [1, 1, 0, 1, 0, 0, 0]


def test_auroc_hand_computation_with_ties() -> None:
    # 12 positive/negative pairs: 0.9 beats all 4 (4); 0.8 ties one, beats 3 (3.5);
    # 0.7 loses to 0.8, ties two, beats 0.1 (2). AUROC = 9.5 / 12.
    assert auroc(TIED_SCORES, TIED_LABELS) == pytest.approx(9.5 / 12, abs=1e-12)
    # Order of the items must not matter, tied or not.
    perm = [6, 2, 4, 0, 5, 1, 3]
    assert auroc([TIED_SCORES[i] for i in perm], [TIED_LABELS[i] for i in perm]) == pytest.approx(
        9.5 / 12, abs=1e-12
    )


def test_auprc_hand_computation_with_ties() -> None:
    # Thresholds at distinct scores: >=0.9: P=1, R=1/3; >=0.8: P=2/3, R=2/3; >=0.7: P=1/2,
    # R=1; >=0.1 adds no recall. AP = 1/3*1 + 1/3*2/3 + 1/3*1/2 = 13/18.
    # (Breaking ties positives-first would give 0.9167, negatives-first 0.6111.)
    assert average_precision(TIED_SCORES, TIED_LABELS) == pytest.approx(13 / 18, abs=1e-12)
    perm = [3, 5, 1, 6, 0, 4, 2]
    assert average_precision(
        [TIED_SCORES[i] for i in perm], [TIED_LABELS[i] for i in perm]
    ) == pytest.approx(13 / 18, abs=1e-12)


def test_auroc_auprc_extremes_and_bool_labels() -> None:
    y = np.array([True, True, False, False])
    assert auroc([4, 3, 2, 1], y) == 1.0
    assert auroc([1, 2, 3, 4], y) == 0.0
    assert auroc([1, 1, 1, 1], y) == 0.5
    assert average_precision([4, 3, 2, 1], y) == 1.0
    # All tied: one threshold, precision = prevalence.
    assert average_precision([1, 1, 1, 1], y) == pytest.approx(0.5)


def test_midranks() -> None:
    np.testing.assert_array_equal(midranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    np.testing.assert_array_equal(midranks([5, 5, 5]), [2, 2, 2])


def test_classification_errors() -> None:
    with pytest.raises(DataError, match="at least one positive and one negative"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match="0/1 or bool"):
        average_precision([0.1, 0.2], [1, 2])
    with pytest.raises(DataError, match="as many labels as scores"):
        auroc([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(NonFiniteError):
        auroc([0.1, float("nan")], [1, 0])


def test_against_sklearn_when_installed() -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="sklearn is optional here")
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        scores = rng.integers(0, 6, size=n).astype(float)  # heavy ties
        labels = rng.integers(0, 2, size=n)
        if labels.min() == labels.max():
            labels[0] = 1 - labels[0]
        assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
        assert average_precision(scores, labels) == pytest.approx(
            metrics.average_precision_score(labels, scores)
        )


def test_classification_results_record_settings() -> None:
    r = auroc_result([TIED_SCORES, [2, 1]], [TIED_LABELS, [1, 0]])
    assert r.metric == "auroc" and r.values == pytest.approx((9.5 / 12, 1.0))
    assert "ties" in r.settings
    p = auprc_result([TIED_SCORES], [TIED_LABELS])
    assert p.mean == pytest.approx(13 / 18)


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_interval_covers_true_mean_about_95_percent() -> None:
    # Skewed per-unit scores (Beta(2, 5), true mean 2/7), 40 units per dataset.
    rng = np.random.default_rng(12345)
    true_mean = 2 / 7
    trials = 400
    covered = 0
    widths = []
    for t in range(trials):
        values = rng.beta(2.0, 5.0, size=40)
        ci = bootstrap_ci(values, n_resamples=1000, seed=t)
        covered += ci.low <= true_mean <= ci.high
        widths.append(ci.high - ci.low)
        assert ci.low <= ci.mean <= ci.high
    coverage = covered / trials
    assert 0.90 <= coverage <= 0.99, coverage
    # The width is that of a 95% interval of a mean of 40: about 2 * 1.96 * sd / sqrt(40).
    sd = math.sqrt(2 * 5 / ((2 + 5) ** 2 * (2 + 5 + 1)))
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sd / math.sqrt(40), rel=0.1)


def test_bootstrap_is_seeded() -> None:
    v = np.linspace(0, 1, 25) ** 2
    a = bootstrap_ci(v, seed=7, n_resamples=500)
    b = bootstrap_ci(v, seed=7, n_resamples=500)
    c = bootstrap_ci(v, seed=8, n_resamples=500)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.mean == pytest.approx(float(v.mean()))
    assert json.loads(json.dumps(a.to_json()))["confidence"] == 0.95
    # Chunked resampling gives the same means as one block would (indices drawn in order).
    means = bootstrap_means(v, n_resamples=300, seed=1)
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(means, v[rng.integers(0, v.size, size=(300, v.size))].mean(1))


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(NonFiniteError, match="drop failed units"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(DataError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(DataError, match="confidence"):
        bootstrap_ci([0.1, 0.2], confidence=1.5)


def test_paired_bootstrap_detects_real_differences_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.2, size=200)
    better = base + 0.05 + rng.normal(0, 0.02, size=200)
    cmp = paired_bootstrap(better, base, n_resamples=2000, seed=0)
    assert cmp.difference == pytest.approx(float(np.mean(better - base)))
    assert cmp.low > 0 and cmp.p_value < 0.01 and cmp.significant()
    # Same values: no difference at all.
    same = paired_bootstrap(base, base.copy(), n_resamples=500)
    assert same.p_value == 1.0 and same.low == same.high == 0.0
    # Pure noise around the same mean: not significant.
    noise = base + rng.normal(0, 0.05, size=200) - 0.0
    noise -= noise.mean() - base.mean()
    assert paired_bootstrap(noise, base, n_resamples=2000).p_value > 0.5
    # The p-value agrees with the interval: it excludes 0 exactly when p < 0.05.
    for seed in range(15):
        r = np.random.default_rng(100 + seed)
        a = r.normal(0, 1, size=30)
        b = a + r.normal(0.3 * (seed % 3), 1, size=30)
        c = paired_bootstrap(a, b, n_resamples=999, seed=seed)
        excludes_zero = c.low > 0 or c.high < 0
        if abs(c.p_value - 0.05) > 0.01:
            assert excludes_zero == (c.p_value < 0.05)
    with pytest.raises(DataError, match="same units"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_significance_groups() -> None:
    rng = np.random.default_rng(1)
    best = rng.normal(0.8, 0.1, size=150)
    noise = rng.normal(0, 0.05, size=150)
    close = best + noise - noise.mean() - 0.001  # 0.001 below, standard error about 0.004
    worse = best - 0.2 + rng.normal(0, 0.05, size=150)
    worst = best - 0.5 + rng.normal(0, 0.05, size=150)
    g = significance_groups(
        {"worse": worse, "best": best, "close": close, "worst": worst}, n_resamples=2000
    )
    assert g.best == "best"
    assert g.order == ("best", "close", "worse", "worst")
    assert g.group == {"best": 1, "close": 1, "worse": 2, "worst": 3}
    assert g.tied_with_best == ("best", "close")
    assert g.versus_best["worse"].difference > 0 and g.versus_best["worse"].p_value < 0.05
    assert set(g.to_json()["versus_best"]) == {"close", "worse", "worst"}
    # Lower is better (e.g. a cost): the order flips and differences stay "best is better".
    low = significance_groups({"a": best, "b": worst}, higher_is_better=False, n_resamples=500)
    assert low.best == "b" and low.group == {"b": 1, "a": 2}
    assert low.versus_best["a"].difference > 0
    with pytest.raises(DataError, match="same units"):
        significance_groups({"a": [1.0, 2.0], "b": [1.0]})


def test_metric_result_round_trip_and_unavailable() -> None:
    r = MetricResult(metric="x", values=(0.25, 0.75), settings={"model": "m"}, note="n")
    assert r.mean == 0.5
    assert MetricResult.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ValueError, match="reason"):
        MetricResult(metric="x", status="unavailable")


# --- text metrics -------------------------------------------------------------------------------

CANDIDATES = ["red circles", "Blue sky.", "a striped brick wall", "depictions"]
REFERENCES = [
    ["red round things", "circles that are red", "the color red"],
    ["the sky", "blue sky above water", "clouds"],
    ["stripes", "brick walls", "striped patterns on walls"],
    ["grass", "green grass fields", "a field"],
]


@pytest.fixture(scope="module")
def minilm_path() -> str:
    from metrics.text import offline_model_path

    return str(offline_model_path())


@pytest.fixture(scope="module")
def direct_scorer(minilm_path: str):
    from bert_score import BERTScorer

    return BERTScorer(model_type=minilm_path, num_layers=6, device="cpu", nthreads=0)


def test_bertscore_settings_presets() -> None:
    from metrics.text import bertscore_settings

    milan = bertscore_settings("milan")
    assert (milan.model_type, milan.num_layers, milan.idf, milan.rescale_with_baseline) == (
        "roberta-large",
        17,
        True,
        True,
    )
    assert milan.reduce == "max" and milan.lowercase_strip and milan.comparable_with_papers
    dnd = bertscore_settings("dnd")
    assert (dnd.idf, dnd.rescale_with_baseline, dnd.reduce) == (False, False, "mean")
    offline = bertscore_settings("offline")
    assert offline.num_layers == 6 and not offline.rescale_with_baseline
    assert not offline.comparable_with_papers
    assert bertscore_settings("dnd", batch_size=8).comparable_with_papers
    assert not bertscore_settings("dnd", idf=True).comparable_with_papers
    with pytest.raises(UnknownNameError, match="Did you mean 'milan'"):
        bertscore_settings("milam")
    with pytest.raises(ConfigError, match="no rescaling baseline"):
        bertscore_settings("offline", rescale_with_baseline=True)
    with pytest.raises(ConfigError, match="Unknown BERTScore setting"):
        bertscore_settings("offline", idff=True)


def test_bertscore_offline_equals_bert_score_directly(direct_scorer) -> None:
    from metrics.text import OFFLINE_NOTE, bertscore

    result = bertscore(CANDIDATES, REFERENCES, preset="offline", device="cpu")
    # Directly: every (candidate, reference) pair, averaged per candidate.
    flat_c = [c for c, rs in zip(CANDIDATES, REFERENCES, strict=True) for _ in rs]
    flat_r = [r for rs in REFERENCES for r in rs]
    p, r, f = direct_scorer.score(flat_c, flat_r)
    expected_f = f.double().numpy().reshape(4, 3)
    np.testing.assert_allclose(result.values, expected_f.mean(1), atol=1e-6)
    np.testing.assert_allclose(
        result.details["precision"], p.double().numpy().reshape(4, 3).mean(1), atol=1e-6
    )
    np.testing.assert_allclose(result.details["per_reference_f1"], expected_f, atol=1e-6)
    assert result.settings["num_layers"] == 6 and result.settings["rescale_with_baseline"] is False
    assert result.settings["model_identity"]["weights_sha256"]
    assert not result.comparable_with_papers and result.note == OFFLINE_NOTE
    # A related label scores above an unrelated one: the numbers mean something.
    assert result.values[0] > result.values[3]


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # bert-score
def test_bertscore_milan_protocol_equals_bert_score_directly(minilm_path: str, tmp_path) -> None:
    from bert_score import BERTScorer

    from metrics.text import bertscore

    # MILAN's protocol on the local model: lower-case + strip, idf over the references,
    # baseline rescaling (a baseline file written here), best reference per candidate.
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text(
        "LAYER,P,R,F\n" + "".join(f"{i},0.{i}1,0.{i}2,0.{i}3\n" for i in range(7)),
        encoding="utf-8",
    )
    result = bertscore(
        CANDIDATES,
        REFERENCES,
        preset="offline",
        idf=True,
        reduce="max",
        lowercase_strip=True,
        rescale_with_baseline=True,
        baseline_path=str(baseline),
        device="cpu",
    )
    norm = [c.lower().strip(". ") for c in CANDIDATES]
    refs = [[r.lower().strip(". ") for r in rs] for rs in REFERENCES]
    direct = BERTScorer(
        model_type=minilm_path,
        num_layers=6,
        idf=True,
        lang="en",
        rescale_with_baseline=True,
        baseline_path=str(baseline),
        device="cpu",
        nthreads=0,
    )
    direct.compute_idf([r for rs in refs for r in rs])
    p, r, f = direct.score(norm, refs)  # bert-score's multi-reference rule: best reference
    np.testing.assert_allclose(result.values, f.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(result.details["precision"], p.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(result.details["recall"], r.double().numpy(), atol=1e-6)
    assert result.settings["idf"] is True and result.settings["reduce"] == "max"
    # Without idf and with averaging the numbers differ: the settings are really applied.
    plain = bertscore(CANDIDATES, REFERENCES, preset="offline", device="cpu")
    assert not np.allclose(plain.values, result.values, atol=1e-3)


def test_sentence_cosine_offline_equals_direct_computation(minilm_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    from metrics.text import sentence_cosine

    result = sentence_cosine(CANDIDATES, REFERENCES, preset="offline", device="cpu")
    model = SentenceTransformer(minilm_path, device="cpu")
    expected = []
    for c, rs in zip(CANDIDATES, REFERENCES, strict=True):
        ec = model.encode([c])[0]
        er = model.encode(rs)
        cos = er @ ec / (np.linalg.norm(er, axis=1) * np.linalg.norm(ec))
        expected.append(cos.mean())
    np.testing.assert_allclose(result.values, expected, atol=1e-5)
    assert result.metric == "sentence-cosine" and not result.comparable_with_papers
    assert "not comparable" in result.note
    assert result.settings["model"]["name"].endswith("all-MiniLM-L6-v2")
    # Single references work too, and max-reduction picks the best reference.
    single = sentence_cosine(["red"], ["red"], preset="offline", device="cpu")
    assert single.values[0] == pytest.approx(1.0, abs=1e-5)
    best = sentence_cosine(CANDIDATES, REFERENCES, preset="offline", reduce="max", device="cpu")
    assert all(b >= m - 1e-9 for b, m in zip(best.values, result.values, strict=True))


def _tiny_clip():
    import open_clip
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    return model, open_clip.get_tokenizer("ViT-B-16-quickgelu")


def test_clip_text_cosine_equals_direct_computation() -> None:
    import torch

    from metrics.text import OpenClipTextEncoder, clip_text_cosine

    model, tokenizer = _tiny_clip()
    encoder = OpenClipTextEncoder(model, tokenizer, {"name": "tiny random CLIP"})
    result = clip_text_cosine(CANDIDATES, REFERENCES, encoder=encoder)
    expected = []
    with torch.no_grad():
        for c, rs in zip(CANDIDATES, REFERENCES, strict=True):
            ec = torch.nn.functional.normalize(model.encode_text(tokenizer([c])), dim=-1)
            er = torch.nn.functional.normalize(model.encode_text(tokenizer(rs)), dim=-1)
            expected.append(float((er @ ec.T).mean()))
    np.testing.assert_allclose(result.values, expected, atol=1e-5)
    assert result.settings["model"] == {"name": "tiny random CLIP"}
    assert not result.comparable_with_papers  # an injected encoder is not the papers' CLIP


def test_clip_text_cosine_is_unavailable_offline() -> None:
    from metrics.text import clip_text_cosine

    result = clip_text_cosine(CANDIDATES, REFERENCES, preset="offline")
    assert result.status == "unavailable" and result.values == () and result.mean is None
    assert "CLIP" in (result.reason or "") and result.note.startswith("unavailable")
    assert result.to_json()["values"] == []


def test_text_metric_input_errors() -> None:
    from metrics.text import reference_lists, text_cosine

    with pytest.raises(DataError, match="one reference"):
        reference_lists(["a", "b"], ["x"])
    with pytest.raises(DataError, match="at least one reference"):
        reference_lists(["a"], [[]])

    class Zero:
        def encode(self, texts):
            return np.zeros((len(texts), 3))

        def identity(self):
            return {}

    with pytest.raises(DataError, match="non-zero"):
        text_cosine(["a"], ["b"], Zero())
