"""The clip-dissect method: a tiny real open_clip model end to end, the synthetic stand-in on
planted units, the prior over the layer or the described units, concept sets, the embedding
cache, and the restriction of P to the top images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import describe_cached
from bench.cache import Cache
from bench.components import build_component
from bench.components.testing import tiny_open_clip
from bench.errors import ConfigError, DataError, RequirementError
from bench.method import MethodContext
from bench.registry import METHODS
from bench.schema import UnitRef
from bench.testing import check_method, tiny_evidence
from methods.clip_dissect import CONCEPTS_20K_BYTES, ClipDissect, read_concept_file
from methods.clip_dissect import similarity as S


class Counting:
    """An image-text encoder that counts its calls."""

    def __init__(self, inner):
        self.inner = inner
        self.image_calls = 0
        self.text_calls = 0

    def identity(self):
        return self.inner.identity()

    def encode_images(self, images):
        self.image_calls += 1
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        self.text_calls += 1
        return self.inner.encode_texts(texts)


def _units(ev, layer="conv"):
    return [UnitRef(layer=layer, index=i) for i in range(ev.layer(layer).num_units)]


def test_registered_and_defaults() -> None:
    assert METHODS.get("clip-dissect") is ClipDissect
    cfg = ClipDissect().config
    assert (cfg.similarity, cfg.pool, cfg.prior, cfg.concepts) == (
        "soft_wpmi",
        "mean",
        "layer",
        "probe",
    )
    assert ClipDissect.requires.components == frozenset({"image_text_encoder"})
    for bad in ({"similarity": "pmi"}, {"pool": "median"}, {"prior": "all"}, {"runners_up": -1}):
        with pytest.raises(ConfigError):
            ClipDissect(**bad)


def test_tiny_real_open_clip_end_to_end(tmp_path: Path) -> None:
    """A one-layer open_clip ViT with random weights (written and loaded through open_clip's
    own local-dir path, nothing downloaded) runs the method through the conformance kit; every
    label and score equals an independent recomputation from the model's own towers."""
    import open_clip

    model_dir = tiny_open_clip(tmp_path / "clip", vocab_size=49408)
    spec = f"local-dir:{model_dir}"
    enc = build_component("image_text_encoder", "open-clip", {"model": spec, "batch_size": 5})
    cache = Cache(tmp_path / "ev")
    ev = tiny_evidence(cache)
    out = check_method(
        ClipDissect, tmp_path / "kit", components={"image_text_encoder": enc}, evidence=ev
    )

    # Independently: the model's towers, open_clip's own transform, soft-WPMI over the layer.
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    model.eval()
    names = [c.name for c in ev.probe.concepts()]
    with torch.no_grad():
        x = torch.stack([preprocess(ev.probe.load_image(i)) for i in range(len(ev.probe))])
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(open_clip.get_tokenizer(spec)(names), normalize=True)
    p = (img @ txt.T).float()
    for layer in ev.layers:
        acts = torch.as_tensor(ev.layer(layer).pooled_mean)
        sim = S.soft_wpmi(p, acts, top_k=len(ev.probe)).numpy()
        got = [d for d in out if d.unit.layer == layer]
        for d in got:
            row = sim[d.unit.index]
            assert d.label == names[int(row.argmax())]
            assert d.score == pytest.approx(float(row.max()), rel=1e-4, abs=1e-4)
            assert d.score_name == "soft_wpmi"
            ranked = [names[i] for i in np.argsort(-row, kind="stable")]
            assert [r["concept"] for r in d.extras["runners_up"]] == [
                c for c in ranked if c != d.label
            ][:4]


@pytest.fixture(scope="module")
def synth_evidence():
    from bench.record import record_cached
    from bench.registry import PROBES
    from bench.targets import load_target

    # The same record the runner and the netdissect tests make (maps included).
    return record_cached(
        Cache(),
        load_target("synth.resnet"),
        PROBES.get("synthetic")(None),
        None,
        store_maps=True,
    )


def test_synthetic_stand_in_names_planted_single_concepts(synth_evidence) -> None:
    """Offline, the synthetic world's recogniser is the joint model. On synth.resnet every
    planted single-concept unit gets its concept (red, striped, circle, star), and the
    disjunction 'purple OR orange' one of its parts."""
    from bench.suites.planted import planted_units

    planted = planted_units("synth.resnet")
    units = [p.unit for p in planted]
    enc = build_component("image_text_encoder", "synthetic")
    ctx = MethodContext(cache=Cache(), components={"image_text_encoder": enc})
    out = {d.unit: d for d in ClipDissect().describe(units, synth_evidence, ctx)}
    for p in planted:
        label = out[p.unit].label
        if p.formula[0] == "leaf":
            assert label == p.formula[1], (p.concept, label)
        elif p.formula[0] == "or":
            assert label in {leaf[1] for leaf in p.formula[1:]}, (p.concept, label)


