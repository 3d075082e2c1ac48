"""The describe stage: resolve a run, record once, describe units with each method in chunks through
the describe cache, and resume.

A run directory holds ``run.json`` (schema version, resolved config, provenance, stage status) and
one ``<method>/units.jsonl`` per method. Runs resume: the recording stage is served from the cache,
units already in ``units.jsonl`` are skipped, and nothing is written twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.cache import Cache
from bench.environment import provenance, resolve_device
from bench.errors import BenchError, ConfigError, RequirementError, UsageError
from bench.registry import METHODS
from bench.runlock import run_lock
from bench.schema import RunState, UnitRef, dumps
from bench.shards import (
    DESCRIBE_STAGE,
    MethodOutput,
    Shard,
    chunked,
    class_path,
    describe_cached,
    describe_key_parts,
    plan_shards,
    seed_state,
)
from bench.shards import component_identity as _identity

if TYPE_CHECKING:
    from bench.evidence import Evidence
    from bench.executors import Executor
    from bench.method import Method, MethodContext

log = logging.getLogger(__name__)

DEFAULT_TARGET = "synth.resnet"
DEFAULT_PROBE = "synthetic"
__all__ = ["DESCRIBE_STAGE", "RunConfig", "describe_cached", "describe_key_parts", "run"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """What ``bench run`` was asked to do. ``None`` fields take the documented defaults."""

    methods: tuple[str, ...] | None = None  # default: every registered method
    target: str = DEFAULT_TARGET
    weights: str | None = None
    layers: tuple[str, ...] | None = None  # default: the target's layers
    probe: str | None = None  # default: "synthetic" for synthetic targets, else "broden"
    probe_root: str | None = None
    download: bool = False
    units: str | None = None  # e.g. "0-9,15" or "layer4:0-9"; default: every unit
    device: str = "auto"
    seed: int = 0
    batch_size: int = 64
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Options of the probe set's factory as text, e.g. {"categories": "object,part"}.
    probe_options: dict[str, str] = field(default_factory=dict)
    # Component backends by kind, e.g. {"captioner": "blip"}; default: synthetic ones for
    # synthetic targets, the papers' otherwise (bench.components.default_backends).
    components: dict[str, str] = field(default_factory=dict)
    # Options of each component's backend, e.g. {"language_model": {"model": "llama3"}}.
    component_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: str | None = None  # run directory; default results/<target>-<probe>-<hash>
    # The one cache root (stages, datasets, exports, models): a directory, or an fsspec URL
    # (bench.cache: entries mirrored through a node-local staging directory).
    cache_dir: str | None = None
    progress: bool = False
    # Where shards run (bench.executors): "local" (in-process, or a pool of `workers`
    # processes) or "ray" (the cluster at `address`, or a private local one). Results do not
    # depend on them, so they are not part of the run id.
    executor: str = "local"
    address: str | None = None
    workers: int | None = None
    # Seconds the Ray executor waits for an autoscaler to add a node that offers what some
    # work needs; 0: such work is a usage error at once (bench.executors.RayExecutor.check).
    resource_wait: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodSummary:
    name: str
    ok: int
    error: int
    computed: int
    resumed: int
    #: Units served by the describe cache (computed before, by this or another run).
    cached: int = 0
    seconds: float


#: What the recording stage of a run did (RunResult.recording).
RECORDING_STATES = ("computed", "cached", "none")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    run_dir: Path
    methods: tuple[MethodSummary, ...]
    record_cached: bool
    #: "computed" (a forward pass ran), "cached" (served by the cache), or "none" (no method of
    #: the run reads evidence: nothing was recorded).
    recording: str = "computed"

    @property
    def exit_code(self) -> int:
        return 1 if any(m.error for m in self.methods) else 0


# --- helpers ------------------------------------------------------------------------------------


def parse_units(spec: str | None, layer_sizes: dict[str, int]) -> list[UnitRef]:
    """Units to describe: every unit, or ``spec`` such as ``"0-9,15"`` or ``"layer4:0-9,fc:3"``.

    An item without a layer applies to every layer. Indices are 0-based; ranges are inclusive.
    """
    if not spec:
        return [UnitRef(layer=l, index=i) for l, n in layer_sizes.items() for i in range(n)]
    chosen: dict[str, set[int]] = {l: set() for l in layer_sizes}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        layer, sep, rng = item.rpartition(":")
        layers = [layer] if sep else list(layer_sizes)
        for l in layers:
            if l not in layer_sizes:
                from bench.errors import UnknownNameError

                raise UnknownNameError("layer in --units", l, layer_sizes)
        try:
            lo, _, hi = rng.partition("-")
            start, stop = int(lo), int(hi) if hi else int(lo)
        except ValueError as e:
            raise UsageError(
                f"Expected --units items like '5', '0-9' or 'layer4:0-9'; got '{item}'."
            ) from e
        if start < 0 or stop < start:
            raise UsageError(f"Expected a range start <= stop, both >= 0; got '{item}'.")
        for l in layers:
            if stop >= layer_sizes[l]:
                raise UsageError(
                    f"Layer '{l}' has {layer_sizes[l]} units (0-{layer_sizes[l] - 1}); "
                    f"--units asked for '{item}'."
                )
            chosen[l].update(range(start, stop + 1))
    return [UnitRef(layer=l, index=i) for l in layer_sizes for i in sorted(chosen[l])]


def method_classes(names: Sequence[str] | None) -> list[type[Method]]:
    names = list(names) if names else METHODS.names()
    if len(set(names)) != len(names):
        raise UsageError(f"Expected distinct method names, got {names}.")
    return [METHODS.get(n) for n in names]


def build_method(cls: type[Method], overrides: dict[str, Any] | None) -> Method:
    try:
        return cls(**(overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"--config for method '{cls.name}': {e}") from e


def chunks(units: Sequence[UnitRef], size: int) -> Iterator[list[UnitRef]]:
    """Consecutive chunks of at most ``size`` units, never mixing layers."""
    return chunked(units, size)


# --- the run ------------------------------------------------------------------------------------


def resolve_probe_name(config: RunConfig, target_family: str) -> str:
    if config.probe:
        return config.probe
    return DEFAULT_PROBE if target_family == "synthetic" else "broden"


def run(config: RunConfig, *, complete: bool = True, hold: ExitStack | None = None) -> RunResult:
    """Run every method of ``config`` on one target and probe; write the run directory.

    ``run.json`` says ``running`` until the end, ``failed`` (with the error) when a stage
    raises, and ``complete`` at the end when ``complete`` (``bench run`` passes ``False`` and
    marks it complete once the suites are scored: :func:`mark_run`).

    The run directory is locked while it is written (:func:`bench.runlock.run_lock`: another
    process writing it raises :class:`~bench.errors.RunLockedError`). With ``hold`` the lock is
    entered into that stack and stays held until the caller closes it (``bench run`` keeps it
    through scoring); otherwise it is released on return.
    """
    with ExitStack() as own:
        return _run(config, hold if hold is not None else own, complete)


def _run(config: RunConfig, hold: ExitStack, complete: bool) -> RunResult:
    from bench.method import MethodContext
    from bench.probes import load_probe
    from bench.targets import load_target

    t0 = time.perf_counter()
    classes = method_classes(config.methods)  # unknown names fail before anything loads
    methods = [build_method(c, config.method_config.get(c.name)) for c in classes]
    unknown_cfg = sorted(set(config.method_config) - {m.name for m in methods})
    if unknown_cfg:
        raise UsageError(
            f"--config names method(s) {unknown_cfg} that are not in this run "
            f"({', '.join(m.name for m in methods)})."
        )
    device = resolve_device(config.device)
    cache = Cache(config.cache_dir)
    cache.clean_stale()  # temporaries of killed runs

    target = load_target(
        config.target,
        weights=config.weights,
        device=device,
        download=True,
        progress=config.progress,
        cache=cache,
    )
    layers = target.resolve_layers(list(config.layers) if config.layers else None)
    # Everything the user asked for is checked before the expensive stages: the units against
    # the layers' sizes (a shape probe, no recording), the probe set, the components, and each
    # method's own preconditions (Method.check).
    from bench.record import layer_sizes as probe_layer_sizes

    sizes = probe_layer_sizes(target, layers)
    units = parse_units(config.units, sizes)
    probe_name = resolve_probe_name(config, target.spec.family)
    probe = load_probe(
        probe_name,
        config.probe_root,
        download=config.download,
        options=config.probe_options,
        cache=cache,
    )

    components, component_names = _build_components(config, methods, target, device)
    _check_components(components, component_names, methods)
    contexts = {
        m.name: MethodContext(
            cache=cache,
            device=device,
            seed=config.seed,
            workdir=None,
            target=target,
            progress=config.progress,
            # Only what the method declares: every component in a context is part of its
            # describe cache key.
            components={k: components[k] for k in sorted(m.requires.components)},
            probe=probe,
        )
        for m in methods
    }
    for m in methods:
        m.check(contexts[m.name])
    req = _union_requirements(methods)
    record_units = _record_units(config.units, units, sizes, methods)
    resolved = {
        "methods": [m.identity() for m in methods],
        "target": config.target,
        # Local paths absolute, so that the run can be scored from any directory (`bench
        # score`, the suites reading the probe and the target again); the published copies cut
        # them to their last part (bench.results.publishable).
        "weights": _absolute(config.weights),
        "layers": layers,
        "probe": probe_name,
        "probe_root": _absolute(config.probe_root),
        "probe_options": dict(config.probe_options),
        "units": config.units,
        **(
            {"components": component_names, "component_options": config.component_options}
            if component_names
            else {}
        ),
        "device": device,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "record": {
            "k": req["k"],
            "topk_by": req["topk_by"],
            "quantiles": req["quantiles"],
            **({"maps": True} if req["maps"] else {}),
            # With --units: the layers recorded and their units (whole layers in full).
            **({"units": record_units} if record_units is not None else {}),
        },
    }
    run_id = _run_id(resolved, target.identity(), probe.identity())
    run_dir = (
        Path(config.out) if config.out else Path("results") / f"{target.name}-{probe_name}-{run_id}"
    )
    # Everything that can fail (component identities resolve model revisions) before the run
    # directory exists, so a failure leaves no empty directory behind.
    run_provenance = {
        **provenance(),
        "target": target.identity(),
        "probe": probe.identity(),
        **(
            {"components": {k: _identity(c) for k, c in sorted(components.items())}}
            if components
            else {}
        ),
        "cache_dir": cache.location,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    hold.enter_context(run_lock(run_dir))
    state = RunState.open(run_dir, run_id, replace_failed=True)
    if state.stages:
        log.info("resuming run %s in %s", run_id, run_dir)
    state.config = resolved
    state.provenance = run_provenance
    state.status = "running"
    state.error = None
    state.save(run_dir)
    log.info("run directory: %s", run_dir)
    from bench.executors import make_executor

    plan = _Plan(
        config=config,
        target=target,
        probe=probe,
        layers=layers,
        record=cast("dict[str, Any]", resolved["record"]),
        device=device,
        cache_root=cache.location if cache.is_remote else str(cache.root.resolve()),
        run_dir=run_dir.resolve(),
        components=component_names,
    )
    try:
        with make_executor(
            config.executor,
            address=config.address,
            workers=config.workers,
            resource_wait=config.resource_wait,
        ) as ex:
            recording, summaries = _describe_all(
                config, methods, contexts, units, layers, req, cache, target, probe, device,
                state, run_dir, ex, plan,
            )  # fmt: skip
    except BaseException as e:
        mark_run(run_dir, "failed", error=_error_text(e))
        raise
    state.status = "complete" if complete else "running"
    state.summary = {s.name: {"ok": s.ok, "error": s.error} for s in summaries}
    state.seconds = round(time.perf_counter() - t0, 3)
    state.save(run_dir)
    return RunResult(
        run_dir=run_dir,
        methods=tuple(summaries),
        record_cached=recording == "cached",
        recording=recording,
    )


def _error_text(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)


def mark_run(run_dir: str | Path, status: str, *, error: str | None = None) -> None:
    """Set the status of the run in ``run_dir`` (``complete`` once its suites are scored,
    ``failed`` with ``error``); a missing or unreadable ``run.json`` is left alone."""
    from bench.schema import RUN_FILE, read_json

    path = Path(run_dir) / RUN_FILE
    try:
        state = RunState.from_json(read_json(path))
        state.status = status
        state.error = error
        state.save(run_dir)
    except (OSError, ValueError) as e:
        log.warning("could not mark %s as %s: %s", path, status, e)


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What every shard of the run shares (bench.shards.Shard less the method and units)."""

    config: RunConfig
    target: Any
    probe: Any
    layers: list[str]
    record: dict[str, Any]
    device: str
    cache_root: str
    run_dir: Path
    components: dict[str, str]

    def base_shard(self, method: Method, evidence: Evidence) -> Shard:
        from bench.method import config_to_json

        kinds = sorted(method.requires.components)
        return Shard(
            method=method.name,
            method_class=class_path(type(method)),
            method_config=dict(self.config.method_config.get(method.name) or {}),
            method_identity=method.identity(),
            target=self.config.target,
            weights=_absolute(self.config.weights),
            target_identity=self.target.identity(),
            probe=self.probe.name,
            probe_root=_absolute(self.config.probe_root),
            probe_options=dict(self.config.probe_options),
            probe_identity=self.probe.identity(),
            layers=tuple(self.layers),
            record=dict(self.record) if evidence.layers else None,
            record_key=evidence.key,
            components={k: self.components[k] for k in kinds},
            component_options={
                k: dict(v) for k, v in self.config.component_options.items() if k in kinds
            },
            device=self.device,
            seed=self.config.seed,
            cache_root=self.cache_root,
            run_dir=str(self.run_dir),
            units=(),
            resources=config_to_json(method.requires.resources),
        )


