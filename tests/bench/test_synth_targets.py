"""The shipped synthetic targets: loading, accuracy, planted units, reproducible training.

Planted-unit selectivity is recomputed here with plain forward hooks (independent of
``bench.record`` and of ``bench.synth.evaluate``), following NetDissect: threshold each unit at
its top-0.5% activation quantile over the probe, upsample bilinearly to the label resolution,
IoU with the concept mask over the whole probe.

Why the IoU bar is relative: with a fraction ``p`` of probe pixels above the threshold and a
concept covering a fraction ``c``, no unit can exceed ``min(p, c) / max(p, c)`` (about 0.16 for
"purple OR orange", which covers 3% of the pixels of the uniform world the targets are measured
on; 0.8 for a rare "red AND circle"). A unit
that fires at random scores about ``p * c / (p + c)``, i.e. about ``c`` times the ceiling when
``p << c``. We require at least ``IOU_FRACTION`` of the ceiling: roughly, more than that share
of the unit's top-0.5% pixels lie on the concept (and, for rare concepts, it covers that share
of the concept), which no concept covering less than a quarter of the pixels reaches by chance;
together with 80% of the unit's top-15 images containing the concept.

A planted unit must also be selective across the whole probe, not only at its top: its
spatially mean-pooled activation per image ranks the images that show its concept (any pixel)
above the others with an AUROC of at least ``POOLED_AUROC_MIN``, which is what the
``faithfulness`` suite asks of the planted concept as a label.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.cache import sha256_file
from bench.errors import UnknownNameError, WeightsUnavailableError
from bench.synth import concepts as C
from bench.synth import world as W
from bench.synth.recipes import EVAL_SEED, RECIPES, TrainConfig, recipe
from bench.synth.targets import (
    load_card,
    load_synthetic_model,
    synthetic_target_spec,
    synthetic_target_specs,
)

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "synth"
PROBE_SEED = 55_555  # neither a training seed nor the cards' evaluation seed
PROBE_IMAGES = 1000
IOU_FRACTION = 0.5
TOP15_MIN = 0.8
POOLED_AUROC_MIN = 0.95
#: Accuracy bars on fresh images (chance: 1/48 for objects, 1/7 for scenes).
ACCURACY_MIN = {"objects": 0.9, "scenes": 0.97}

NAMES = sorted(RECIPES)


@pytest.fixture(scope="module")
def probe():
    scenes = W.generate(PROBE_IMAGES, PROBE_SEED)
    images, labels, scene_labels = W.render_batch(scenes)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    return {"scenes": scenes, "x": x, "labels": W.labels_dict(labels, scene_labels)}


@pytest.fixture(scope="module")
def outputs(probe):
    """Per target: logits [N, K] and every planted unit's maps [N, h, w], via forward hooks."""
    out = {}
    for name in NAMES:
        rec = recipe(name)
        model, _, _ = load_synthetic_model(synthetic_target_spec(name))
        modules = dict(model.named_modules())
        grabbed: dict[str, list[torch.Tensor]] = {u.layer: [] for u in rec.planted}
        handles = [
            modules[layer].register_forward_hook(
                lambda _m, _i, o, chunks=chunks: chunks.append(o.detach().clone())
            )
            for layer, chunks in grabbed.items()
        ]
        try:
            with torch.no_grad():
                logits = torch.cat(
                    [model(probe["x"][i : i + 250]) for i in range(0, PROBE_IMAGES, 250)]
                )
        finally:
            for h in handles:
                h.remove()
        maps = {layer: torch.cat(chunks) for layer, chunks in grabbed.items()}
        out[name] = {"logits": logits, "maps": maps}
    return out


def _labels_of(scenes, task):
    if task == "objects":
        return np.array(
            [
                C.COLORS.index(s.main.color) * len(C.SHAPES) + C.SHAPES.index(s.main.shape)
                for s in scenes
            ]
        )
    return np.array([C.SCENES.index(C.SCENE_OF_MATERIAL[s.material]) for s in scenes])


