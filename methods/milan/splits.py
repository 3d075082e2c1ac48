"""MILAN's generalisation experiments (reference 1.8): which MILANNOTATIONS keys (and units)
train a captioner and which test it, on the real keys as the paper, or on generated keys (the
synthetic world's) by their analogues."""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import milannotations as M
from bench.errors import UnknownNameError, UsageError

if TYPE_CHECKING:
    from bench.cache import Cache

EXPERIMENTS: tuple[str, ...] = (
    "within",
    "across-network",
    "across-dataset",
    "across-task",
    "across-arch",
    "leave-one-out",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Split:
    """Train on ``train_keys``, test on ``test_keys``. For ``within`` both are the same key and
    ``train_units`` / ``test_units`` say which units go where (``None``: every unit)."""

    experiment: str
    name: str
    train_keys: tuple[str, ...]
    test_keys: tuple[str, ...]
    train_units: tuple[M.UnitId, ...] | None = None
    test_units: tuple[M.UnitId, ...] | None = None


def holdout_units(
    units: Iterable[M.UnitId], *, fraction: float = M.HOLDOUT, seed: int = 0, salt: str = ""
) -> tuple[tuple[M.UnitId, ...], tuple[M.UnitId, ...]]:
    """``(kept, held out)``: a seeded random ``fraction`` of ``units`` held out (split by unit).

    Independent of the input order (units are sorted first); ``salt`` (a key name) gives each
    key its own draw. At least one unit is held out when there are two or more.
    """
    import numpy as np

    if not 0.0 < fraction < 1.0:
        raise UsageError(f"Expected a held-out fraction in (0, 1), got {fraction}.")
    ordered = sorted(set(units))
    n = len(ordered)
    n_test = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode())])
    test_idx = set(rng.permutation(n)[:n_test].tolist())
    kept = tuple(u for i, u in enumerate(ordered) if i not in test_idx)
    held = tuple(u for i, u in enumerate(ordered) if i in test_idx)
    return kept, held


def _pairs(
    groups: Sequence[Sequence[tuple[str, Sequence[str]]]],
    universe: Sequence[str],
    *,
    both: bool = True,
) -> list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]:
    """Ordered (train side, test side) pairs of named key sets within each group, restricted
    to ``universe``; with ``both=False`` only from each group's first side."""
    out = []
    for sides in groups:
        kept = [(n, tuple(k for k in ks if k in universe)) for n, ks in sides]
        kept = [(n, ks) for n, ks in kept if ks]
        for (a, ka), (b, kb) in itertools.permutations(kept, 2):
            if (not both and (a, ka) != kept[0]) or set(ka) & set(kb):
                continue
            out.append((a, ka, b, kb))
    return out


def _real_groups(experiment: str) -> tuple[list[list[tuple[str, Sequence[str]]]], bool]:
    g = M.groupings()
    if experiment == "across-network":
        return [[("alexnet", g["alexnet"]), ("resnet152", g["resnet152"])]], True
    if experiment == "across-dataset":
        return [[("imagenet", g["imagenet"]), ("places365", g["places365"])]], True
    if experiment == "across-task":
        return [[("cls", g["cls"]), ("gen", g["gen"])]], True
    # across-arch: convolutional networks (base) -> the vision transformer, one direction.
    return [[("base", g["base"]), ("dino_vits8/imagenet", ("dino_vits8/imagenet",))]], False


def _generated_groups(
    experiment: str, universe: Sequence[str]
) -> list[list[tuple[str, Sequence[str]]]]:
    """Groups of named key sets of generated keys (the synthetic analogues, see :func:`split`),
    from each key's facets (architecture and task); splits pair sets of the same group."""
    info = {k: M.key_facets(k) for k in universe}
    archs = sorted({f["arch"] for f in info.values()})
    tasks = sorted({f["task"] for f in info.values()})

    def keys_of(arch: str | None, task: str | None) -> list[str]:
        return [
            k
            for k, f in info.items()
            if (arch is None or f["arch"] == arch) and (task is None or f["task"] == task)
        ]

    if experiment == "across-network":  # same task, another network
        return [[(f"{t}:{a}", keys_of(a, t)) for a in archs] for t in tasks]
    if experiment == "across-dataset":  # same architecture, trained on another labelling
        return [[(f"{a}:{t}", keys_of(a, t)) for t in tasks] for a in archs]
    # across-task: every target of one task -> every target of another
    return [[(t, keys_of(None, t)) for t in tasks]]