def _describe_all(
    config: RunConfig,
    methods: Sequence[Method],
    contexts: dict[str, MethodContext],
    units: list[UnitRef],
    layers: list[str],
    req: dict[str, Any],
    cache: Cache,
    target: Any,
    probe: Any,
    device: str,
    state: RunState,
    run_dir: Path,
    executor: Executor,
    plan: _Plan,
) -> tuple[str, list[MethodSummary]]:
    """``(recording, summaries)``: what the recording stage did (:data:`RECORDING_STATES`)
    and each method's summary."""
    from bench.evidence import Evidence, QuantileSpec
    from bench.method import config_to_json
    from bench.record import record_cached

    # Work the executor can never run (no node offers what a shard needs) fails here, before
    # the recording.
    executor.check(
        [
            (f"A shard of method '{m.name}'", config_to_json(m.requires.resources), device)
            for m in methods
        ]
    )

    def describe(evidence: Evidence) -> list[MethodSummary]:
        out = []
        for m in methods:
            ctx = contexts[m.name]
            ctx.workdir = run_dir
            out.append(_run_method(m, units, evidence, ctx, run_dir, state, executor, plan))
            state.save(run_dir)
        return out

    t_rec = time.perf_counter()
    if not any(m.requires.evidence for m in methods):
        # Nothing to record: the methods (a constant label) read no evidence.
        from bench.cache import sha256_bytes

        ident = {"target": target.identity(), "probe": probe.identity(), "layers": layers}
        key = "none-" + sha256_bytes(dumps(ident).encode())[:16]
        evidence = Evidence(target=target, probe=probe, layers={}, key=key)
        state.stages["record"] = {"status": "done", "skipped": "no method reads evidence"}
        state.save(run_dir)
        return "none", describe(evidence)
    # With workers outside the driver (a process pool, a Ray cluster), the recording is split
    # into image-range jobs that run through the executor and merge exactly into the one-pass
    # entry (bench.record); in-process it is the one pass, as before.
    record_kwargs: dict[str, Any] = {}
    if not executor.in_process:
        from bench.record import WorkerSource

        # Each range job runs the target on the run's device: on a GPU run, it takes a GPU.
        record_kwargs["map_jobs"] = lambda fn, jobs: executor.map(fn, jobs, device=device)
        record_kwargs["source"] = WorkerSource(
            target=config.target,
            weights=_absolute(config.weights),  # workers may run elsewhere
            probe=resolve_probe_name(config, target.spec.family),
            probe_root=_absolute(config.probe_root),
            probe_options=dict(config.probe_options),
            probe_download=config.download,
        )
    from bench.evidence import parse_unit_ranges

    chosen = plan.record.get("units")
    evidence = record_cached(
        cache,
        target,
        probe,
        [layer for layer in layers if chosen is None or layer in chosen],
        units=None
        if chosen is None
        else {layer: parse_unit_ranges(spec) for layer, spec in chosen.items()},
        k=req["k"],
        topk_by=tuple(req["topk_by"]),
        quantiles=tuple(QuantileSpec.parse(q) for q in req["quantiles"]),
        batch_size=config.batch_size,
        device=device,
        progress=config.progress,
        store_maps=req["maps"],
        **record_kwargs,
    )
    record_hit = evidence.cached
    state.stages["record"] = {
        "status": "done",
        "key": evidence.key,
        "cached": record_hit,
        "seconds": round(time.perf_counter() - t_rec, 3),
    }
    state.save(run_dir)
    return ("cached" if record_hit else "computed"), describe(evidence)


