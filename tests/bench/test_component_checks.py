"""Component availability checks (issue 19): what the runner asks of each component before
anything is recorded. Nothing is loaded or downloaded: Hugging Face downloads are switched off and
the hub cache is a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.components import ComponentError, build_component
from bench.components.base import check_available, require_hub_weights


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    root = tmp_path / "hf-hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def _cached(hub: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """A snapshot of ``repo`` in the hub cache's layout (refs/main -> snapshots/<commit>)."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    for name, data in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    return snap


def _clip(**options: object) -> object:
    return build_component("image_text_encoder", "open-clip", options, device="cpu")


def test_open_clip_tag_offline_needs_the_cached_weights(hub: Path) -> None:
    enc = _clip()  # ViT-B-16, pretrained=openai: timm/vit_base_patch16_clip_224.openai on the hub
    with pytest.raises(ComponentError) as info:
        check_available(enc)
    msg = str(info.value)
    assert "timm/vit_base_patch16_clip_224.openai" in msg and "HF_HUB_OFFLINE" in msg
    assert "image_text_encoder.pretrained=PATH" in msg
    assert "image_text_encoder.model=local-dir:DIR" in msg
    repo = "timm/vit_base_patch16_clip_224.openai"
    _cached(hub, repo, {"open_clip_pytorch_model.bin": b"weights"})
    check_available(enc)  # found where open_clip's loader will look for it; nothing loaded


def test_open_clip_local_directory_needs_config_and_weights(tmp_path: Path, hub: Path) -> None:
    from bench.components import testing as tiny

    good = tiny.tiny_open_clip(tmp_path / "clip")
    check_available(_clip(model=f"local-dir:{good}"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "open_clip_config.json").write_text((good / "open_clip_config.json").read_text())
    # open_clip itself would build random weights here, with only a logged warning.
    with pytest.raises(ComponentError, match="has no weights"):
        check_available(_clip(model=f"local-dir:{bare}"))
    with pytest.raises(ComponentError, match="no open_clip_config.json"):
        check_available(_clip(model=f"local-dir:{tmp_path / 'nowhere'}"))


def test_open_clip_pretrained_file_tag_and_model_names(tmp_path: Path, hub: Path) -> None:
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"x")
    check_available(_clip(pretrained=str(weights)))  # a file: open_clip loads it as given
    with pytest.raises(ComponentError, match="does not exist"):
        check_available(_clip(pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(ComponentError, match="neither a pretrained tag.*openai"):
        check_available(_clip(pretrained="no_such_tag"))
    with pytest.raises(ComponentError, match="Unknown open_clip model 'No-Such-ViT'"):
        check_available(_clip(model="No-Such-ViT"))
    check_available(_clip(pretrained=None))  # random weights, as asked


def test_open_clip_hf_hub_repository_needs_config_and_weights(hub: Path) -> None:
    repo = "someone/clip-model"
    enc = _clip(model=f"hf-hub:{repo}")
    with pytest.raises(ComponentError, match="open_clip_config.json of someone/clip-model"):
        check_available(enc)
    _cached(hub, repo, {"open_clip_config.json": b"{}"})
    with pytest.raises(ComponentError, match="open_clip_model.safetensors or open_clip_pytorch"):
        check_available(enc)
    _cached(hub, repo, {"open_clip_model.safetensors": b"w"})
    check_available(enc)


def test_hub_models_offline_need_their_weights_not_only_the_config(hub: Path) -> None:
    repo = "someone/blip"
    _cached(hub, repo, {"config.json": b"{}", "preprocessor_config.json": b"{}"})
    with pytest.raises(ComponentError) as info:
        require_hub_weights(repo, None, "captioner.model")
    msg = str(info.value)
    assert "has no weights" in msg and "--component-option captioner.model=DIR" in msg
    assert "HF_HUB_OFFLINE" in msg
    _cached(hub, repo, {"model.safetensors": b"w"})
    require_hub_weights(repo, None, "captioner.model")
    # A diffusers pipeline keeps its weights in subfolders.
    sd = "someone/sd"
    _cached(hub, sd, {"model_index.json": b"{}", "unet/config.json": b"{}"})
    comp = build_component("text_to_image", "stable-diffusion", {"model": sd}, device="cpu")
    with pytest.raises(ComponentError, match="someone/sd"):
        check_available(comp)
    _cached(hub, sd, {"unet/diffusion_pytorch_model.safetensors": b"w"})
    check_available(comp)


def test_hub_weights_are_not_checked_when_downloads_are_allowed(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    require_hub_weights("someone/not-cached", None, "captioner.model")  # fetched on load


def test_openai_endpoint_needs_its_key_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = build_component("language_model", "openai")
    with pytest.raises(ComponentError, match="OPENAI_API_KEY"):
        check_available(lm)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    check_available(lm)
    local = build_component("language_model", "openai", {"base_url": "http://127.0.0.1:9/v1"})
    monkeypatch.delenv("OPENAI_API_KEY")
    check_available(local)  # a local server needs no key (whether it answers is not checked)
