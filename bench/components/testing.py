"""Tiny random-weight models of every real backend, written to disk in their libraries' real
formats, for tests and CPU benchmarks. Nothing is downloaded: configs, vocabularies and weights
are all made here.

    from bench.components.testing import tiny_components
    comps = tiny_components(tmp_path)   # BLIP, a GPT-2 causal LM, Stable Diffusion, open_clip

Each ``tiny_*`` function writes a model directory (``save_pretrained`` / open_clip's
``local-dir`` layout) and returns its path; the backends then load it through the same
``from_pretrained`` / ``create_model_and_transforms`` code path a real model id takes. Weights
are random (seeded), so outputs are gibberish of the right types and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Words every tiny text model knows: the DnD prompts' and some of the synthetic world's.
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            "a an the of and or in on with one image realistic picture red green blue yellow "
            "purple orange white black circle circles square squares triangle star cross diamond "
            "striped dotted checkered objects background grass sky water sand wood snow state "
            "coherent concise concept label that is words long can semantically summarize "
            "represent most not necessarily all conceptual similarities following descriptions "
            "description only your answer without period quotation marks do simply repeat "
            "simplifies deletes any unnecessary details number multicolored textiles themed "
            "scenes"
        ).split()
    )
)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_blip(directory: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A BLIP captioner (``BlipForConditionalGeneration`` + ``BlipProcessor`` with a BERT
    word-piece vocabulary) of a few thousand parameters."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = special + list(WORDS)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(out / "vocab.txt"), bos_token="[DEC]")
    _seed(seed)
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": vocab.index("[DEC]"),
            "pad_token_id": vocab.index("[PAD]"),
            "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tok,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vocab.txt").unlink(missing_ok=True)  # the processor wrote its own tokenizer files
    return out


def tiny_causal_lm(directory: str | Path, *, chat_template: bool = False, seed: int = 0) -> Path:
    """A GPT-2 causal LM with a word-level tokenizer; optionally with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(special + list(WORDS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )
    if chat_template:
        tok.chat_template = (
            "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}"
        )
    _seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=vocab["[BOS]"],
        eos_token_id=vocab["[EOS]"],
        pad_token_id=vocab["[PAD]"],
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # (tied) zero embeddings: random weights then prefer real words
        for t in ("[PAD]", "[UNK]", "[BOS]"):
            model.transformer.wte.weight[vocab[t]] = 0.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_stable_diffusion(directory: str | Path, *, seed: int = 0) -> Path:
    """A ``StableDiffusionPipeline`` (UNet, VAE, CLIP text encoder and BPE tokenizer, DPM-Solver
    scheduler) small enough to make 32 x 32 images in milliseconds."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    tokens += letters + [c + "</w>" for c in letters] + [w + "</w>" for w in WORDS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    work = out / "_vocab"
    work.mkdir(exist_ok=True)
    (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(
        str(work / "vocab.json"), str(work / "merges.txt"), pad_token="!", model_max_length=77
    )
    _seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["!"],
            projection_dim=16,
        )
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return out


def tiny_open_clip(
    directory: str | Path, *, image_size: int = 32, seed: int = 0, vocab_size: int = 64
) -> Path:
    """An open_clip ``local-dir`` model: ``open_clip_config.json`` and safetensors weights of a
    one-layer ViT. Load it with ``model="local-dir:<path>"``. Its text tower uses open_clip's
    default tokenizer, whose ids reach 49407: pass ``vocab_size=49408`` to embed texts."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": vocab_size,
            "width": 16,
            "heads": 2,
            "layers": 1,
        },
    }
    (out / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": cfg,
                "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            }
        ),
        encoding="utf-8",
    )
    _seed(seed)
    model = CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))  # fmt: skip
    return out


def tiny_components(
    directory: str | Path, *, device: str = "cpu", steps: int = 2, size: int = 32
) -> dict[str, Any]:
    """The four real backends DnD uses, built from tiny models written under ``directory``."""
    from bench.components import build_components

    root = Path(directory)
    return build_components(
        {
            "captioner": "blip",
            "language_model": "hf",
            "text_to_image": "stable-diffusion",
            "image_encoder": "open-clip",
        },
        {
            "captioner": {"model": str(tiny_blip(root / "blip")), "max_new_tokens": 8},
            "language_model": {
                "model": str(tiny_causal_lm(root / "lm")),
                "max_new_tokens": 6,
                "min_new_tokens": 2,
            },
            "text_to_image": {
                "model": str(tiny_stable_diffusion(root / "sd")),
                "steps": steps,
                "size": size,
            },
            "image_encoder": {"model": f"local-dir:{tiny_open_clip(root / 'clip')}"},
        },
        device=device,
    )