def _run_method(
    method: Method,
    units: list[UnitRef],
    evidence: Evidence,
    ctx: MethodContext,
    run_dir: Path,
    state: RunState,
    executor: Executor,
    plan: _Plan,
) -> MethodSummary:
    """Plan the method's shards for the units not yet done, run them through ``executor`` and
    merge each one's partial file into ``units.jsonl`` as it completes."""
    from bench.progress import progress_bar

    t0 = time.perf_counter()
    output = MethodOutput(run_dir / method.name, units)
    done = output.ok_units()
    shards = plan_shards(plan.base_shard(method, evidence), units, done, method.chunk_size)
    stage = state.stages.setdefault(f"method:{method.name}", {})
    stage.update({"status": "running", "method": method.identity(), "executor": executor.name})
    if done:
        log.info("%s: resuming, %d of %d units already done", method.name, len(done), len(units))
    if shards and executor.in_process:
        seed_state(shards[0], method, ctx, evidence)  # the driver's loaded objects
    counts = {"computed": 0, "cached": 0}
    with progress_bar(
        total=sum(len(s.units) for s in shards), desc=method.name, enabled=ctx.progress
    ) as bar:

        def on_done(shard: Shard, result: dict[str, Any]) -> None:
            output.merge(Path(result["part"]))
            counts["cached" if result["cached"] else "computed"] += len(shard.units)
            bar.update(len(shard.units))

        executor.run(shards, on_done)
    output.merge_all()  # partial files of attempts whose result never came back
    missing = [u for u in units if u not in output.done]
    if missing:
        raise BenchError(
            f"{method.name}: {len(missing)} units have no record after every shard ran "
            f"(first: {missing[0]}); rerun the same command to compute them."
        )
    final = [output.done[u] for u in units]
    n_err = sum(not d.ok for d in final)
    stage.update(
        {
            "status": "done",
            "ok": len(final) - n_err,
            "error": n_err,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    if n_err:
        log.warning(
            "%s: %d of %d units failed; see %s", method.name, n_err, len(final), output.path
        )
    return MethodSummary(
        name=method.name,
        ok=len(final) - n_err,
        error=n_err,
        computed=counts["computed"],
        cached=counts["cached"],
        resumed=len(done),
        seconds=time.perf_counter() - t0,
    )


def _build_components(
    config: RunConfig, methods: Sequence[Method], target: Any, device: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The components the run's methods declare, built from the configured backend names."""
    needed = sorted({k for m in methods for k in m.requires.components})
    stray = sorted((set(config.components) | set(config.component_options)) - set(needed))
    if stray:
        raise UsageError(
            f"--component/--component-option name {stray}, which no method of this run uses "
            f"(they use {needed or 'none'})."
        )
    if not needed:
        return {}, {}
    from bench.components import build_components, default_backends

    names = {
        **default_backends(needed, synthetic=target.spec.family == "synthetic"),
        **config.components,
    }
    return build_components(names, config.component_options, device=device), names


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded), ``None`` kept."""
    return str(Path(path).expanduser().resolve()) if path else None


def _check_components(
    components: dict[str, Any], names: dict[str, str], methods: Sequence[Method]
) -> None:
    """Each component's availability (weights here or downloadable, an API key; no model is
    loaded) before anything is recorded: a missing one is a :class:`RequirementError` naming
    the methods that need it, what is missing and how to supply it."""
    from bench.components import ComponentError
    from bench.components.base import check_available

    problems = []
    for kind, component in sorted(components.items()):
        try:
            check_available(component)
        except ComponentError as e:
            users = [m.name for m in methods if kind in m.requires.components]
            who = ", ".join(f"'{u}'" for u in users)
            problems.append(
                f"Method{'s' if len(users) > 1 else ''} {who} cannot run as configured: "
                f"{'they need' if len(users) > 1 else 'it needs'} the {kind} component "
                f"'{names.get(kind, '?')}'. {e} Or choose another backend "
                f"(--component {kind}=NAME), or leave {who} out of --methods."
            )
    if problems:  # every missing one at once, not one per attempt
        raise RequirementError("\n".join(problems))


def _record_units(
    spec: str | None, units: Sequence[UnitRef], sizes: dict[str, int], methods: Sequence[Method]
) -> dict[str, str] | None:
    """What the recording keeps with ``--units``: layer -> unit ranges of the layers that have
    units to describe (``None`` without ``--units``: every unit of every layer). A layer is
    recorded whole when a method's descriptions depend on the whole layer
    (``Method.needs_whole_layers``)."""
    from bench.evidence import format_unit_ranges

    if not spec:
        return None
    by_layer: dict[str, list[int]] = {}
    for u in units:
        by_layer.setdefault(u.layer, []).append(u.index)
    whole = any(m.needs_whole_layers() for m in methods if m.requires.evidence)
    return {
        layer: format_unit_ranges(range(sizes[layer]) if whole else indices)
        for layer, indices in by_layer.items()
    }


def _union_requirements(methods: Sequence[Method]) -> dict[str, Any]:
    from bench.evidence import MILAN_QUANTILE, NETDISSECT_QUANTILE

    k = max([15] + [m.top_k() for m in methods])
    topk_by = sorted({"max"} | {b for m in methods for b in m.requires.topk_by})
    quantiles = sorted(
        {MILAN_QUANTILE.key, NETDISSECT_QUANTILE.key}
        | {q.key for m in methods for q in m.requires.quantiles}
    )
    maps = any("maps" in m.requires.evidence for m in methods)
    return {"k": k, "topk_by": topk_by, "quantiles": quantiles, "maps": maps}


def _run_id(
    resolved: dict[str, Any], target_identity: dict[str, Any], probe_identity: dict[str, Any]
) -> str:
    from bench.cache import sha256_bytes

    parts = {k: v for k, v in resolved.items() if k != "batch_size"}
    return sha256_bytes(
        dumps({"config": parts, "target": target_identity, "probe": probe_identity}).encode()
    )[:12]
