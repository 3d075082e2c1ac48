"""Score a run directory, or labels imported from another tool, with the suites.

:func:`score_run` reads ``<run_dir>/run.json`` and every ``<run_dir>/<method>/units.jsonl``,
adds the constant ``depictions`` baseline when the run lacks it, scores the chosen suites (by
default every suite that applies to the target) and writes ``<run_dir>/suites/<suite>.json``.
:func:`score_labels` reads one label file (``bench.imports``), scores it as a named method of its
own beside the baseline and writes the same kind of result into a directory of its own; only
what the suite needs is loaded, so ``final-layer`` and ``milannotations`` run on text alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, DataError, RequirementError, UnknownNameError, UsageError
from bench.results import (
    MethodCost,
    MethodInfo,
    MethodKind,
    RunIdentity,
    read_run_identity,
    suite_result_path,
    write_suite_result,
)
from bench.schema import (
    Description,
    RunState,
    UnitRef,
    dumps,
    read_descriptions,
    read_json,
)
from bench.suites import get_suite, suite_names
from bench.suites.base import (
    BASELINE,
    MethodLabels,
    ScoreOptions,
    Suite,
    SuiteContext,
    TargetInfo,
    target_info,
)

log = logging.getLogger(__name__)

IMPORT_VERSION = "imported"


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreReport:
    """Where the results went: ``results`` suite -> file; ``skipped`` suite -> why (only when
    the suites were chosen automatically and one could not run here)."""

    run_dir: Path
    results: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# --- methods -------------------------------------------------------------------------------------


def method_kind(name: str) -> MethodKind:
    """The registered method's declared ``kind`` (``baseline`` for trivial controls such as
    ``depictions``), else ``method``."""
    from bench.registry import METHODS

    if name in METHODS:
        try:
            cls = METHODS.get(name)
        except BenchError:
            return "method"
        return cls.kind
    return "method"


def method_cost(descriptions: Sequence[Description], device: str | None) -> MethodCost:
    """Seconds per unit (``Description.seconds``) and model calls per unit
    (``extras["model_calls"]``, averaged over every unit) of one method's descriptions."""
    n = len(descriptions)
    seconds = [d.seconds for d in descriptions if d.seconds is not None]
    calls: dict[str, float] = {}
    for d in descriptions:
        mc = d.extras.get("model_calls") if isinstance(d.extras, dict) else None
        if not isinstance(mc, dict):
            continue
        for k, v in mc.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                calls[str(k)] = calls.get(str(k), 0.0) + float(v)
    return MethodCost(
        seconds_per_unit=math.fsum(seconds) / len(seconds) if seconds else None,
        model_calls_per_unit={k: v / n for k, v in sorted(calls.items())} if n else {},
        device=device,
    )


def baseline_labels(name: str = BASELINE) -> MethodLabels:
    """The registered baseline ``name`` as a constant label for every unit (not run:
    constructed)."""
    from bench.method import Baseline
    from bench.registry import METHODS

    cls = METHODS.get(name)
    if not issubclass(cls, Baseline):
        raise UsageError(
            f"Expected the baseline '{name}' to be a bench.method.Baseline (a constant label the "
            f"suites construct), got {cls.__module__}.{cls.__qualname__} of kind '{cls.kind}'."
        )
    method = cls()
    info = MethodInfo.from_identity(
        method.identity(),
        kind="baseline",
        cost=MethodCost(
            seconds_per_unit=0.0, note="constant label, constructed by the suite (not run)"
        ),
    )
    return MethodLabels(info=info, constant=method.constant_label())


def run_methods(run_dir: Path, state: Mapping[str, Any]) -> dict[str, MethodLabels]:
    """Every method of a run with its descriptions, in the run's order."""
    config = state.get("config") or {}
    device = config.get("device")
    out: dict[str, MethodLabels] = {}
    for ident in config.get("methods") or []:
        name = ident.get("name") if isinstance(ident, dict) else None
        if not name:
            continue
        path = run_dir / name / "units.jsonl"
        if not path.is_file():
            log.warning("Method '%s' of %s wrote no %s; it is not scored.", name, run_dir, path)
            continue
        descriptions = read_descriptions(path)
        out[name] = MethodLabels(
            info=MethodInfo.from_identity(
                ident, kind=method_kind(name), cost=method_cost(descriptions, device)
            ),
            descriptions={d.unit: d for d in descriptions},
        )
    return out


