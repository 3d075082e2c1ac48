"""CLIP presence (bench.presence.ClipPresence): the softmax and the calibrated threshold against
direct computations on hand examples, the faithfulness suite with ``presence=clip`` on a synthetic
target through the offline image-text encoder, and (slow) the open_clip backend's plumbing with a
randomly initialised ViT-B-16 (no weights can be downloaded here)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.special import softmax

from bench.presence import ClipPresence, calibrate_threshold, softmax_presence


def test_softmax_presence_equals_a_direct_softmax() -> None:
    rng = np.random.default_rng(0)
    label_sim = rng.uniform(-1, 1, size=(4, 30))
    concept_sim = rng.uniform(-1, 1, size=(30, 6))
    # label 2 is concept 1 itself; make concept 1 the largest on some images (the stable
    # second-largest path) and label 3 concept 4
    concept_sim[:10, 1] = 0.99
    same = [None, None, 1, 4]
    got = softmax_presence(label_sim, concept_sim, same, scale=100.0)
    for i in range(4):
        for n in range(30):
            others = [concept_sim[n, c] for c in range(6) if c != same[i]]
            logits = 100.0 * np.array([label_sim[i, n], *others])
            assert got[i, n] == pytest.approx(softmax(logits)[0], rel=1e-9, abs=1e-300)
    assert np.all((got >= 0) & (got <= 1))


def test_calibrated_threshold_by_hand() -> None:
    # concept 0 on images 0, 1; concept 1 on image 3. Cosines: any threshold in [0.3, 0.5)
    # separates both perfectly (mean F1 = 1); the quantile candidates include 0.3.
    sim = np.array([[0.6, 0.1], [0.5, 0.2], [0.3, 0.1], [0.2, 0.7]])
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    tau, f1 = calibrate_threshold(sim, truth, steps=8)
    assert 0.3 <= tau < 0.5 and f1 == pytest.approx(1.0)


class _Probe:
    name = "hand"

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load_image(self, i: int) -> int:
        return i

    def identity(self) -> dict[str, Any]:
        return {"name": "hand", "n": self.n}


class _Encoder:
    """Images are indices into a table of vectors; texts are looked up by name."""

    def __init__(self, images: np.ndarray, texts: dict[str, list[float]]) -> None:
        self.images, self.texts = images, texts

    def identity(self) -> dict[str, Any]:
        return {"name": "hand-encoder"}

    def encode_images(self, images: list[int]) -> np.ndarray:
        return self.images[list(images)]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.array([self.texts[t] for t in texts], dtype=float)


def test_clip_presence_threshold_and_softmax_modes() -> None:
    images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    texts = {
        "red": [1.0, 0, 0],
        "blue": [0, 1.0, 0],
        "grass": [0, 0, 1.0],
        "reddish": [0.8, 0.6, 0],
    }
    enc = _Encoder(images, texts)
    probe = _Probe(4)
    thr = ClipPresence(
        enc, probe, concepts=["red", "blue", "grass"], mode="threshold", threshold=0.7
    )
    got = thr.presence(["reddish", "red", "reddish"])
    cos = (np.array(texts["reddish"]) @ images.T) / np.linalg.norm(images, axis=1)
    np.testing.assert_array_equal(got.presence[0], (cos > 0.7).astype(float))
    np.testing.assert_array_equal(got.presence[0], got.presence[2])
    np.testing.assert_array_equal(got.presence[1], [1.0, 0.0, 0.0, 0.0])  # cos 1, 0, 0.6, 0
    assert all(r.parsed and r.source == "clip" for r in got.readings)
    s = thr.settings()
    assert s["to_presence"] == "threshold" and s["threshold_from"] == "given"

    soft = ClipPresence(enc, probe, concepts=["red", "blue", "grass"], mode="softmax", scale=10.0)
    got = soft.presence(["red", "reddish"])
    concept_cos = images @ np.array([texts[c] for c in ("red", "blue", "grass")]).T
    # "red" is in the set: counted once, against blue and grass
    want_red = [
        softmax(10.0 * np.array([concept_cos[n, 0], *concept_cos[n, 1:]]))[0] for n in range(4)
    ]
    np.testing.assert_allclose(got.presence[0], want_red, rtol=1e-6)
    want = [softmax(10.0 * np.array([cos[n], *concept_cos[n]]))[0] for n in range(4)]
    np.testing.assert_allclose(got.presence[1], want, rtol=1e-6)
    assert soft.settings()["to_presence"] == "softmax" and soft.settings()["logit_scale"] == 10.0

    # calibrated on ground truth when no threshold is given
    truth = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    cal = ClipPresence(enc, probe, concepts=["red", "blue", "grass"], mode="threshold", truth=truth)
    cal.presence(["red"])
    s = cal.settings()
    assert s["threshold_from"] == "calibrated" and s["calibration"]["mean_f1"] == pytest.approx(1.0)


def test_faithfulness_suite_with_clip_presence_offline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from bench.cache import Cache
    from bench.results import MethodInfo, RunIdentity
    from bench.schema import Description
    from bench.suites.base import MethodLabels, ScoreOptions, SuiteContext, target_info
    from bench.suites.faithfulness import FaithfulnessSuite
    from bench.suites.planted import planted_units
    from bench.suites.scoring import baseline_labels
    from metrics.sanity import derange

    torch.set_num_threads(1)
    target = "synth.resnet"
    planted = planted_units(target)
    perm = derange(len(planted), np.random.default_rng(0))

    def labels(name: str, concepts: list) -> MethodLabels:  # type: ignore[type-arg]
        return MethodLabels(
            info=MethodInfo(name=name, version="1"),
            descriptions={
                p.unit: Description(unit=p.unit, label=c.concept)
                for p, c in zip(planted, concepts, strict=True)
            },
        )

    ctx = SuiteContext(
        run=RunIdentity(run_id="clip", target=target),
        target=target_info(target, sorted({p.unit.layer for p in planted})),
        methods={
            "planted": labels("planted", planted),
            "shuffled": labels("shuffled", [planted[j] for j in perm]),
            "depictions": baseline_labels(),
        },
        options=ScoreOptions(n_resamples=200, device="cpu"),
        cache=Cache(tmp_path / "cache"),
    )
    result = FaithfulnessSuite(n_images=60, presence="clip").score(ctx)
    presence = result.settings["presence"]
    assert presence["mode"] == "clip" and presence["to_presence"] == "threshold"
    assert presence["threshold_from"] == "calibrated"
    assert presence["encoder"]["name"] == "synthetic-image-text"
    auroc = result.metric("auroc").per_method
    # free text is scored, never unparsed: the constant label too
    assert result.settings["labels"]["depictions"]["unparsed"] == 0
    assert result.metric("parsed").per_method["depictions"].mean == 1.0
    assert auroc["planted"].mean > auroc["shuffled"].mean + 0.15
    assert "synthetic-image-text" in result.metric("auroc").note


@pytest.mark.slow
def test_open_clip_backend_plumbing_with_random_weights() -> None:
    """The open_clip path end to end (tokenizer, both towers, the joint space) with a randomly
    initialised ViT-B-16: the numbers mean nothing, the shapes and the plumbing are real."""
    import torch

    from bench.components import build_component
    from bench.synth.world import generate, render

    torch.manual_seed(0)
    enc = build_component(
        "image_text_encoder", "open-clip", {"pretrained": None, "batch_size": 4}, device="cpu"
    )
    images = [render(scene).image for scene in generate(6, seed=0)]

    class Probe(_Probe):
        def load_image(self, i: int) -> Any:
            return images[i]

    clip = ClipPresence(enc, Probe(6), concepts=["red", "circle", "grass"], mode="softmax")
    got = clip.presence(["red circle", "striped"])
    assert got.presence.shape == (2, 6) and np.all((got.presence >= 0) & (got.presence <= 1))
    assert clip.image_embeddings().shape == (6, 512)
    assert clip.settings()["encoder"]["name"] == "open-clip:ViT-B-16"
