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
