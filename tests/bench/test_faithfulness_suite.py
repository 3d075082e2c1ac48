"""The faithfulness suite on the synthetic targets, with the planted concepts as labels.

The planted concept of every planted unit (from the target's card) is scored as a method's label,
beside the same concepts shuffled across the planted units and the constant ``depictions``
baseline; the suite's per-unit values are checked against a per-unit recomputation with
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cache import Cache
from bench.results import MethodInfo, RunIdentity, SuiteResult
from bench.schema import Description
from bench.suites.base import MethodLabels, ScoreOptions, SuiteContext, target_info
from bench.suites.faithfulness import FaithfulnessSuite
from bench.suites.planted import planted_units
from bench.suites.scoring import baseline_labels
from metrics.sanity import derange

N_IMAGES = 400
TARGETS = ("synth.resnet", "synth.convnet", "synth.resnet_scenes")


def _labels(name: str, planted, concepts) -> MethodLabels:  # type: ignore[no-untyped-def]
    return MethodLabels(
        info=MethodInfo(name=name, version="1"),
        descriptions={
            p.unit: Description(unit=p.unit, label=c.concept, extras={"formula": c.formula})
            for p, c in zip(planted, concepts, strict=True)
        },
    )


def _score(target: str, cache: Cache) -> tuple[SuiteResult, list]:  # type: ignore[type-arg]
    planted = planted_units(target)
    perm = derange(len(planted), np.random.default_rng(0))
    methods = {
        "planted-concept": _labels("planted-concept", planted, planted),
        "shuffled": _labels("shuffled", planted, [planted[j] for j in perm]),
        "depictions": baseline_labels(),
    }
    ctx = SuiteContext(
        run=RunIdentity(run_id="check", target=target),
        target=target_info(target, sorted({p.unit.layer for p in planted})),
        methods=methods,
        options=ScoreOptions(n_resamples=200, device="cpu"),
        cache=cache,
    )
    return FaithfulnessSuite(n_images=N_IMAGES).score(ctx), planted


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    import torch

    torch.set_num_threads(1)
    return Cache(tmp_path_factory.mktemp("faithfulness-cache"))


@pytest.mark.parametrize("target", TARGETS)
def test_planted_concepts_beat_shuffled_labels_and_the_baseline_is_unparsed(
    target: str, cache: Cache
) -> None:
    result, planted = _score(target, cache)
    auroc = {u.unit: u.scores["auroc"] for u in result.units}
    truth = np.array([auroc[p.unit]["planted-concept"] for p in planted])
    shuffled = np.array([auroc[p.unit]["shuffled"] for p in planted])
    # every planted unit's own concept predicts its activations better than another's
    assert np.all(truth > shuffled), (truth, shuffled)
    # the bar: every planted unit's own concept at AUROC 0.95 or more
    low = {str(p.unit): round(float(t), 4) for p, t in zip(planted, truth, strict=True)}
    assert np.all(truth >= 0.95), low
    assert 0.4 < float(np.median(shuffled)) < 0.6
    # the constant label reads into no concept: counted as unparsed, never scored
    metrics = {m.name: m for m in result.metrics}
    assert "depictions" not in metrics["auroc"].per_method
    assert metrics["parsed"].per_method["depictions"].mean == 0.0
    assert metrics["parsed"].per_method["planted-concept"].mean == 1.0
    labels = result.settings["labels"]
    assert labels["depictions"]["unparsed"] == len(planted)
    assert labels["planted-concept"]["unparsed"] == 0
    assert metrics["auroc"].per_method["planted-concept"].group == 1
    assert set(metrics["auroc"].per_method["planted-concept"].per_layer) == {
        p.unit.layer for p in planted
    }


def test_suite_values_equal_a_per_unit_recomputation(cache: Cache) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from bench.dissect import concept_table_cached
    from bench.formula import from_json
    from bench.probes import load_probe
    from bench.suites.faithfulness import pooled_activations
    from bench.targets import load_target

    target = "synth.convnet"
    result, planted = _score(target, cache)
    probe = load_probe("synthetic", None, options={"n_images": N_IMAGES}, cache=cache)
    from bench.presence import SegmentationPresence

    source = SegmentationPresence(concept_table_cached(cache, probe))
    tgt = load_target(target, device="cpu", cache=cache)
    layers = sorted({p.unit.layer for p in planted})
    acts = pooled_activations(tgt, probe, layers, cache=cache, device="cpu")
    scores = {u.unit: u.scores for u in result.units}
    for p in planted:
        a = acts[p.unit.layer]["mean"][:, p.unit.index].astype(np.float64)
        y = source.presence([from_json(p.formula)])[0] > 0.5
        s = scores[p.unit]
        assert s["auroc"]["planted-concept"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert s["auprc"]["planted-concept"] == pytest.approx(
            average_precision_score(y, a), abs=1e-12
        )
        assert s["pearson"]["planted-concept"] == pytest.approx(
            np.corrcoef(a, y.astype(float))[0, 1], abs=1e-9
        )
        top = np.argsort(-a, kind="stable")[: int(np.ceil(0.005 * len(a)))]
        on = np.zeros(len(a), dtype=bool)
        on[top] = True
        tp = float((on & y).sum())
        assert s["iou"]["planted-concept"] == pytest.approx(tp / ((on | y).sum()), abs=1e-12)
        assert s["f1"]["planted-concept"] == pytest.approx(2 * tp / (on.sum() + y.sum()))