def with_baseline(
    methods: dict[str, MethodLabels], options: ScoreOptions
) -> dict[str, MethodLabels]:
    if options.baseline and BASELINE not in methods:
        return {**methods, BASELINE: baseline_labels()}
    return methods


# --- suites --------------------------------------------------------------------------------------


def _suite(name: str, suite_config: Mapping[str, Mapping[str, Any]]) -> Suite:
    cls = get_suite(name)
    return cls(**dict(suite_config.get(name) or {}))


def _check_config_names(
    suite_config: Mapping[str, Mapping[str, Any]], chosen: Sequence[str] | None
) -> None:
    known = suite_names()
    for name in suite_config:
        if name not in known:
            raise UnknownNameError("suite in the suite options", name, known)
        if chosen is not None and name not in chosen:
            raise UsageError(
                f"Options were given for suite '{name}', which is not among the suites to score "
                f"({', '.join(chosen)})."
            )


def _cache(options: ScoreOptions, state: Mapping[str, Any] | None = None) -> Any:
    from bench.cache import Cache

    if options.cache_dir:
        return Cache(options.cache_dir)
    recorded = ((state or {}).get("provenance") or {}).get("cache_dir")
    if recorded and Path(recorded).is_dir():
        return Cache(recorded)
    return Cache()


def _score_suites(
    ctx: SuiteContext,
    names: Sequence[str] | None,
    suite_config: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
) -> ScoreReport:
    auto = names is None
    chosen = list(names) if names is not None else suite_names()
    if len(set(chosen)) != len(chosen):
        raise UsageError(f"Expected distinct suite names, got {', '.join(chosen)}.")
    suites = [(n, _suite(n, suite_config)) for n in chosen]  # bad names and options fail first
    report = ScoreReport(run_dir=out_dir)
    for name, suite in suites:
        reason = suite.applicable(ctx.target)
        if reason is not None:
            if auto:
                log.info("Suite '%s' does not apply to '%s': %s", name, ctx.target.name, reason)
                continue
            raise UsageError(f"Suite '{name}' does not apply to '{ctx.target.name}': {reason}")
        try:
            result = suite.score(ctx)
        except BenchError as e:
            if not auto:
                raise
            # Said once, by whoever reports the skipped suites (the console's `suite X
            # skipped:` line); the log repeats it only with -v.
            log.info("Suite '%s' skipped: %s", name, e)
            report.skipped[name] = str(e)
            continue
        path = write_suite_result(suite_result_path(out_dir, name), result)
        report.results[name] = path
        log.info("suite %s: %s", name, path)
    return report


