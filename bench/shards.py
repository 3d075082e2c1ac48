"""Work as shards: one method, one chunk of units of one layer, and everything needed to describe
them on any machine.

A :class:`Shard` is plain JSON. It names the method (registered name, importable class and
resolved config), the target (name, weights file, identity with the weights hash), the probe set,
the recording (its settings and cache key), the components, the device, the seed, the cache root
and the run directory. A worker (:func:`run_shard`) rebuilds the method's context from it alone,
never from the driver's environment variables, checks that what it loaded has the identities the
driver planned with (a node with other weights or another cache fails loudly), describes the
units through the describe cache, and writes its records to a partial file of its own attempt,
``<run>/<method>/shards/<key>.<attempt>.jsonl``, which appears whole (written aside and renamed).

The driver plans shards (:func:`plan_shards`) and merges the partial files into the method's
``units.jsonl`` (:func:`merge_parts`): one record per unit, torn lines skipped, merged files
removed. A killed worker or driver thus costs at most the shards in flight, and a rerun plans
only the units not yet in ``units.jsonl`` or a partial file.

A worker process keeps what it loaded (target, evidence, method with its models) for the next
shard with the same context (:func:`context_key`), so an actor loads large models once.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cache import sha256_bytes
from bench.errors import BenchError
from bench.schema import (
    Description,
    UnitRef,
    append_descriptions,
    atomic_write,
    dumps,
    read_descriptions,
)

if TYPE_CHECKING:
    from bench.evidence import Evidence
    from bench.method import Method, MethodContext

log = logging.getLogger(__name__)

DESCRIBE_STAGE = "describe"
PARTS_DIR = "shards"
#: Version of the shard format: part of every shard key.
SHARD_VERSION = 1


class ShardError(BenchError):
    """A worker could not rebuild a shard's context as planned (other weights, missing cache)."""


# --- describing with a cache --------------------------------------------------------------------


def describe_key_parts(
    method: Method, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
) -> dict[str, Any]:
    return {
        "method": method.identity(),
        "evidence": evidence.key,
        "units": [str(u) for u in units],
        "seed": ctx.seed,
        "components": {k: component_identity(v) for k, v in sorted(ctx.components.items())},
    }


def component_identity(component: Any) -> Any:
    ident = getattr(component, "identity", None)
    return ident() if callable(ident) else type(component).__qualname__


def describe_cached(
    method: Method, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
) -> tuple[list[Description], bool]:
    """``(descriptions, cache_hit)``. Chunks with failed units are not cached (they are retried)."""
    parts = describe_key_parts(method, units, evidence, ctx)
    key = ctx.cache.key(DESCRIBE_STAGE, parts)
    hit = ctx.cache.load(DESCRIBE_STAGE, key)
    if hit is not None:
        return read_descriptions(hit / "units.jsonl"), True
    out = method.describe(units, evidence, ctx)
    if all(d.ok for d in out):

        def write(tmp: Path) -> None:
            atomic_write(tmp / "units.jsonl", "".join(dumps(d.to_json()) + "\n" for d in out))

        ctx.cache.store(DESCRIBE_STAGE, key, parts, write)
    return out, False


# --- the shard ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Shard:
    """Everything a worker needs to describe ``units`` with one method (JSON values only)."""

    method: str  # registered name
    method_class: str  # "module:QualName", imported by the worker
    method_config: dict[str, Any]
    method_identity: dict[str, Any]
    target: str
    weights: str | None
    target_identity: dict[str, Any]
    probe: str
    probe_root: str | None
    probe_options: dict[str, str]
    probe_identity: dict[str, Any]
    layers: tuple[str, ...]  # the recorded layers (they are part of the recording's key)
    #: Recording settings ({"k", "topk_by", "quantiles", "maps"}); None: nothing was recorded.
    record: dict[str, Any] | None
    record_key: str
    components: dict[str, str]  # kind -> backend, the method's own
    component_options: dict[str, dict[str, Any]]
    device: str
    seed: int
    cache_root: str  # Cache.location: absolute, or a URL; on a cluster, every node reaches it
    run_dir: str  # absolute; the same
    units: tuple[str, ...]  # "layer:index", one layer
    #: What one shard needs from a machine (bench.method.Resources as JSON).
    resources: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["units"] = list(self.units)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Shard:
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        d["units"] = tuple(d["units"])
        return cls(**d)

    def unit_refs(self) -> list[UnitRef]:
        return [parse_unit(u) for u in self.units]

    @property
    def key(self) -> str:
        """Stable content key: the same plan gives the same keys in a restarted driver."""
        return sha256_bytes(
            dumps({"context": context_parts(self), "units": list(self.units)}).encode()
        )[:24]

    @property
    def parts_dir(self) -> Path:
        return Path(self.run_dir) / self.method / PARTS_DIR

    @property
    def work_device(self) -> str:
        """The device a worker runs this shard on (:func:`work_device`)."""
        return work_device(self.resources, self.device)