def test_layer_prior_keeps_labels_of_a_subset_and_described_prior_changes_them(
    synth_evidence,
) -> None:
    enc = build_component("image_text_encoder", "synthetic")
    ctx = MethodContext(cache=Cache(), components={"image_text_encoder": enc})
    layer = "layer3"
    everything = _units(synth_evidence, layer)
    subset = everything[10:16]
    full = {d.unit: d for d in ClipDissect().describe(everything, synth_evidence, ctx)}
    part = ClipDissect().describe(subset, synth_evidence, ctx)
    assert [(d.label, d.score) for d in part] == [(full[u].label, full[u].score) for u in subset]
    assert all(d.extras["prior_units"] == len(everything) for d in part)

    described = ClipDissect(prior="described").describe(subset, synth_evidence, ctx)
    assert all(d.extras["prior_units"] == len(subset) for d in described)
    # The prior over six units is another prior: the scores move (the original's behaviour).
    assert any(abs(d.score - full[d.unit].score) > 1e-3 for d in described)
    # ... and equal soft-WPMI over exactly those units.
    m = ClipDissect(prior="described")
    p = m.image_concept(synth_evidence, m.concept_set(synth_evidence, ctx), ctx)
    acts = synth_evidence.layer(layer).pooled_mean[:, [u.index for u in subset]]
    want = S.soft_wpmi(torch.as_tensor(p), torch.as_tensor(acts)).numpy()
    np.testing.assert_allclose([d.score for d in described], want.max(1), rtol=1e-4, atol=1e-4)


def test_restricting_p_to_top_images_changes_nothing(synth_evidence) -> None:
    enc = build_component("image_text_encoder", "synthetic")
    ctx = MethodContext(cache=Cache(), components={"image_text_encoder": enc})
    for name in ("soft_wpmi", "wpmi"):
        m = ClipDissect(similarity=name)
        p = m.image_concept(synth_evidence, m.concept_set(synth_evidence, ctx), ctx)
        acts = np.asarray(synth_evidence.layer("layer2").pooled_mean, dtype=np.float32)
        got = m.similarities(p, acts, "cpu").numpy()
        want = S.similarity(name, torch.as_tensor(p), torch.as_tensor(acts)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_embeddings_come_from_the_cache_the_second_time(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    enc = Counting(build_component("image_text_encoder", "synthetic"))
    ctx = MethodContext(cache=cache, components={"image_text_encoder": enc})
    first = ClipDissect(image_batch=7).describe(_units(ev), ev, ctx)
    assert enc.image_calls == 4 and enc.text_calls == 1  # 24 images in batches of 7
    second = ClipDissect(image_batch=7).describe(_units(ev), ev, ctx)
    assert (enc.image_calls, enc.text_calls) == (4, 1)
    assert [d.to_json() for d in first] == [
        d.replace(seconds=f.seconds).to_json() for d, f in zip(second, first, strict=True)
    ]
    # Another concept list is another text entry, the images stay cached.
    path = tmp_path / "concepts.txt"
    path.write_text("red\nblue\n", encoding="utf-8")
    ClipDissect(concepts=str(path)).describe(_units(ev), ev, ctx)
    assert (enc.image_calls, enc.text_calls) == (4, 2)


def test_concept_sets(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    enc = build_component("image_text_encoder", "synthetic")
    ctx = MethodContext(cache=cache, components={"image_text_encoder": enc}, target=ev.target)
    probe = ClipDissect().concept_set(ev, ctx)
    assert probe.names == ("red", "green", "blue", "grey", "square", "plain")
    classes = ClipDissect(concepts="classes").concept_set(ev, ctx)
    assert classes.names == ("red", "green", "blue")
    out = ClipDissect(concepts="classes").describe(_units(ev), ev, ctx)
    assert {d.label for d in out} <= set(classes.names)
    assert all(d.extras["concept_set"] == "classes" for d in out)

    path = tmp_path / "c.txt"
    path.write_text("  red \n\nblue\nred\n\n  \ngreen square\n", encoding="utf-8")
    assert read_concept_file(path) == ("red", "blue", "green square")
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ClipDissect(concepts=str(path), concepts_sha256=sha).concept_set(ev, ctx).names[0] == (
        "red"
    )
    with pytest.raises(DataError, match="SHA-256"):
        ClipDissect(concepts=str(path), concepts_sha256="0" * 64).concept_set(ev, ctx)
    with pytest.raises(ConfigError, match="concept file"):
        ClipDissect(concepts=str(tmp_path / "missing.txt")).concept_set(ev, ctx)
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="no concepts"):
        ClipDissect(concepts=str(tmp_path / "empty.txt")).concept_set(ev, ctx)


def test_20k_list_is_fetched_only_on_request(tmp_path: Path, serve_bytes, monkeypatch) -> None:
    import methods.clip_dissect as cd

    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache)
    with pytest.raises(RequirementError, match="download=true"):
        ClipDissect(concepts="20k").concept_set(ev, ctx)

    words = [f"w{i:05d}" for i in range(20_000)]
    body = ("\n".join(words) + "\n").encode()
    pad = CONCEPTS_20K_BYTES - len(body)
    assert pad > 0
    body = body[:-1] + b"\n" * (pad + 1)  # trailing empty lines: the original's size exactly
    base, hits = serve_bytes(body)
    monkeypatch.setattr(cd, "CONCEPTS_20K_URL", f"{base}/20k.txt")
    got = ClipDissect(concepts="20k", download=True).concept_set(ev, ctx)
    assert len(got.names) == 20_000 and got.names[:2] == ("w00000", "w00001")
    assert hits == ["/20k.txt"]
    # Present now: used without downloading, pinned on first download.
    assert ClipDissect(concepts="20k").concept_set(ev, ctx).sha256 == got.sha256
    assert hits == ["/20k.txt"]
    dest = cache.datasets_dir() / "clip-dissect" / "20k.txt"
    dest.write_bytes(body[:-1] + b"x")  # same size, other content: the pin notices
    with pytest.raises(DataError, match="checksum"):
        ClipDissect(concepts="20k").concept_set(ev, ctx)


def test_needs_a_joint_space(tmp_path: Path) -> None:
    class Mismatched:
        def identity(self):
            return {"name": "mismatched", "revision": "1"}

        def encode_images(self, images):
            return torch.nn.functional.normalize(torch.ones((len(images), 4)), dim=1)

        def encode_texts(self, texts):
            return torch.nn.functional.normalize(torch.ones((len(texts), 3)), dim=1)

    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache, components={"image_text_encoder": Mismatched()})
    m = ClipDissect()
    with pytest.raises(RequirementError, match="one joint space"):
        m.image_concept(ev, m.concept_set(ev, ctx), ctx)
    with pytest.raises(RequirementError, match="image_text_encoder"):
        ClipDissect().describe(_units(ev), ev, MethodContext(cache=cache))


