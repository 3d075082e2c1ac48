"""The ``generated`` suite (CoSy) on a synthetic target, with the planted concepts as labels.

Planted units labelled with their planted concept fire on images the synthetic renderer draws
from that label (high AUC); the same concepts shuffled across units and the constant
``depictions`` label do not. The suite's per-unit values equal scikit-learn's AUROC, scipy's
Mann-Whitney test and CoSy's MAD computed by hand, and the images come from the same cache entry
DnD's generation uses (a second request is a cache hit, no new drawing)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cache import Cache
from bench.results import MethodInfo, RunIdentity, SuiteResult
from bench.schema import Description
from bench.suites.base import MethodLabels, ScoreOptions, SuiteContext, target_info
from bench.suites.generated import GeneratedSuite
from bench.suites.planted import concept_phrase, planted_units
from bench.suites.scoring import baseline_labels
from metrics.sanity import derange

TARGET = "synth.convnet"
N_GENERATED = 10
N_CONTROL = 100


def _labels(name: str, planted, concepts) -> MethodLabels:  # type: ignore[no-untyped-def]
    return MethodLabels(
        info=MethodInfo(name=name, version="1"),
        descriptions={
            p.unit: Description(unit=p.unit, label=concept_phrase(c.concept))
            for p, c in zip(planted, concepts, strict=True)
        },
    )


def _context(cache: Cache, run_dir=None) -> tuple[SuiteContext, list]:  # type: ignore[no-untyped-def, type-arg]
    planted = planted_units(TARGET)
    perm = derange(len(planted), np.random.default_rng(0))
    methods = {
        "planted-concept": _labels("planted-concept", planted, planted),
        "shuffled": _labels("shuffled", planted, [planted[j] for j in perm]),
        "depictions": baseline_labels(),
    }
    ctx = SuiteContext(
        run=RunIdentity(run_id="check", target=TARGET, seed=0),
        target=target_info(TARGET, sorted({p.unit.layer for p in planted})),
        methods=methods,
        options=ScoreOptions(n_resamples=200, device="cpu"),
        cache=cache,
        run_dir=run_dir,
    )
    return ctx, planted


def _suite(strip_images: int = 0) -> GeneratedSuite:
    return GeneratedSuite(n_images=N_GENERATED, control_images=N_CONTROL, strip_images=strip_images)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteResult, list, Cache]:  # type: ignore[type-arg]
    import torch

    torch.set_num_threads(1)
    cache = Cache(tmp_path_factory.mktemp("generated-cache"))
    ctx, planted = _context(cache)
    return _suite().score(ctx), planted, cache


def test_planted_labels_score_high_and_the_constant_label_at_chance(scored) -> None:  # type: ignore[no-untyped-def]
    result, planted, _ = scored
    auc = {u.unit: u.scores["auc"] for u in result.units}
    truth = np.array([auc[p.unit]["planted-concept"] for p in planted])
    shuffled = np.array([auc[p.unit]["shuffled"] for p in planted])
    constant = np.array([auc[p.unit]["depictions"] for p in planted])
    assert np.median(truth) > 0.9, truth
    assert truth.mean() > shuffled.mean() + 0.2, (truth, shuffled)
    # "depictions" names no concept: the renderer draws random scenes, like the control images
    assert 0.3 < float(np.median(constant)) < 0.7, constant
    metrics = {m.name: m for m in result.metrics}
    assert metrics["auc"].per_method["planted-concept"].group == 1
    assert metrics["auc"].per_method["depictions"].group != 1
    assert not metrics["p_value"].higher_is_better
    assert set(metrics["auc"].per_method["planted-concept"].per_layer) == {
        p.unit.layer for p in planted
    }
    assert result.settings["control"]["images"] == N_CONTROL
    assert result.offline


def test_values_equal_scipy_sklearn_and_cosy_mad(scored) -> None:  # type: ignore[no-untyped-def]
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    from bench.components.synthetic import SyntheticTextToImage
    from bench.imaging import pooled_on_images
    from bench.probes import load_probe
    from bench.suites.faithfulness import pooled_activations
    from bench.targets import load_target

    result, planted, cache = scored
    tgt = load_target(TARGET, device="cpu", cache=cache)
    probe = load_probe("synthetic", None, options={"n_images": N_CONTROL}, cache=cache)
    layers = sorted({p.unit.layer for p in planted})
    control = pooled_activations(tgt, probe, layers, cache=cache, device="cpu")
    scores = {u.unit: u.scores for u in result.units}
    for p in planted[:4]:
        prompt = f"realistic photo of a close up of {concept_phrase(p.concept)}"
        images = SyntheticTextToImage().generate([prompt], N_GENERATED, 0)[0]
        a1 = pooled_on_images(tgt, [p.unit.layer], list(images))[p.unit.layer][:, p.unit.index]
        a0 = control[p.unit.layer]["mean"][:, p.unit.index]
        a1, a0 = a1.astype(np.float64), a0.astype(np.float64)
        s = scores[p.unit]
        y = np.r_[np.ones(len(a1)), np.zeros(len(a0))]
        assert s["auc"]["planted-concept"] == pytest.approx(
            roc_auc_score(y, np.r_[a1, a0]), abs=1e-9
        )
        want = mannwhitneyu(a1, a0, alternative="two-sided", method="asymptotic")
        assert s["p_value"]["planted-concept"] == pytest.approx(want.pvalue, rel=1e-6, abs=1e-300)
        mad = (a1.mean() - a0.mean()) / a0.std()
        assert s["mad"]["planted-concept"] == pytest.approx(mad, rel=1e-6)


def test_images_are_shared_with_dnds_generation_cache(scored) -> None:  # type: ignore[no-untyped-def]
    from bench.components import tracked
    from bench.components.synthetic import SyntheticTextToImage

    result, planted, cache = scored
    calls = result.settings["text_to_image"]["calls"]
    assert result.settings["text_to_image"]["cached"] is True
    assert calls["items"] == result.settings["prompts"] and calls["hits"] == 0
    # DnD's generation wraps its component the same way; the suite's images are a cache hit.
    dnd_side = tracked("text_to_image", SyntheticTextToImage(), cache)
    prompt = f"realistic photo of a close up of {concept_phrase(planted[0].concept)}"
    (images,) = dnd_side.generate([prompt], N_GENERATED, 0)
    assert dnd_side.stats.hits == 1 and dnd_side.stats.calls == 0
    assert images.shape[0] == N_GENERATED
    # and scoring again draws nothing new
    ctx, _ = _context(cache)
    again = _suite().score(ctx)
    calls = again.settings["text_to_image"]["calls"]
    assert calls["calls"] == 0 and calls["hits"] == again.settings["prompts"]


def test_unit_pages_show_generated_images_with_the_units_activation(scored, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.results import suite_result_path, write_suite_result
    from leaderboard.build import render

    _, planted, cache = scored
    run_dir = tmp_path / "run"
    ctx, _ = _context(cache, run_dir)
    result = _suite(strip_images=3).score(ctx)
    path = write_suite_result(suite_result_path(run_dir, "generated"), result)
    unit = next(u for u in result.units if u.unit == planted[0].unit)
    entry = unit.details["labels"]["planted-concept"]
    assert (path.parent / entry["strip"]).resolve().is_file()
    assert len(entry["strip_activations"]) == 3
    assert result.settings["strips"] == result.settings["prompts"]  # one strip per label
    files = render([(path, result)])
    strips = [f for f in files if f.startswith("generated/") and f.endswith(".png")]
    assert len(strips) >= len(planted)
    page = next(
        v.decode()
        for k, v in files.items()
        if k.startswith("units/")
        and f"Unit {planted[0].unit.layer}:{planted[0].unit.index}" in v.decode()
    )
    assert "Generated images" in page
    from leaderboard.html import fmt

    assert fmt(entry["strip_activations"][0]) in page
    assert any(f'src="../{s}"' in page for s in strips)


def test_sdxl_option_keeps_sd_cache_keys_and_needs_stable_diffusion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.components.diffusion import StableDiffusion
    from bench.errors import UsageError

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    sd = StableDiffusion(model=str(model), device="cpu").identity()
    sdxl = StableDiffusion(model=str(model), device="cpu", pipeline="sdxl").identity()
    assert "pipeline" not in sd  # DnD's keys for SD 1.x images are unchanged
    assert sdxl["pipeline"] == "sdxl" and {k: v for k, v in sdxl.items() if k != "pipeline"} == sd
    ctx, _ = _context(Cache(tmp_path / "cache"))
    with pytest.raises(UsageError, match="generated.backend=stable-diffusion"):
        GeneratedSuite(sdxl=True)._component(ctx)
    # the suite's own choice of model reaches the component
    t2i, info = GeneratedSuite(backend="sd", model=str(model), sdxl=True)._component(ctx)
    assert info["identity"]["pipeline"] == "sdxl" and info["identity"]["guidance_scale"] == 5.0
    assert info["identity"]["scheduler"] == "default"
