"""Components: heavy models behind small protocols (DESIGN section 4), selectable by name.

    from bench.components import build_components
    comps = build_components(
        {"captioner": "blip", "language_model": "openai"},
        {"language_model": {"base_url": "http://127.0.0.1:8000/v1", "model": "llama3"}},
        device="cuda",
    )

Backends per kind (``BACKENDS``; a ``"module:Class"`` name selects a backend of your own):

==============  =========================================  ================================
kind            real backends                              offline
==============  =========================================  ================================
captioner       ``blip`` (transformers BLIP)               ``synthetic`` (pixel recogniser)
language_model  ``openai`` (OpenAI-compatible chat HTTP),  ``synthetic`` (keyword summariser)
                ``hf`` (local transformers causal LM)
text_to_image   ``stable-diffusion`` (diffusers)           ``synthetic`` (phrase renderer)
image_encoder   ``open-clip`` (open_clip)                  ``synthetic`` (a synthetic target)
image_text_     ``open-clip`` (open_clip, both towers)     ``synthetic`` (the world's
encoder                                                    recogniser and phrase parser)
==============  =========================================  ================================

Options are per kind, ``{kind: {option: value}}``: the keyword arguments of the backend's class
(``bench.components.llm.OpenAIChatModel`` etc.); unknown ones are errors that list the known.
Importing this package is light: backends import torch and friends when they are built or used.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from bench.components.base import (
    KINDS,
    PROTOCOLS,
    Captioner,
    ComponentError,
    ImageEncoder,
    ImageInput,
    ImageTextEncoder,
    LanguageModel,
    Message,
    Prompt,
    TextEncoder,
    TextToImage,
    as_messages,
    prompt_seed,
)
from bench.components.cached import CallStats, tracked
from bench.errors import ConfigError, UnknownNameError, UsageError

__all__ = [
    "ALIASES",
    "BACKENDS",
    "KINDS",
    "CallStats",
    "Captioner",
    "ComponentError",
    "ImageEncoder",
    "ImageInput",
    "ImageTextEncoder",
    "LanguageModel",
    "Message",
    "Prompt",
    "TextEncoder",
    "TextToImage",
    "as_messages",
    "backend_class",
    "build_component",
    "build_components",
    "default_backends",
    "parse_component_names",
    "parse_component_options",
    "prompt_seed",
    "tracked",
]

#: kind -> backend name -> "module:Class" (imported when built).
BACKENDS: dict[str, dict[str, str]] = {
    "captioner": {
        "blip": "bench.components.blip:BlipCaptioner",
        "synthetic": "bench.components.synthetic:SyntheticCaptioner",
    },
    "language_model": {
        "openai": "bench.components.llm:OpenAIChatModel",
        "hf": "bench.components.llm:HFCausalLM",
        "synthetic": "bench.components.synthetic:KeywordSummariser",
    },
    "text_to_image": {
        "stable-diffusion": "bench.components.diffusion:StableDiffusion",
        "synthetic": "bench.components.synthetic:SyntheticTextToImage",
    },
    "image_encoder": {
        "open-clip": "bench.components.clip:OpenClipImageEncoder",
        "synthetic": "bench.components.synthetic:SyntheticImageEncoder",
    },
    "text_encoder": {},
    "image_text_encoder": {
        "open-clip": "bench.components.clip:OpenClipImageTextEncoder",
        "synthetic": "bench.components.synthetic:SyntheticImageTextEncoder",
    },
}
#: Other spellings accepted for backend names.
ALIASES: dict[str, str] = {
    "sd": "stable-diffusion",
    "diffusers": "stable-diffusion",
    "clip": "open-clip",
    "open_clip": "open-clip",
    "openai-compatible": "openai",
    "transformers": "hf",
    "keyword": "synthetic",
}
#: What a run uses when it names no backend: the paper's models for real targets, the synthetic
#: world's stand-ins for synthetic targets (everything offline).
REAL_DEFAULTS: dict[str, str] = {
    "captioner": "blip",
    "language_model": "openai",
    "text_to_image": "stable-diffusion",
    "image_encoder": "open-clip",
    "image_text_encoder": "open-clip",
}


def default_backends(kinds: Sequence[str], *, synthetic: bool) -> dict[str, str]:
    """Backend names for ``kinds``: all ``"synthetic"`` for the synthetic world, else the
    paper's models (``REAL_DEFAULTS``)."""
    out = {}
    for kind in kinds:
        _check_kind(kind)
        if kind not in REAL_DEFAULTS:
            raise UsageError(
                f"No built-in backend for component '{kind}'; name one as 'module:Class'."
            )
        out[kind] = "synthetic" if synthetic else REAL_DEFAULTS[kind]
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownNameError("component kind", kind, KINDS)