def work_device(resources: Mapping[str, Any] | None, device: str) -> str:
    """The device a worker runs a piece of work on: the run's ``device`` when the work declares
    GPUs (``resources["gpus"] > 0``: it runs torch there, and executors reserve the GPUs for it),
    else the CPU (the work is CPU-only: its target and components are loaded on the CPU, and it
    takes no GPU, reserved or not). A CPU run is on the CPU either way."""
    gpus = float((resources or {}).get("gpus", 0) or 0)
    return device if gpus > 0 else "cpu"


def parse_unit(text: str) -> UnitRef:
    layer, _, index = text.rpartition(":")
    return UnitRef(layer=layer, index=int(index))


def context_parts(shard: Shard) -> dict[str, Any]:
    """What a worker loads for a shard, minus the units: equal parts share loaded state."""
    return {
        "v": SHARD_VERSION,
        "method": shard.method_identity,
        "method_class": shard.method_class,
        "target": shard.target_identity,
        "weights": shard.weights,
        "probe": shard.probe_identity,
        "record_key": shard.record_key,
        "components": shard.components,
        "component_options": shard.component_options,
        "device": shard.device,
        "seed": shard.seed,
        "cache_root": shard.cache_root,
        "run_dir": shard.run_dir,
    }


def context_key(shard: Shard) -> str:
    return sha256_bytes(dumps(context_parts(shard)).encode())[:24]


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def chunked(units: Sequence[UnitRef], size: int) -> Iterator[list[UnitRef]]:
    """Consecutive chunks of at most ``size`` units, never mixing layers."""
    current: list[UnitRef] = []
    for u in units:
        if current and (len(current) >= size or current[-1].layer != u.layer):
            yield current
            current = []
        current.append(u)
    if current:
        yield current


def plan_shards(
    base: Shard, units: Sequence[UnitRef], done: set[UnitRef], chunk_size: int
) -> list[Shard]:
    """Shards for the units of ``units`` not in ``done``: the chunks of *all* units (so a
    restarted driver cuts them where the first one did) less the units done, empty ones left out.
    ``base`` carries everything but the units."""
    out = []
    for chunk in chunked(units, chunk_size):
        todo = [str(u) for u in chunk if u not in done]
        if todo:
            out.append(Shard.from_json({**base.to_json(), "units": todo}))
    return out


# --- partial files and the merge ----------------------------------------------------------------


def write_part(shard: Shard, descriptions: Sequence[Description]) -> Path:
    """The records of one attempt at ``shard``, written aside and renamed into place whole."""
    attempt = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    path = shard.parts_dir / f"{shard.key}.{attempt}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(dumps(d.to_json()) + "\n" for d in descriptions))
    return path


def complete_parts(method_dir: Path) -> list[Path]:
    """Partial files that were renamed into place (temporaries of killed attempts are hidden)."""
    d = method_dir / PARTS_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.jsonl") if not p.name.startswith("."))