def _selectivity(maps: torch.Tensor, mask: np.ndarray) -> dict[str, float]:
    maps = maps.double()
    threshold = (
        torch.quantile(maps.flatten(), 0.995).item()
        if maps.numel() <= 16_000_000
        else float(np.quantile(maps.numpy().ravel(), 0.995))
    )
    up = F.interpolate(
        maps[:, None].float(), size=mask.shape[1:], mode="bilinear", align_corners=False
    )[:, 0]
    on = (up > threshold).numpy()
    inter, union = np.logical_and(on, mask).sum(), np.logical_or(on, mask).sum()
    p, c = on.mean(), mask.mean()
    top = torch.argsort(maps.flatten(1).amax(1), descending=True, stable=True)[:15].numpy()
    return {
        "iou": inter / union,
        "ceiling": min(p, c) / max(p, c),
        "top15": mask.reshape(len(mask), -1).any(1)[top].mean(),
    }


# --- cards and loading -------------------------------------------------------------------------


def test_shipped_files_and_cards():
    total = 0
    for name in NAMES:
        rec = recipe(name)
        card = load_card(name)
        weights = DATA / rec.weights_file
        total += weights.stat().st_size + (DATA / rec.card_file).stat().st_size
        assert card["weights_sha256"] == sha256_file(weights)
        assert card["arch"] == rec.arch and card["task"] == rec.task
        assert card["class_names"] == list(rec.class_names)
        assert card["input_size"] == 64 and card["final_layer"] == "fc"
        assert card["layers"] == list(rec.layers)
        assert card["seed"] == rec.seed
        planted = card["planted_units"]
        assert 4 <= len(planted) <= 8
        assert len({u["layer"] for u in planted}) >= 2
        ops = set()
        for u in planted:
            assert set(u) == {"layer", "unit", "concept", "formula"}
            assert u["formula"] == C.parse_formula(u["concept"])
            assert all(C.concept(leaf).name == leaf for leaf in C.formula_leaves(u["formula"]))
            ops.add(u["formula"][0])
        assert {"and", "or"} <= ops
    assert total < 10 * 2**20


