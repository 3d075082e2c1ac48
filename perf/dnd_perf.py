"""Describe-and-Dissect: per-unit time with batched model calls against one unit at a time.

Default (CPU, a few tens of seconds): the whole pipeline with **tiny real backends** (BLIP, a
GPT-2 causal LM, Stable Diffusion and open_clip, random weights, built by
``bench.components.testing``) on ``synth.resnet``'s ``layer2`` over a synthetic probe of
``--images`` images. The same units are described once in one batched pass
(``DnD.describe(units)``: one captioner call, two or three LLM calls, one text-to-image call, one
encoder call for all of them) and once unit by unit (``describe([u])`` for each), both after a
warm-up and without the component cache, so neither side is served from disk. Prints per-unit
seconds for both, their ratio and the batched pass's stages.

``--gpu-full``: the same comparison's batched side with **full-size architectures** (random
weights) on CUDA: BLIP base (ViT-B/16 at 384 px, BERT-base decoder), a 1.1B-parameter
Llama-shaped causal LM (TinyLlama's shape) in float16, Stable Diffusion v1-4's UNet, VAE and
CLIP ViT-L/14 text encoder in float16 with DPM-Solver, open_clip ViT-B-16; the target is a
random torchvision ResNet-50 (``layer4``) on random 256 px probe images. Random weights decode
to the longest captions and answers and the most candidates (5 per unit), an upper bound on the
cost of real weights. Presets: ``paper`` (50 steps at 512 px, 10 images per concept, the
original's settings) and ``fast`` (20 DPM-Solver steps at 256 px; the original resizes every
generated image to 32 px before use anyway). The paper reports 38.8 s per unit on a V100;
the target here is under 4 s per unit. Needs ``diffusers`` and ``open_clip_torch`` where it runs.

    python -m perf.dnd_perf                       # CPU, tiny real backends
    python -m perf.dnd_perf --units 16 --images 300
    python -m perf.dnd_perf --planted             # synthetic world: planted units, timing
    python -m perf.dnd_perf --gpu-full            # CUDA, full-size, presets paper and fast
    python -m perf.dnd_perf --gpu-full --preset fast --units 32

``--planted``: the embedded synthetic world with the synthetic backends: every synthetic
target's planted units on the default synthetic probe (labels, how many name their concept,
seconds per unit), then every unit of ``synth.resnet`` as a default run describes them.

Prints ``MISSED`` for a missed target (exit 0: a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAPER_SECONDS_PER_UNIT = 38.8
TARGET_SECONDS_PER_UNIT = 4.0
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"steps": 50, "size": None},
    "fast": {"steps": 20, "size": 256},
}


def _stages(descriptions: list[Any]) -> str:
    batch = next((d.extras["batch"] for d in descriptions if d.ok), None)
    if batch is None:
        return "(no successful unit)"
    parts = [f"{k} {v:.2f}s" for k, v in batch["stage_seconds"].items()]
    calls = {k: v["calls"] for k, v in batch["calls"].items()}
    return ", ".join(parts) + f"; backend calls {json.dumps(calls, sort_keys=True)}"


def _describe(method: Any, units: list[Any], evidence: Any, ctx: Any) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    out = method.describe(units, evidence, ctx)
    return time.perf_counter() - t0, out


# --- CPU: tiny real backends ----------------------------------------------------------------------


def cpu_batching(args: argparse.Namespace) -> int:
    import torch

    from bench.cache import Cache
    from bench.components.testing import tiny_components
    from bench.record import record_cached
    from bench.schema import UnitRef
    from bench.synth.probes import synthetic_probe
    from bench.targets import load_target
    from methods.base import MethodContext
    from methods.dnd import DnD

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="perf-dnd-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        comps = tiny_components(root / "models", steps=args.steps, size=32)
        build_s = time.perf_counter() - t0
        cache = Cache(root / "cache")
        target = load_target("synth.resnet")
        probe = synthetic_probe(root / "probe", n_images=args.images)
        ev = record_cached(cache, target, probe, ["layer2"], k=10, topk_by=("mean",), quantiles=())
        n = min(args.units, ev.layer("layer2").num_units)
        units = [UnitRef(layer="layer2", index=i) for i in range(n)]
        ctx = MethodContext(cache=cache, target=target, components=comps)
        method = DnD(component_cache="never")
        print(
            f"tiny real backends (built in {build_s:.1f} s): BLIP, GPT-2 LM, Stable Diffusion "
            f"({args.steps} steps, 32 px), open_clip; target synth.resnet layer2, {n} units, "
            f"synthetic probe of {args.images} images; torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)",
            flush=True,
        )
        _describe(method, units[:1], ev, ctx)  # warm-up: model loads, first-call overheads
        batched_s, batched = _describe(method, units, ev, ctx)
        single_s = 0.0
        singles: list[Any] = []
        for u in units:
            s, out = _describe(method, [u], ev, ctx)
            single_s += s
            singles += out
    ok_b = sum(d.ok for d in batched)
    ok_s = sum(d.ok for d in singles)
    ratio = single_s / batched_s
    print(f"batched pass:      {batched_s / n:.3f} s/unit ({ok_b}/{n} ok); {_stages(batched)}")
    print(f"one unit per call: {single_s / n:.3f} s/unit ({ok_s}/{n} ok)")
    print(f"one-at-a-time / batched: {ratio:.1f}x")
    return 0


# --- the synthetic world: planted units -----------------------------------------------------------


def planted(args: argparse.Namespace) -> int:
    """Every synthetic target's planted units with the synthetic backends on the default
    synthetic probe: the label names the planted concept (all of a formula's positive leaves;
    "any": one side of each OR), and the time per unit; then every unit of ``synth.resnet``
    (the embedded default run's target), chunked as a run chunks them."""
    import torch

    from bench.cache import Cache
    from bench.components import build_components, default_backends
    from bench.components.synthetic import names_formula
    from bench.record import record_cached
    from bench.runner import chunks
    from bench.schema import UnitRef
    from bench.synth.probes import synthetic_probe
    from bench.synth.recipes import RECIPES
    from bench.synth.targets import load_card
    from bench.targets import load_target
    from methods.base import MethodContext
    from methods.dnd import COMPONENTS, DnD

    torch.set_num_threads(args.threads)
    comps = build_components(default_backends(COMPONENTS, synthetic=True))
    n_all = n_strict = n_any = 0
    with tempfile.TemporaryDirectory(prefix="perf-dnd-planted-") as tmp:
        cache = Cache(Path(tmp) / "cache")
        probe = synthetic_probe(Path(tmp) / "probe")
        print(f"synthetic probe: {len(probe)} images; synthetic backends", flush=True)
        evidence = {}
        for name in RECIPES:
            target = load_target(name)
            ev = record_cached(cache, target, probe, None, k=15, topk_by=("max", "mean"))
            evidence[name] = (target, ev)
            card = load_card(name)
            units = [UnitRef(layer=p["layer"], index=p["unit"]) for p in card["planted_units"]]
            ctx = MethodContext(cache=cache, target=target, components=comps)
            seconds, out = _describe(DnD(), units, ev, ctx)
            for p, d in zip(card["planted_units"], out, strict=True):
                strict = d.ok and names_formula(d.label, p["formula"])
                lenient = d.ok and names_formula(d.label, p["formula"], require="any")
                n_all += 1
                n_strict += strict
                n_any += lenient
                mark = "yes" if strict else "any" if lenient else "no"
                print(f"  {name:20s} {p['layer']}:{p['unit']:<3d} {p['concept']:36s} "
                      f"-> {d.label!r:32s} {mark}")  # fmt: skip
            print(f"  {name}: {seconds / len(units):.3f} s/unit", flush=True)
        print(
            f"planted units named: {n_strict}/{n_all} ({n_strict / n_all:.0%}) with every "
            f"concept of the formula; {n_any}/{n_all} ({n_any / n_all:.0%}) with one side of "
            "each OR"
        )
        target, ev = evidence["synth.resnet"]
        units = [UnitRef(layer=l, index=i) for l, le in ev.layers.items()
                 for i in range(le.num_units)]  # fmt: skip
        ctx = MethodContext(cache=cache, target=target, components=comps)
        method = DnD()
        t0 = time.perf_counter()
        failed = 0
        for chunk in chunks(units, method.chunk_size):
            failed += sum(not d.ok for d in method.describe(chunk, ev, ctx))
        seconds = time.perf_counter() - t0
        print(
            f"synth.resnet, every unit ({len(units)}): {seconds:.1f} s, "
            f"{seconds / len(units):.3f} s/unit, {failed} failed"
        )
    return 0


# --- GPU: full-size architectures -----------------------------------------------------------------


def _words() -> list[str]:
    from bench.components.testing import WORDS

    return list(WORDS)


def full_blip(directory: Path, device: str) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *_words()]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]")
    cfg = BlipConfig(  # blip-image-captioning-base's shape; the vocabulary is ours
        text_config={
            "vocab_size": len(vocab),
            "bos_token_id": vocab.index("[DEC]"),
            "pad_token_id": 0,
            "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]"),
        },
        vision_config={"image_size": 384, "patch_size": 16},
    )
    with torch.device(device):
        model = BlipForConditionalGeneration(cfg)
    proc = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tok
    )
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def full_llm(directory: Path, device: str) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *_words()])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
        eos_token="[EOS]",
    )  # fmt: skip
    cfg = LlamaConfig(  # TinyLlama-1.1B's shape with our small vocabulary
        vocab_size=len(vocab),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=vocab["[BOS]"],
        eos_token_id=vocab["[EOS]"],
        pad_token_id=vocab["[PAD]"],
    )
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.float16)
        for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]"):  # answers in words, to the last token
            model.lm_head.weight.data[vocab[t]] = 0
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def full_stable_diffusion(directory: Path, device: str) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", "!", *letters, *(c + "</w>" for c in letters)]
    tokens += [w + "</w>" for w in _words()]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    work = directory.parent / "sd-vocab"
    work.mkdir(exist_ok=True)
    (work / "vocab.json").write_text(json.dumps(vocab))
    (work / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(work / "vocab.json"), str(work / "merges.txt"), pad_token="!", model_max_length=77
    )
    with torch.device(device):
        unet = UNet2DConditionModel(  # stable-diffusion-v1-4's UNet
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(  # its VAE
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text = CLIPTextModel(  # CLIP ViT-L/14's text tower
            CLIPTextConfig(
                vocab_size=max(len(vocab), 49408),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["!"],
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(directory)
    return directory


class RandomProbe:
    """``n`` random RGB images of ``size`` px (resized and centre-cropped by the target)."""

    def __new__(cls, n: int, size: int) -> Any:
        import numpy as np
        from PIL import Image

        from bench.probes.base import ProbeSet

        class _Probe(ProbeSet):
            name = "random"

            def __len__(self) -> int:
                return n

            def identity(self) -> dict[str, Any]:
                return {"name": "random", "n": n, "size": size}

            def load_image(self, i: int) -> Image.Image:
                rng = np.random.default_rng(i)
                return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

        return _Probe()


def gpu_full(args: argparse.Namespace) -> int:
    import torch

    from bench.cache import Cache
    from bench.components import build_components
    from bench.record import record_cached
    from bench.schema import UnitRef
    from bench.targets import Target, build_architecture, torchvision_specs
    from methods.base import MethodContext
    from methods.dnd import DnD

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --gpu-full needs CUDA (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if not args.smoke:
        torch.set_num_threads(min(torch.get_num_threads(), 16))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    spec = next(s for s in torchvision_specs() if s.name == "resnet50")
    with torch.device(device):
        net = build_architecture(spec).eval()
    target = Target(spec=spec, model=net, weights_sha256="random-init", class_names=None)
    status = 0
    with tempfile.TemporaryDirectory(prefix="perf-dnd-gpu-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        if args.smoke:  # the flow of this mode with tiny models, to check it runs anywhere
            from bench.components import testing as tiny

            blip = tiny.tiny_blip(root / "blip")
            llm = tiny.tiny_causal_lm(root / "llm")
            sd = tiny.tiny_stable_diffusion(root / "sd")
        else:
            blip = full_blip(root / "blip", device)
            llm = full_llm(root / "llm", device)
            sd = full_stable_diffusion(root / "sd", device)
        print(f"built and saved the random models in {time.perf_counter() - t0:.0f} s")
        cache = Cache(root / "cache")
        t0 = time.perf_counter()
        ev = record_cached(
            cache, target, RandomProbe(args.images, 256), ["layer4"], k=10, topk_by=("mean",),
            quantiles=(), device=device, batch_size=128,
        )  # fmt: skip
        print(
            f"recorded resnet50 layer4 on {args.images} images in {time.perf_counter() - t0:.1f} s"
        )
        presets = list(PRESETS) if args.preset == "both" else [args.preset]
        for preset in presets:
            p = dict(PRESETS[preset])
            if args.smoke:
                p.update(steps=2, size=32)
            comps = build_components(
                {
                    "captioner": "blip",
                    "language_model": "hf",
                    "text_to_image": "stable-diffusion",
                    "image_encoder": "open-clip",
                },
                {
                    "captioner": {"model": str(blip), "batch_size": 64},
                    "language_model": {
                        "model": str(llm),
                        "batch_size": 96,
                        "dtype": "float32" if args.smoke else "float16",
                    },
                    "text_to_image": {
                        "model": str(sd),
                        "steps": p["steps"],
                        "size": p["size"],
                        "batch_size": args.sd_batch,
                    },
                    "image_encoder": {"model": "ViT-B-16", "pretrained": None},
                },
                device=device,
            )
            ctx = MethodContext(cache=cache, target=target, components=comps, device=device)
            method = DnD(component_cache="never", batch_size=128)
            units = [UnitRef(layer="layer4", index=i) for i in range(args.units)]
            _describe(method, [UnitRef(layer="layer4", index=2047)], ev, ctx)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds, out = _describe(method, units, ev, ctx)
            per_unit = seconds / len(units)
            ok = sum(d.ok for d in out)
            cands = sum(len(d.extras.get("candidates", [])) for d in out if d.ok) / max(ok, 1)
            verdict = "ok" if per_unit < TARGET_SECONDS_PER_UNIT else "MISSED"
            print(
                f"[{preset}: {p['steps']} steps, {p['size'] or 512} px] {per_unit:.2f} s/unit over "
                f"{len(units)} units ({ok} ok, {cands:.1f} candidates/unit); paper "
                f"{PAPER_SECONDS_PER_UNIT} s/unit on a V100 "
                f"({PAPER_SECONDS_PER_UNIT / per_unit:.1f}x faster); "
                f"target < {TARGET_SECONDS_PER_UNIT:.0f} s/unit  {verdict}",
                flush=True,
            )
            print(f"  stages: {_stages(out)}", flush=True)
            del comps
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.dnd_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=None, help="units described (CPU 16, GPU 8)")
    parser.add_argument("--images", type=int, default=None, help="probe images (CPU 300, GPU 500)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU mode)")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps (CPU mode)")
    parser.add_argument("--gpu-full", action="store_true", help="full-size models on CUDA")
    parser.add_argument(
        "--planted", action="store_true", help="synthetic world: planted-unit labels and timing"
    )
    parser.add_argument("--preset", choices=[*PRESETS, "both"], default="both")
    parser.add_argument("--device", default="cuda", help="device of --gpu-full")
    parser.add_argument("--sd-batch", type=int, default=40, help="images per diffusion call")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if args.planted:
        return planted(args)
    if args.gpu_full:
        args.units = args.units or 8
        args.images = args.images or 500
        return gpu_full(args)
    args.units = args.units or 16
    args.images = args.images or 300
    return cpu_batching(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