def backend_class(kind: str, name: str) -> type:
    """The class of backend ``name`` of ``kind`` (built-in, alias, or ``"module:Class"``)."""
    from bench.registry import import_string

    _check_kind(kind)
    name = ALIASES.get(name, name)
    if ":" in name:
        try:
            return import_string(name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"Could not import the {kind} backend '{name}': {e}.") from e
    if name not in BACKENDS[kind]:
        raise UnknownNameError(
            f"{kind} backend", name, BACKENDS[kind], note="Or name a class as 'module:Class'."
        )
    return import_string(BACKENDS[kind][name])


def build_component(
    kind: str, name: str, options: Mapping[str, Any] | None = None, *, device: str | None = None
) -> Any:
    """Build one backend. ``device`` is passed to backends that take one, unless ``options``
    set it. Unknown options are :class:`~bench.errors.ConfigError` listing the known ones."""
    cls = backend_class(kind, name)
    opts = dict(options or {})
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = sorted(p for p in params if p != "self")
    unknown = sorted(set(opts) - set(known))
    if unknown and not takes_any:
        raise ConfigError(
            f"Unknown option(s) {unknown} for the {kind} backend '{name}'; "
            f"expected some of {known or '(none)'}."
        )
    if device is not None and "device" in params and "device" not in opts:
        opts["device"] = device
    try:
        component = cls(**opts)
    except TypeError as e:
        raise ConfigError(f"Invalid options for the {kind} backend '{name}': {e}") from e
    protocol = PROTOCOLS[kind]
    if not isinstance(component, protocol):
        raise UsageError(
            f"Expected the {kind} backend '{name}' to implement {protocol.__name__} "
            f"(methods identity() and {', '.join(_protocol_methods(protocol))}), "
            f"got {type(component).__qualname__}."
        )
    return component


def _protocol_methods(protocol: type) -> list[str]:
    return sorted(
        n for n in vars(protocol) if not n.startswith("_") and callable(getattr(protocol, n))
    )


def build_components(
    names: Mapping[str, str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """``{kind: component}`` for ``names`` (``{kind: backend name}``), with per-kind
    ``options`` (``{kind: {option: value}}``). Options for a kind not in ``names`` are an
    error (a typo would otherwise be ignored)."""
    options = dict(options or {})
    for kind in list(names) + list(options):
        _check_kind(kind)
    stray = sorted(set(options) - set(names))
    if stray:
        raise ConfigError(
            f"Options given for component(s) {stray} that this run does not use "
            f"(it uses {sorted(names) or 'none'})."
        )
    return {
        kind: build_component(kind, name, options.get(kind), device=device)
        for kind, name in names.items()
    }


# --- command-line helpers -----------------------------------------------------------------------


def parse_component_names(items: Sequence[str]) -> dict[str, str]:
    """``["captioner=blip", "language_model=hf"]`` -> ``{"captioner": "blip", ...}``."""
    from bench.options import parse_fields

    out = parse_fields(items, "--component", text=True, shape="KIND=BACKEND")
    for kind, name in out.items():
        _check_kind(kind)
        if not name.strip():
            raise UsageError(f"Expected --component KIND=BACKEND, got '{kind}='.")
    return {k: v.strip() for k, v in out.items()}


def parse_component_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["language_model.base_url=http://127.0.0.1:8000/v1", "text_to_image.steps=25"]`` ->
    ``{"language_model": {"base_url": ...}, "text_to_image": {"steps": 25}}`` (values parsed as
    JSON when they are JSON, else kept as text)."""
    from bench.options import parse_owned_fields

    out = parse_owned_fields(items, "--component-option", "KIND", field="OPTION")
    for kind in out:
        _check_kind(kind)
    return out
