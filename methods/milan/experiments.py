"""``bench milan train|evaluate``: MILAN trained on MILANNOTATIONS keys, and the paper's
generalisation experiments (reference 1.8). :mod:`bench.api` reaches these through a lazy string,
so the core never imports a method package."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train(
    *,
    keys: str,
    hold_out: str | None = None,
    out: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train on ``keys`` minus ``hold_out`` (cached by the content hash of the training data and
    the config, in the cache at ``cache_dir``); the model also goes to ``out`` when given."""
    from bench.cache import Cache
    from bench.environment import resolve_device
    from bench.method import make_config
    from methods.milan import MilanConfig, train_on_keys

    return train_on_keys(
        keys,
        out,
        cache=Cache(cache_dir),
        config=make_config(MilanConfig, config),
        hold_out_keys=hold_out,
        seed=seed,
        device=resolve_device(device),
        progress=progress,
    )


def evaluate(
    *,
    experiment: str,
    keys: str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Each split of ``experiment``: train on its train units, corpus BLEU on its test units
    (wPMI and the captioning ablation)."""
    from bench.cache import Cache
    from bench.environment import resolve_device
    from bench.method import make_config
    from methods.milan import MilanConfig, evaluate_split
    from methods.milan.splits import split

    cfg = make_config(MilanConfig, config)
    cache = Cache(cache_dir)
    key_list = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    splits = split(experiment, key_list, seed=seed, root=cfg.annotations_root, cache=cache)
    dev = resolve_device(device)
    return [
        evaluate_split(s, cache=cache, config=cfg, seed=seed, device=dev, progress=progress)
        for s in splits
    ]