def read_part(path: Path) -> list[Description]:
    """The whole records of a partial file; a torn or unreadable line is skipped, not fatal."""
    import json

    out = []
    try:
        raw = path.read_bytes()
    except OSError as e:
        log.warning("could not read partial file %s: %s", path, e)
        return []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(Description.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping a torn record in %s: %s", path, e)
    return out


class MethodOutput:
    """A method's ``units.jsonl`` in the driver: the records it holds, and the merge of
    partial files into it (append first, then remove the partial file: a driver killed between
    the two leaves a duplicate that the next merge skips)."""

    def __init__(self, method_dir: Path, units: Sequence[UnitRef]):
        self.dir = method_dir
        self.path = method_dir / "units.jsonl"
        self.wanted = set(units)
        method_dir.mkdir(parents=True, exist_ok=True)
        existing = read_descriptions(self.path, repair=True)
        self.done: dict[UnitRef, Description] = {}
        for d in existing:
            if d.ok and d.unit in self.wanted and d.unit not in self.done:
                self.done[d.unit] = d
        if len(self.done) != len(existing):
            # Drop failed (to retry) and foreign or duplicated lines by rewriting the file whole.
            atomic_write(self.path, "".join(dumps(d.to_json()) + "\n" for d in self.done.values()))
        #: Units merged from partial files left by an earlier driver (their work is not redone).
        self.recovered = self.merge_all()

    def merge(self, part: Path) -> list[Description]:
        """Append the records of ``part`` for units not yet here; return the new ones."""
        new = []
        rewrite = False
        for d in read_part(part):
            old = self.done.get(d.unit)
            if d.unit not in self.wanted or (old is not None and (old.ok or not d.ok)):
                continue  # not asked for, or already here (a failure is kept once)
            rewrite = rewrite or old is not None  # a failure replaced by a success
            new.append(d)
            self.done[d.unit] = d
        if rewrite:
            atomic_write(self.path, "".join(dumps(d.to_json()) + "\n" for d in self.done.values()))
        else:
            append_descriptions(self.path, new)
        part.unlink(missing_ok=True)
        return new

    def merge_all(self) -> int:
        n = 0
        for part in complete_parts(self.dir):
            n += sum(d.ok for d in self.merge(part))
        return n

    def ok_units(self) -> set[UnitRef]:
        return {u for u, d in self.done.items() if d.ok}


# --- the worker ---------------------------------------------------------------------------------


@dataclass
class _Prepared:
    method: Method
    ctx: MethodContext
    evidence: Evidence
    fitted: bool = False


#: Loaded contexts of this process by context key (a worker, an actor, or the driver itself).
_STATE: dict[str, _Prepared] = {}


def seed_state(shard: Shard, method: Method, ctx: MethodContext, evidence: Evidence) -> None:
    """Hand a process the objects its driver already loaded (the in-process executor)."""
    _STATE[context_key(shard)] = _Prepared(method=method, ctx=ctx, evidence=evidence)


def forget_state() -> None:
    _STATE.clear()


def run_shard(shard_json: dict[str, Any]) -> dict[str, Any]:
    """Describe one shard and write its partial file: the function every executor runs.

    Returns ``{"key", "part", "units", "cached", "host", "pid"}``."""
    shard = Shard.from_json(shard_json)
    prepared = _prepare(shard)
    if not prepared.fitted:
        prepared.method.fit(prepared.ctx)
        prepared.fitted = True
    out, hit = describe_cached(prepared.method, shard.unit_refs(), prepared.evidence, prepared.ctx)
    part = write_part(shard, out)
    return {
        "key": shard.key,
        "part": str(part),
        "units": len(out),
        "cached": hit,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _prepare(shard: Shard) -> _Prepared:
    key = context_key(shard)
    prepared = _STATE.get(key)
    if prepared is None:
        prepared = _build(shard)
        _STATE.clear()  # one context at a time: a worker that moves on frees the last one
        _STATE[key] = prepared
    return prepared


def _check(what: str, planned: Any, here: Any, hint: str) -> None:
    if planned != here:
        raise ShardError(
            f"This worker ({socket.gethostname()}) loaded a different {what} than the driver "
            f"planned with: planned {dumps(planned)[:300]}, loaded {dumps(here)[:300]}. {hint}"
        )


def _build(shard: Shard) -> _Prepared:
    from bench.cache import Cache
    from bench.evidence import Evidence
    from bench.method import Method, MethodContext
    from bench.probes import load_probe
    from bench.record import cached_run_evidence
    from bench.targets import load_target

    cache = Cache(shard.cache_root)
    module, _, qual = shard.method_class.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ShardError(
            f"Method '{shard.method}' ({shard.method_class}) cannot be imported on "
            f"{socket.gethostname()}: {e}. Install the package that provides it on every node."
        ) from e
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise ShardError(f"{shard.method_class} is not a Method class.")
    method = obj(**shard.method_config)
    _check("method", shard.method_identity, method.identity(), "Install the same version.")
    # The recording is looked up with the run's device (part of its key); everything the
    # worker loads goes to the device it works on (the CPU for a CPU-only method). A remote
    # cache's models directory is this node's own: a named target's weights are fetched here
    # (checked against their published hash, then against the driver's identity below).
    device = shard.work_device
    target = load_target(
        shard.target,
        weights=shard.weights,
        device=device,
        download=cache.is_remote,
        cache=cache,
    )
    _check(
        "target",
        shard.target_identity,
        target.identity(),
        "Every node must see the same weights (the cache or --weights on a shared filesystem).",
    )
    probe = load_probe(
        shard.probe, shard.probe_root, download=False, options=shard.probe_options, cache=cache
    )
    _check("probe set", shard.probe_identity, probe.identity(), "Share the probe set's files.")
    evidence: Evidence | None
    if shard.record is None:
        evidence = Evidence(target=target, probe=probe, layers={}, key=shard.record_key)
    else:
        evidence = cached_run_evidence(
            cache,
            target,
            probe,
            list(shard.layers),
            {"record": shard.record, "device": shard.device},
        )
        if evidence is None:
            raise ShardError(
                f"The recording {shard.record_key[:12]} is not in the cache {shard.cache_root} "
                f"on {socket.gethostname()}. On a cluster the cache must live on a filesystem "
                "every node shares, or at a URL every node reaches (--cache-dir)."
            )
        _check("recording", shard.record_key, evidence.key, "Share the cache directory.")
    components: dict[str, Any] = {}
    if shard.components:
        from bench.components import build_components

        components = build_components(
            shard.components,
            {k: v for k, v in shard.component_options.items() if k in shard.components},
            device=device,
        )
    ctx = MethodContext(
        cache=cache,
        device=device,
        seed=shard.seed,
        workdir=Path(shard.run_dir),
        target=target,
        progress=False,
        components=components,
    )
    return _Prepared(method=method, ctx=ctx, evidence=evidence)
