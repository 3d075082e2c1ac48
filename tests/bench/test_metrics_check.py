"""``bench metrics check``: the report card equals metrics.sanity run directly on the same units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.results import read_suite_result
from metrics.faithfulness import FAITHFULNESS_METRICS
from metrics.sanity import SANITY_TESTS, run_label_tests

TARGET = "synth.convnet"
N_IMAGES = 300


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import torch

    from bench.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("metrics")
    rc = main(
        ["metrics", "check", "--target", TARGET, "--n-images", str(N_IMAGES), "--out", str(out)]
        + ["--device", "cpu"]
    )
    assert rc == 0
    return out / TARGET / "suites" / "sanity.json", str(out)


def test_report_card_equals_the_sanity_tests_run_directly(card) -> None:  # type: ignore[no-untyped-def]
    from bench.cache import Cache
    from bench.dissect import concept_table_cached
    from bench.presence import SegmentationPresence, label_reader, segmentation_presence
    from bench.probes import load_probe
    from bench.suites.base import target_info
    from bench.suites.faithfulness import pooled_activations
    from bench.suites.sanity import known_units
    from bench.targets import load_target

    path, _ = card
    result = read_suite_result(path)
    assert result.suite == "sanity" and result.run.target == TARGET
    assert set(result.methods) == set(FAITHFULNESS_METRICS)
    assert [m.name for m in result.metrics] == list(SANITY_TESTS)

    cache = Cache()
    info = target_info(TARGET)
    known = known_units(info, ("planted", "final"))
    assert sum(k.kind == "planted" for k in known) == 6  # the card's planted units
    assert sum(k.kind == "final" for k in known) == 48  # one per class
    probe = load_probe("synthetic", None, options={"n_images": N_IMAGES}, cache=cache)
    source = SegmentationPresence(concept_table_cached(cache, probe))
    pres = segmentation_presence(
        [k.concept for k in known],
        source,
        extras=[{"formula": k.formula} if k.formula else None for k in known],
        reader=label_reader(probe.name),
    )
    keep = [
        i
        for i, r in enumerate(pres.readings)
        if r.parsed and 0 < pres.presence[i].sum() < pres.presence.shape[1]
    ]
    units = [known[i] for i in keep]
    assert len(result.units) == len(units)
    acts = pooled_activations(
        load_target(TARGET, device="cpu", cache=cache),
        probe,
        sorted({k.unit.layer for k in units}),
        cache=cache,
        device="cpu",
    )
    a = np.stack([acts[k.unit.layer]["mean"][:, k.unit.index] for k in units]).astype(float)
    c = pres.presence[keep]
    verdicts = result.settings["verdicts"]
    summaries = {m.name: m for m in result.metrics}
    for metric, (fn, takes_alpha, value_range) in FAITHFULNESS_METRICS.items():

        def score(x, y, fn=fn, ta=takes_alpha):  # type: ignore[no-untyped-def]
            return fn(x, y, 0.005) if ta else fn(x, y)

        for o in run_label_tests(metric, score, a, c, value_range=value_range):
            v = verdicts[metric][o.test]
            assert (v["passed_units"], v["judged_units"], v["passed"]) == (
                o.passed_units,
                o.judged_units,
                o.passed,
            ), (metric, o.test)
            mean = summaries[o.test].per_method[metric].mean
            assert mean == pytest.approx(o.passed_units / o.judged_units)