def test_specs_and_loading():
    specs = synthetic_target_specs()
    assert [s.name for s in specs] == list(RECIPES)
    for spec in specs:
        assert spec.family == "synthetic" and spec.final_layer == "fc"
        assert spec.preprocessing.input_size == 64 and spec.preprocessing.resize is None
        model, sha, class_names = load_synthetic_model(spec)
        assert not model.training
        assert sha == spec.weights_sha256 == load_card(spec.name)["weights_sha256"]
        assert class_names == recipe(spec.name).class_names
        modules = dict(model.named_modules())
        assert all(layer in modules for layer in spec.layers)
        assert modules["fc"].out_features == spec.num_classes == len(class_names)
    bad = dataclasses.replace(specs[0], weights_sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        load_synthetic_model(bad)
    with pytest.raises(UnknownNameError, match="synth.resnet"):
        synthetic_target_spec("synth.resnett")


# --- what the targets learned ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_on_fresh_images(name, probe, outputs):
    rec = recipe(name)
    y = _labels_of(probe["scenes"], rec.task)
    acc = (outputs[name]["logits"].argmax(1).numpy() == y).mean()
    assert acc >= ACCURACY_MIN[rec.task], f"{name}: accuracy {acc:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_planted_units_are_selective(name, probe, outputs):
    rec = recipe(name)
    failures = []
    for u in rec.planted:
        mask = C.formula_mask(u.formula, probe["labels"])
        s = _selectivity(outputs[name]["maps"][u.layer][:, u.unit], mask)
        if s["iou"] < IOU_FRACTION * s["ceiling"] or s["top15"] < TOP15_MIN:
            failures.append(f"{u.layer}:{u.unit} {u.concept}: {s}")
        # The concept, not the layer, makes the unit selective: its neighbour channel is not.
        other = (u.unit + 1) % outputs[name]["maps"][u.layer].shape[1]
        s_other = _selectivity(outputs[name]["maps"][u.layer][:, other], mask)
        assert s_other["iou"] < s["iou"], (u, s_other, s)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", NAMES)
def test_planted_units_rank_their_concepts_images_first(name, probe, outputs):
    from sklearn.metrics import roc_auc_score

    rec = recipe(name)
    got = {}
    for u in rec.planted:
        mask = C.formula_mask(u.formula, probe["labels"])
        has = mask.reshape(len(mask), -1).any(1)
        pooled = outputs[name]["maps"][u.layer][:, u.unit].double().mean(dim=(1, 2)).numpy()
        got[f"{u.layer}:{u.unit} {u.concept}"] = roc_auc_score(has, pooled)
    low = {k: round(v, 4) for k, v in got.items() if v < POOLED_AUROC_MIN}
    assert not low, f"pooled AUROC below {POOLED_AUROC_MIN}: {low} (all: {got})"


def test_report_matches_an_independent_recomputation(probe, outputs):
    from sklearn.metrics import roc_auc_score

    from bench.synth.evaluate import report

    name = "synth.resnet"
    rec = recipe(name)
    rep = report(name, n_eval=300, seed=PROBE_SEED)
    assert rep["weights_sha256"] == load_card(name)["weights_sha256"]
    sub = {k: v[:300] for k, v in probe["labels"].items()}
    y = _labels_of(probe["scenes"][:300], rec.task)
    acc = (outputs[name]["logits"][:300].argmax(1).numpy() == y).mean()
    assert rep["accuracy"] == pytest.approx(acc, abs=1e-6)
    for u, got in zip(rec.planted, rep["planted_units"], strict=True):
        mask = C.formula_mask(u.formula, sub)
        s = _selectivity(outputs[name]["maps"][u.layer][:300, u.unit], mask)
        assert (got["layer"], got["unit"], got["concept"]) == (u.layer, u.unit, u.concept)
        assert got["iou"] == pytest.approx(s["iou"], abs=1e-5)
        assert got["top15_fraction"] == pytest.approx(s["top15"], abs=1e-6)
        pooled = outputs[name]["maps"][u.layer][:300, u.unit].double().mean(dim=(1, 2)).numpy()
        has = mask.reshape(len(mask), -1).any(1)
        assert got["pooled_auroc"] == pytest.approx(roc_auc_score(has, pooled), abs=1e-6)
    # on 3 images most planted concepts are on none of them: AUROC undefined, JSON null
    tiny = report(name, n_eval=3, seed=PROBE_SEED)["planted_units"]
    assert None in [u["pooled_auroc"] for u in tiny]
    assert "NaN" not in json.dumps(tiny)
    with pytest.raises(Exception, match="different from the training seed"):
        report(name, n_eval=10, seed=rec.seed)
    assert EVAL_SEED != rec.seed


# --- training -------------------------------------------------------------------------------------


def test_training_is_deterministic():
    from bench.synth.models import build_model
    from bench.synth.train import state_dict_arrays, train_model

    rec = recipe("synth.resnet")
    tiny = TrainConfig(n_train=32, epochs=1, batch_size=16)
    a, log_a = train_model(rec, seed=5, config=tiny, max_steps=2)
    b, _ = train_model(rec, seed=5, config=tiny, max_steps=2)
    c, _ = train_model(rec, seed=6, config=tiny, max_steps=2)
    sa, sb, sc = state_dict_arrays(a), state_dict_arrays(b), state_dict_arrays(c)
    assert log_a["steps"] == 2
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    torch.manual_seed(5)  # train_model seeds, then builds: the same initial weights
    init = state_dict_arrays(build_model(rec.arch, len(rec.class_names)))
    assert any(not torch.equal(sa[k], init[k]) for k in sa if k.endswith("weight"))


def test_train_target_writes_loadable_weights_and_card(tmp_path, monkeypatch):
    import bench.synth.train as train_mod

    rec = recipe("synth.convnet")
    tiny = dataclasses.replace(rec, train=TrainConfig(n_train=16, epochs=1, batch_size=8))
    monkeypatch.setitem(RECIPES, rec.name, tiny)
    from bench.synth import evaluate

    monkeypatch.setattr(
        evaluate,
        "evaluate_model",
        lambda model, r, **kw: {"accuracy": 0.0, "n_eval": 0, "planted_units": []},
    )
    path = train_mod.train_target(rec.name, out_dir=tmp_path)
    assert path == tmp_path / rec.weights_file
    again = train_mod.train_target(rec.name, out_dir=tmp_path / "again")
    assert again.read_bytes() == path.read_bytes()  # byte-identical, so the card's sha256 is
    card = load_card(rec.name, directory=tmp_path)
    assert card["weights_sha256"] == sha256_file(path)
    assert card["training"]["n_train"] == 16
    spec = synthetic_target_spec(rec.name, directory=tmp_path)
    model, sha, names = load_synthetic_model(spec)
    assert sha == card["weights_sha256"] and names == rec.class_names