def test_describe_cached_hits_with_the_synthetic_backend(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    enc = build_component("image_text_encoder", "synthetic")
    ctx = MethodContext(cache=cache, components={"image_text_encoder": enc})
    _, hit = describe_cached(ClipDissect(), _units(ev), ev, ctx)
    assert not hit
    _, hit = describe_cached(ClipDissect(), _units(ev), ev, ctx)
    assert hit


def test_a_20k_file_of_the_wrong_size_is_never_pinned(
    tmp_path: Path, serve_bytes, monkeypatch
) -> None:
    """A wrong file (placed by hand, or a wrong download) is refused before its checksum is
    recorded, so deleting it and fetching the right one works."""
    import methods.clip_dissect as cd

    cache = Cache(tmp_path)
    ev = tiny_evidence(cache)
    ctx = MethodContext(cache=cache)
    dest = cache.datasets_dir() / "clip-dissect" / "20k.txt"
    record = dest.with_name("20k.txt.sha256.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"red\nblue\n")
    with pytest.raises(DataError, match="bytes"):
        ClipDissect(concepts="20k").concept_set(ev, ctx)
    assert not record.exists()

    dest.unlink()
    base, _ = serve_bytes(b"not the list\n")
    monkeypatch.setattr(cd, "CONCEPTS_20K_URL", f"{base}/20k.txt")
    with pytest.raises(DataError, match="bytes"):
        ClipDissect(concepts="20k", download=True).concept_set(ev, ctx)
    assert not record.exists()

    dest.unlink()
    body = b"\n".join(f"w{i:05d}".encode() for i in range(20_000)) + b"\n"
    body += b"\n" * (CONCEPTS_20K_BYTES - len(body))
    base, _ = serve_bytes(body)
    monkeypatch.setattr(cd, "CONCEPTS_20K_URL", f"{base}/20k.txt")
    got = ClipDissect(concepts="20k", download=True).concept_set(ev, ctx)
    assert len(got.names) == 20_000 and record.exists()
