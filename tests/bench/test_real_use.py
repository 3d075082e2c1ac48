"""Real use (issue 19): a real-size target (random-weight resnet18 through --weights) on a Broden
directory; everything a user can get wrong fails before the recording, without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    import torchvision  # type: ignore[import-untyped]

    from bench.synth.broden_export import export_broden

    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    weights = root / "resnet50.pth"
    torch.save(torchvision.models.get_model("resnet50", weights=None).state_dict(), weights)
    broden = export_broden(root / "broden", n_images=12, seed=0)
    return {"weights": weights, "broden": broden, "root": root}


def _real_args(real: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--target",
        "resnet50",
        "--weights",
        str(real["weights"]),
        "--probe",
        "broden",
        "--probe-root",
        str(real["broden"]),
        "--layers",
        "layer4",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture()
def no_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.record

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the recording started")

    monkeypatch.setattr(bench.record, "record_cached", boom)
    monkeypatch.setattr(bench.record, "record", boom)


@pytest.mark.parametrize(
    ("units", "expect"),
    [
        ("abc", "got 'abc'"),
        ("0-99999", "has 2048 units (0-2047)"),
        ("layer9:0-3", "Unknown layer in --units 'layer9'"),
    ],
)
def test_bad_units_fail_before_recording(real, tmp_path, capsys, no_recording, units, expect):
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "depictions", "--units", units))
    err = capsys.readouterr().err
    assert code == 2
    assert expect in err
    assert "Traceback" not in err
    assert not out.exists()  # no empty run directory either


def test_offline_milan_on_resnet50_fails_before_recording(real, tmp_path, capsys, no_recording):
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "milan,netdissect"))
    err = capsys.readouterr().err
    assert code == 2
    assert "Method 'milan'" in err
    assert "MILANNOTATIONS" in err
    assert "resnet101" in err  # the encoder's weights, not the target's
    assert "--config milan.download=true" in err
    assert "milan.model=base" in err
    assert not out.exists()


def test_offline_released_milan_says_how_to_allow_the_download(
    real, tmp_path, capsys, no_recording
):
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "milan", "--config", "milan.model=base"))
    err = capsys.readouterr().err
    assert code == 2
    assert "released MILAN model 'base'" in err
    assert "milan-base.pth" in err
    assert "--config milan.download=true" in err


def test_layer_sizes_without_recording_conv_linear_transformer() -> None:
    from bench.record import layer_sizes
    from bench.registry import TARGETS
    from bench.targets import Target

    def target(name: str, arch: str) -> Target:
        import torchvision  # type: ignore[import-untyped]

        spec = TARGETS.get(name)
        return Target(
            spec=spec, model=torchvision.models.get_model(arch, weights=None), weights_sha256="x"
        )

    t = target("resnet18", "resnet18")
    assert layer_sizes(t, ["layer4", "fc", "conv1"]) == {"layer4": 512, "fc": 1000, "conv1": 64}
    v = target("vit_b_16", "vit_b_16")  # tokens [B, 197, 768]: 768 units
    assert layer_sizes(v, ["encoder.layers.encoder_layer_11"]) == {
        "encoder.layers.encoder_layer_11": 768
    }


def test_depictions_alone_records_nothing(real, tmp_path, capsys, no_recording):
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "depictions", "--units", "0-3", "--no-suites"))
    assert code == 0, capsys.readouterr().err
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "complete"
    assert state["stages"]["record"]["skipped"]
    lines = (out / "depictions" / "units.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_an_image_edit_changes_the_broden_identity(tmp_path) -> None:
    import os

    from bench.probes import load_probe
    from bench.synth.broden_export import export_broden

    root = export_broden(tmp_path / "broden", n_images=4, seed=0)

    def ident() -> dict:
        return load_probe("broden", str(root), options={"categories": "object"}).identity()

    first = ident()
    assert ident() == first  # stable when nothing changes
    image = root / "images" / "synth" / "000001.png"
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size, other content: only the modification time tells
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = ident()
    assert second != first
    # A segmentation PNG of a kept category counts too.
    seg = root / "images" / "synth" / "000002_object.png"
    seg.write_bytes(seg.read_bytes() + b"\0")
    assert ident() != second


def test_dnd_offline_on_a_real_target_leaves_no_run_directory(
    real, tmp_path, capsys, monkeypatch, no_recording
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "dnd", "--no-suites"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert not out.exists()


def test_suites_read_an_absolute_probe_root_from_another_directory(
    tmp_path, capsys, monkeypatch
) -> None:
    """The suites that load the run's own probe (faithfulness, generated) use --probe-root as
    given: run.json's publishable copy cuts an absolute path to its last part, which only
    resolved when the working directory happened to hold a directory of that name."""
    from bench.synth.broden_export import export_broden

    broden = export_broden(tmp_path / "data" / "broden-12", n_images=12, seed=0)
    elsewhere = tmp_path / "elsewhere"  # no 'broden-12' here
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "run"
    args = ["run", "--target", "synth.resnet", "--probe", "broden", "--probe-root", str(broden)]
    args += ["--layers", "layer3", "--units", "0-3", "--methods", "netdissect"]
    args += ["--suites", "faithfulness,generated", "--no-leaderboard", "--no-progress"]
    code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Expected a Broden directory" not in err
    for suite in ("faithfulness", "generated"):
        doc = json.loads((out / "suites" / f"{suite}.json").read_text())
        assert {u["unit"]["index"] for u in doc["units"]} == {0, 1, 2, 3}, suite


@pytest.fixture()
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Downloads off and an empty Hugging Face cache (read by huggingface_hub at each call)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def test_offline_clip_dissect_on_resnet50_fails_before_recording(
    real, tmp_path, capsys, no_recording, empty_hf_cache
):
    out = tmp_path / "run"
    code = main(_real_args(real, out, "--methods", "clip-dissect", "--units", "0-3"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Method 'clip-dissect'" in err and "image_text_encoder component 'open-clip'" in err
    assert "timm/vit_base_patch16_clip_224.openai" in err  # what is missing
    assert "HF_HUB_OFFLINE" in err  # how to allow the download
    assert "--component-option image_text_encoder.pretrained=PATH" in err
    assert "--component-option image_text_encoder.model=local-dir:DIR" in err
    assert not out.exists()


def _image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_probe_without_segmentations_fails_before_recording(real, tmp_path, capsys, no_recording):
    folder = _image_folder(tmp_path / "folder")
    out = tmp_path / "run"
    args = _real_args(real, out, "--methods", "netdissect", "--units", "0-3")
    args[args.index("broden")] = "imagenet-val"
    args[args.index(str(real["broden"]))] = str(folder)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Method 'netdissect' needs a probe set with per-pixel concept segmentations" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        (None, "has no concept labels"),  # concepts=probe on a probe without labels
        ("clip-dissect.concepts=20k", "20k concept list is not at"),
        ("clip-dissect.concepts=/nonexistent/concepts.txt", "/nonexistent/concepts.txt"),
    ],
)
def test_clip_dissect_concepts_are_checked_before_recording(
    tmp_path, capsys, no_recording, config, expect
):
    folder = _image_folder(tmp_path / "folder")
    out = tmp_path / "run"
    args = ["run", "--target", "synth.resnet", "--probe", "imagenet-val", "--probe-root"]
    args += [str(folder), "--methods", "clip-dissect", "--out", str(out), "--no-progress"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    code = main([*args, *(["--config", config] if config else [])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert expect in err
    assert not out.exists()


def test_run_json_keeps_probe_root_and_weights_absolute(real, tmp_path, capsys, monkeypatch):
    """A relative --probe-root / --weights is stored absolute, so `bench score` run from
    another directory finds them; the publishable copy still shows no path of this machine."""
    from bench.results import publishable

    monkeypatch.chdir(real["root"])
    out = tmp_path / "run"
    args = _real_args(real, out, "--methods", "depictions", "--units", "0-1", "--no-suites")
    args[args.index(str(real["weights"]))] = real["weights"].name
    args[args.index(str(real["broden"]))] = real["broden"].name
    assert main(args) == 0, capsys.readouterr().err
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["probe_root"] == str(real["broden"].resolve())
    assert config["weights"] == str(real["weights"].resolve())
    shown = publishable(config)
    assert shown["probe_root"] == real["broden"].name
    assert shown["weights"] == real["weights"].name


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--suites", "generated"], "CompVis/stable-diffusion-v1-4"),
        (
            ["--suites", "faithfulness", "--suite-option", "faithfulness.presence=clip"],
            "faithfulness.clip_pretrained=PATH",
        ),
        (["--suites", "final-layer", "--text-models", "papers"], "roberta-large (bertscore)"),
    ],
    ids=["generated", "faithfulness-clip", "papers-text-models"],
)
def test_suites_asked_for_fail_before_recording_when_their_models_are_missing(
    real, tmp_path, capsys, no_recording, empty_hf_cache, extra, expect
):
    out = tmp_path / "run"
    args = _real_args(real, out, "--methods", "depictions", "--units", "0-1", *extra)
    if "final-layer" in extra:
        args[args.index("layer4")] = "fc"
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"Suite '{extra[1]}' cannot score this run" in err and expect in err
    assert "HF_HUB_OFFLINE" in err
    assert not out.exists()


def test_a_skipped_suite_says_why_once(real, tmp_path, capsys, caplog, empty_hf_cache):
    """Suites chosen automatically that cannot run are skipped; the reason is printed once (the
    console shows log records from WARNING up without -v; under pytest they land in caplog)."""
    import logging

    out = tmp_path / "run"
    args = _real_args(real, out, "--methods", "depictions", "--units", "0-1", "--no-leaderboard")
    code = main([*args, "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    both = "\n".join([captured.out, captured.err, *shown])
    assert "suite generated        skipped: " in captured.out
    reason = "Could not resolve the Hugging Face model 'CompVis/stable-diffusion-v1-4'"
    assert both.count(reason) == both.count("suite generated ") == 1


def test_the_recording_keeps_as_many_top_images_as_dnd_reads() -> None:
    """`--config dnd.num_images=N` above the recorded top-k failed every unit after the
    recording ('record with k >= N', which no option sets): the recording now keeps N."""
    from bench.runner import _union_requirements, build_method
    from methods.dnd import DnD

    assert _union_requirements([build_method(DnD, None)])["k"] == 15
    assert _union_requirements([build_method(DnD, {"num_images": 24})])["k"] == 24