def check_suites(
    names: Sequence[str],
    *,
    target: str,
    layers: Sequence[str] | None,
    run: Mapping[str, Any],
    options: ScoreOptions,
    suite_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Before a run is recorded: each suite of ``names`` (those asked for by name; the ones
    chosen automatically are skipped with their reason when they cannot run) applies to the
    target and passes its cheap :meth:`Suite.check` (models and their weights, no loading).
    ``run``: the run's configuration as ``run.json`` will hold it (components, options)."""
    suite_config = dict(suite_config or {})
    info = target_info(target, list(layers) if layers else None)
    for name in names:
        suite = _suite(name, suite_config)
        reason = suite.applicable(info)
        if reason is not None:
            raise UsageError(f"Suite '{name}' does not apply to '{target}': {reason}")
        try:
            suite.check(info, run, options)
        except BenchError as e:
            raise RequirementError(
                f"Suite '{name}' cannot score this run as configured: {e}"
            ) from e


# --- entry points --------------------------------------------------------------------------------


def score_run(
    run_dir: str | Path,
    suites: Sequence[str] | None = None,
    *,
    options: ScoreOptions | None = None,
    suite_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> ScoreReport:
    """Score the run in ``run_dir`` with ``suites`` (default: every suite that applies to its
    target; one that cannot run here is skipped and reported) and write
    ``<run_dir>/suites/<suite>.json``. ``suite_config``: suite -> config fields
    (``{"milannotations": {"protocol": "dnd"}}``)."""
    run_dir = Path(run_dir)
    options = options or ScoreOptions()
    suite_config = dict(suite_config or {})
    _check_config_names(suite_config, suites)
    identity = read_run_identity(run_dir)
    state = read_json(run_dir / "run.json")
    unfinished = [
        k for k, v in (state.get("stages") or {}).items() if (v or {}).get("status") != "done"
    ]
    if state.get("status") == "failed" or unfinished:
        # A run being scored by its own `bench run` is "running" with every stage done.
        log.warning(
            "Scoring %s, whose run is %s%s.",
            run_dir,
            state.get("status", "incomplete"),
            f" (unfinished: {', '.join(unfinished)})" if unfinished else "",
        )
    config = state.get("config") or {}
    methods = run_methods(run_dir, state)
    if not methods:
        raise UsageError(f"{run_dir}: the run has no method descriptions to score.")
    cache = _cache(options, state)
    from bench.suites.strips import RunExemplars

    ctx = SuiteContext(
        run=identity,
        target=target_info(identity.target, config.get("layers")),
        methods=with_baseline(methods, options),
        options=options,
        cache=cache,
        run_dir=run_dir,
        weights=config.get("weights"),
        probe_root=config.get("probe_root"),
        exemplar_writer=RunExemplars(
            run_dir, state, cache, count=options.exemplars_per_unit, progress=options.progress
        ),
    )
    from bench.runlock import run_lock

    with run_lock(run_dir):  # re-entrant: `bench run` already holds it
        return _score_suites(ctx, suites, suite_config, run_dir)


def _import_target(target: str, suite: str, suite_config: Mapping[str, Any]) -> TargetInfo:
    from bench.registry import TARGETS
    from bench.suites.milannotations import TARGET_KEYS

    if target in TARGETS or target in TARGET_KEYS:
        return target_info(target)
    if suite == "milannotations" and (suite_config.get("annotations") or suite_config.get("key")):
        return target_info(target)
    raise UnknownNameError(
        "target",
        target,
        TARGETS.names(),
        note="Labels of another network are scored by milannotations against its annotations "
        "(--annotations FILE).",
    )


def label_paths(labels: str | Path | Sequence[str | Path]) -> list[Path]:
    """The label files named by ``labels``: paths or glob patterns (``dnd/*_layer*.csv``),
    globs expanded in sorted order, each file once. A pattern matching nothing is an error."""
    import glob

    items = [labels] if isinstance(labels, (str, Path)) else list(labels)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?[") and not Path(text).expanduser().exists():
            found = sorted(glob.glob(str(Path(text).expanduser())))
            if not found:
                raise UsageError(f"--labels {text}: the pattern matches no file.")
            paths = [Path(f) for f in found]
        else:
            paths = [Path(text).expanduser()]
        for p in paths:
            if p not in out:
                out.append(p)
    if not out:
        raise UsageError("Expected at least one label file, got none.")
    return out


def _config_fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """A suite's options for the import's identity: files by content hash (a path of this
    machine is no part of it), other values as given."""
    from bench.cache import sha256_file

    out: dict[str, Any] = {}
    for k, v in sorted(config.items()):
        if isinstance(v, str) and Path(v).expanduser().is_file():
            out[k] = {"file": Path(v).name, "sha256": sha256_file(Path(v).expanduser())}
        else:
            out[k] = v
    return out


def score_labels(
    labels: str | Path | Sequence[str | Path],
    format: str = "auto",
    *,
    target: str,
    suite: str,
    layer: str | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    weights: str | None = None,
    options: ScoreOptions | None = None,
    suite_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> ScoreReport:
    """Score the labels in ``labels`` (one file, several, or glob patterns; formats of
    :data:`bench.imports.FORMATS`, NetDissect's 1-based units converted) on ``suite`` for
    ``target`` as the method ``name`` (default: the format's name), beside the ``depictions``
    baseline. Several files (DnD's ``..._layer1.csv`` ... ``..._layer4.csv``) are one method and
    one result; each file's layer comes from its ``layer`` column, else ``layer``, else its name
    (``_layer3``, ``_fc``; :func:`bench.imports.layer_in_file_name`).

    Writes ``<out>/run.json`` and ``<out>/suites/<suite>.json`` (default ``out``:
    ``results/<target>-import-<name>-<id>``, the id a digest of the files' contents, the name,
    the target, the suite and its options, so the same labels scored with other settings go
    elsewhere). Formats without a layer column take ``layer``; ``final-layer`` defaults it to
    the target's final layer. Text-only suites load no weights and no images.
    """
    from bench.cache import sha256_bytes
    from bench.environment import provenance
    from bench.imports import FORMATS, detect_format, import_labels, layer_in_file_name

    options = options or ScoreOptions()
    suite_config = dict(suite_config or {})
    _check_config_names(suite_config, [suite])
    _suite(suite, suite_config)  # unknown suites and bad options fail before any reading
    info = _import_target(target, suite, suite_config.get(suite) or {})
    paths = label_paths(labels)
    imports = []
    for path in paths:
        file_layer = layer
        fmt = format if format != "auto" else (detect_format(path) if path.is_file() else None)
        no_layer_column = fmt is not None and fmt in FORMATS and not FORMATS[fmt].has_layer_column
        if (
            file_layer is None
            and suite == "final-layer"
            and info.spec is not None
            and no_layer_column
            and layer_in_file_name(path) is None
        ):
            file_layer = info.spec.final_layer
        imports.append(import_labels(path, format, layer=file_layer))
    formats = sorted({i.format for i in imports})
    if name is None and len(formats) > 1:
        raise UsageError(
            f"The label files are of several formats ({', '.join(formats)}); pass --name to "
            "score them as one method."
        )
    name = name or imports[0].format
    if options.baseline and name == BASELINE:
        raise UsageError(
            f"The imported labels cannot be named '{BASELINE}': that is the constant baseline "
            "scored beside them. Pass another --name."
        )
    if len(imports) == 1:
        source = imports[0].provenance()
        source_text = f"{source['file']} ({imports[0].format})"
    else:
        source = {
            "format": "+".join(formats),
            "files": [i.provenance() for i in imports],
            "units": sum(len(i.descriptions) for i in imports),
        }
        source_text = f"{len(imports)} files ({'+'.join(formats)}): " + ", ".join(
            Path(i.path).name for i in imports
        )
    key = None
    if suite == "milannotations":
        from bench.suites.milannotations import canonical_layer, milannotations_key

        key = milannotations_key(info, (suite_config.get(suite) or {}).get("key"))
    descriptions: dict[UnitRef, Description] = {}
    where: dict[UnitRef, str] = {}
    for imported in imports:
        for d in imported.descriptions:
            unit = d.unit
            if key is not None:
                unit = UnitRef(layer=canonical_layer(key, unit.layer), index=unit.index)
            if unit in descriptions:
                raise DataError(
                    f"Unit {unit} is labelled in both {where[unit]} and "
                    f"{Path(imported.path).name}; expected each unit in one file. Pass files of "
                    "distinct layers (or --layer for one of them)."
                )
            where[unit] = Path(imported.path).name
            descriptions[unit] = d if unit == d.unit else d.replace(unit=unit)
    file_layers = list(dict.fromkeys(u.layer for u in descriptions))
    spec_layers = list(info.spec.layers) if info.spec is not None else []
    layers = [la for la in spec_layers if la in file_layers] + [
        la for la in file_layers if la not in spec_layers
    ]
    info = TargetInfo(name=info.name, spec=info.spec, layers=tuple(layers))
    method = MethodLabels(
        info=MethodInfo(
            name=name,
            version=IMPORT_VERSION,
            config=source,
            kind="imported",
            source=source_text,
            cost=MethodCost(note="imported labels: no cost measured here"),
        ),
        descriptions=descriptions,
    )
    run_config = {"import": source, "name": name, "target": target, "probe": None, "layers": layers}
    identity = {
        "import": source,
        "name": name,
        "target": target,
        "suite": suite,
        "suite_config": _config_fingerprint(suite_config.get(suite) or {}),
        "baseline": options.baseline,
        "text": options.text,
    }
    run_id = sha256_bytes(dumps(identity).encode())[:12]
    out_dir = Path(out) if out is not None else Path("results") / f"{target}-import-{name}-{run_id}"
    state = RunState.open(out_dir, run_id, kind="import")
    state.status = "complete"
    state.config = run_config
    state.provenance = provenance()
    ctx = SuiteContext(
        run=RunIdentity.from_run_state(state.to_json()),
        target=info,
        methods=with_baseline({name: method}, options),
        options=options,
        cache=_cache(options),
        run_dir=out_dir,
        weights=weights,
    )
    report = _score_suites(ctx, [suite], suite_config, out_dir)
    state.save(out_dir)
    return report