def split(
    experiment: str,
    keys: str | Sequence[str] | None = None,
    *,
    seed: int = 0,
    holdout: float = M.HOLDOUT,
    units: M.Milannotations | Mapping[str, Iterable[M.UnitId | tuple[str, int]]] | None = None,
    root: str | os.PathLike[str] | None = None,
    cache: Cache | None = None,
) -> list[Split]:
    """The train/test splits of one of MILAN's generalisation experiments (reference 1.8).

    ``keys`` (keys or groupings) is the pool the experiment draws on; all real or all synthetic.
    Default: the real keys (``base`` for ``within`` and ``leave-one-out``, as the paper).

    Real keys, as the paper: ``within`` each key, a seeded random ``holdout`` (10%) of its
    units held out; ``across-network`` alexnet <-> resnet152; ``across-dataset`` imagenet <->
    places365; ``across-task`` cls <-> gen; ``across-arch`` base -> dino_vits8/imagenet (one
    direction); ``leave-one-out`` not-X -> X for each base key.

    Synthetic keys, the analogues (from each target's recipe: architecture and task):
    ``across-network`` one network -> another trained on the same task (synth.resnet <->
    synth.convnet); ``across-dataset`` one architecture trained on one labelling of the world
    -> the same architecture trained on another, as AlexNet on ImageNet vs Places365
    (synth.resnet <-> synth.resnet_scenes); ``across-task`` the object-classifying targets <->
    the scene-classifying ones (synth.resnet, synth.convnet <-> synth.resnet_scenes; with three
    targets it overlaps ``across-dataset``); ``across-arch`` every other architecture -> one
    architecture, each held out in turn (residual nets -> the plain conv net and back: the world
    has no transformer); ``leave-one-out`` and ``within`` as for real keys.

    ``within`` needs each key's units: from ``units`` (a dataset, or key -> units), else the
    annotations are read (text only) from ``root`` / ``cache`` as :func:`load` does.
    """
    if experiment not in EXPERIMENTS:
        raise UnknownNameError("generalisation experiment", experiment, EXPERIMENTS)
    if keys is None:
        pool = M.BASE_KEYS if experiment in ("within", "leave-one-out") else M.REAL_KEYS
    else:
        pool = M.resolve_keys(keys)
    synthetic = {M.key_info(k).synthetic for k in pool}
    if len(synthetic) != 1:
        raise UsageError(
            f"Expected only real or only synthetic keys for '{experiment}', got both: "
            f"{', '.join(pool)}."
        )
    is_synth = synthetic.pop()
    out: list[Split] = []
    if experiment == "within":
        per_key = _units_by_key(pool, units, root=root, cache=cache)
        for k in pool:
            train, test = holdout_units(per_key[k], fraction=holdout, seed=seed, salt=k)
            out.append(
                Split(
                    experiment=experiment,
                    name=f"within {k}",
                    train_keys=(k,),
                    test_keys=(k,),
                    train_units=train,
                    test_units=test,
                )
            )
        return out
    if experiment == "leave-one-out":
        candidates = [k for k in pool if is_synth or k in M.BASE_KEYS]
        for k in candidates:
            rest = tuple(c for c in candidates if c != k)
            if rest:
                out.append(
                    Split(
                        experiment=experiment,
                        name=f"not-{k.replace('/', '-')} -> {k}",
                        train_keys=rest,
                        test_keys=(k,),
                    )
                )
        return out
    if is_synth and experiment == "across-arch":
        archs = {k: M.key_facets(k)["arch"] for k in pool}
        for arch in sorted(set(archs.values())):
            held = tuple(k for k in pool if archs[k] == arch)
            rest = tuple(k for k in pool if archs[k] != arch)
            if rest and held:
                out.append(
                    Split(
                        experiment=experiment,
                        name=f"not {arch} -> {arch}",
                        train_keys=rest,
                        test_keys=held,
                    )
                )
        return out
    if is_synth:
        pairs = _pairs(_generated_groups(experiment, pool), pool)
    else:
        groups, both = _real_groups(experiment)
        pairs = _pairs(groups, pool, both=both)
    for a, ka, b, kb in pairs:
        out.append(Split(experiment=experiment, name=f"{a} -> {b}", train_keys=ka, test_keys=kb))
    return out


def _units_by_key(
    pool: Sequence[str],
    units: M.Milannotations | Mapping[str, Iterable[M.UnitId | tuple[str, int]]] | None,
    *,
    root: str | os.PathLike[str] | None,
    cache: Cache | None,
) -> dict[str, list[M.UnitId]]:
    out: dict[str, list[M.UnitId]] = {k: [] for k in pool}
    if units is None:
        units = M.load(list(pool), root, images=False, cache=cache)
    if isinstance(units, M.Milannotations):
        for u in units.units:
            if u.key in out:
                out[u.key].append(u)
    else:
        for k, items in units.items():
            if k not in out:
                continue
            for item in items:
                if isinstance(item, M.UnitId):
                    out[k].append(item)
                else:
                    layer, unit = item
                    out[k].append(M.UnitId(key=k, layer=str(layer), unit=int(unit)))
    empty = [k for k, v in out.items() if not v]
    if empty:
        raise UsageError(
            f"Expected units for every key of the 'within' split; none were given for "
            f"{', '.join(empty)}."
        )
    return out


def load_split(
    s: Split, root: str | os.PathLike[str] | None = None, **options: Any
) -> tuple[M.Milannotations, M.Milannotations]:
    """``(train, test)`` datasets of a :class:`Split` (``options`` go to :func:`load`)."""
    train = M.load(list(s.train_keys), root, **options)
    test = train if s.test_keys == s.train_keys else M.load(list(s.test_keys), root, **options)
    if s.train_units is not None:
        train = train.subset(s.train_units)
    if s.test_units is not None:
        test = test.subset(s.test_units)
    return train, test
