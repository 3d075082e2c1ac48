"""The method contract, and the config machinery methods and suites share.

A method is a class: subclass :class:`Method` parametrised by its config
(``class Mine(Method[MineConfig])``), set ``name``, ``version`` and ``requires``, implement
``_describe`` (and ``fit`` if it trains), and register it with ``@METHODS.register("name")`` or an
entry point in the group ``bench.methods``. ``describe`` is the final template method: it checks
requirements, times the work, validates one description per unit, and isolates per-unit failures.

``Config`` (a frozen dataclass whose defaults are the paper's) comes from the type parameter;
a class may also set it directly (``Config = MineConfig``, the form older plug-ins use), and a
subclass may narrow it to a subclass of its parent's config. :class:`Configurable` holds what
methods and suites (:class:`bench.suites.base.Suite`) share: building the config from defaults
and overrides, rejecting unknown fields, and the identity that goes into cache keys.

``methods.base`` re-exports this module, so plug-ins written against it keep working.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from bench.errors import ConfigError, MethodError, RequirementError
from bench.evidence import QuantileSpec
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    from bench.cache import Cache
    from bench.evidence import Evidence
    from bench.probes.base import ProbeSet
    from bench.targets import Target

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENT_KINDS",
    "EVIDENCE_KINDS",
    "Baseline",
    "Configurable",
    "Method",
    "MethodContext",
    "NoConfig",
    "Requirements",
    "Resources",
    "config_to_json",
    "make_config",
]

#: Evidence kinds a method can ask for.
EVIDENCE_KINDS = frozenset(
    {
        "topk",  # top-k probe images per unit, with their activation maps
        "thresholds",  # per-unit activation quantiles (Requirements.quantiles)
        "pooled",  # pooled activation of every unit on every probe image
        "segmentations",  # per-pixel concept labels of the probe set (Broden format)
        "images",  # the probe images themselves
        "target",  # running the target on new inputs (through ctx.target)
        "maps",  # every activation map of every probe image (NetDissect, CompExp; large)
    }
)
#: Components (DESIGN section 4) a method can ask for.
COMPONENT_KINDS = frozenset(
    {
        "captioner",
        "language_model",
        "text_to_image",
        "image_encoder",
        "text_encoder",
        "image_text_encoder",
    }
)


#: GPU memory classes (GiB) a method may ask for; a cluster node declares every class its GPUs
#: reach as a Ray resource (:func:`Resources.gpu_memory_resource`).
GPU_MEMORY_CLASSES = (8, 16, 24, 40, 80)


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """What one shard of a method (a chunk of units) needs from the machine that runs it.

    ``gpus`` and ``gpu_memory`` apply when the run's device is a GPU (a CPU run asks for none);
    ``gpu_memory`` is a class of :data:`GPU_MEMORY_CLASSES`, in GiB. They also say where a
    worker runs a shard (:func:`bench.shards.work_device`): a method that declares GPUs gets the
    run's device in ``ctx.device``, one that declares none gets the CPU (its target and
    components loaded there) whatever the run's device. So declare ``gpus`` exactly when the
    method's work runs torch on ``ctx.device``. ``actor``: the method holds
    large models (captioners, language or diffusion models) and runs in long-lived workers that
    load them once and take many shards. Executors that run in one process ignore all of it.
    """

    cpus: float = 1
    gpus: float = 0
    gpu_memory: int | None = None
    actor: bool = False

    def __post_init__(self) -> None:
        if not self.cpus > 0 or self.gpus < 0:
            raise ValueError(f"Expected cpus > 0 and gpus >= 0, got {self.cpus}, {self.gpus}.")
        if self.gpu_memory is not None:
            if self.gpu_memory not in GPU_MEMORY_CLASSES:
                raise ValueError(
                    f"Expected gpu_memory in {GPU_MEMORY_CLASSES} (GiB), got {self.gpu_memory}."
                )
            if not self.gpus:
                raise ValueError("gpu_memory needs gpus > 0.")

    def gpu_memory_resource(self) -> str | None:
        """The name of the custom Ray resource of this GPU memory class, e.g.
        ``bench_gpu_mem_24g``; ``None`` without one."""
        return None if self.gpu_memory is None else gpu_memory_resource(self.gpu_memory)


def gpu_memory_resource(gib: int) -> str:
    """The Ray resource a node declares for each GPU whose memory reaches class ``gib``."""
    return f"bench_gpu_mem_{gib}g"


@dataclass(frozen=True, kw_only=True, slots=True)
class Requirements:
    """What a method needs from a run. The runner records the union over all methods;
    ``resources`` is what one shard needs from a machine (executors use it)."""

    evidence: frozenset[str] = frozenset()
    topk_by: tuple[str, ...] = ("max",)
    k: int = 15
    quantiles: tuple[QuantileSpec, ...] = ()
    components: frozenset[str] = frozenset()
    resources: Resources = Resources()

    def __post_init__(self) -> None:
        unknown = set(self.evidence) - EVIDENCE_KINDS
        if unknown:
            raise ValueError(
                f"Unknown evidence kinds {sorted(unknown)}; expected {sorted(EVIDENCE_KINDS)}"
            )
        unknown = set(self.components) - COMPONENT_KINDS
        if unknown:
            raise ValueError(
                f"Unknown components {sorted(unknown)}; expected {sorted(COMPONENT_KINDS)}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class NoConfig:
    """A method or suite without settings."""


@dataclass(kw_only=True)
class MethodContext:
    """What a method may use besides the evidence: device, seed, cache, the target, components.

    ``memory_budget``: bytes a method's large passes over the evidence (the dissection tally of
    NetDissect and CompExp) may hold at once; ``None`` leaves each pass its own default. It
    bounds memory only: results do not depend on it.
    """

    cache: Cache
    device: str = "cpu"
    seed: int = 0
    workdir: Path | None = None
    target: Target | None = None
    components: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    memory_budget: int | None = None
    #: The run's probe set, for :meth:`Method.check` (describing reads it from the evidence).
    probe: ProbeSet | None = None


# --- configs, shared by methods and suites ------------------------------------------------------

C = TypeVar("C")


def config_to_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values (nested dataclasses as objects, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = config_to_json(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def make_config(config_cls: type[C], values: dict[str, Any] | None = None) -> C:
    """Build a frozen config, rejecting unknown fields with the list of known ones."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"Unknown config field(s) {unknown} for {config_cls.__qualname__}; "
            f"expected some of {sorted(names) or '(no fields)'}."
        )
    for f in dataclasses.fields(config_cls):  # type: ignore[arg-type]
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Invalid config for {config_cls.__qualname__}: {e}") from e


def _config_parameter(cls: type) -> type | None:
    """The concrete config class ``cls`` gives its :class:`Configurable` base in its own class
    statement (``class X(Method[XConfig])``), or ``None``."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Configurable):
            args = typing.get_args(base)
            if args and isinstance(args[0], type):
                return args[0]
    return None


class Configurable(Generic[C]):
    """A class with a frozen config dataclass ``Config`` and an instance ``config: C``.

    ``Config`` is the type parameter of the class statement (``class X(Method[XConfig])``), or set
    directly (``Config = XConfig``), or inherited; without any of them it is :class:`NoConfig`.
    ``X(config)`` takes a ready config, ``X(field=value)`` overrides defaults, ``X(config,
    field=value)`` both; unknown fields and wrong types are a :class:`~bench.errors.ConfigError`.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    #: The config dataclass (a ``ClassVar`` in spirit: typing forbids type variables there).
    Config: type[C]
    #: What the class is, in messages: "method" or "suite".
    role: ClassVar[str] = "object"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        param = _config_parameter(cls)
        declared = cls.__dict__.get("Config")
        if declared is None:
            if param is not None:
                cls.Config = param
            elif not hasattr(cls, "Config"):
                cls.Config = NoConfig  # type: ignore[assignment]
            declared = cls.Config
        elif param is not None and not (isinstance(declared, type) and issubclass(declared, param)):
            raise TypeError(
                f"{cls.__qualname__} declares Config = {declared!r}, which is not its type "
                f"parameter {param.__qualname__} (or a subclass); drop one of them."
            )
        if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
            raise TypeError(
                f"{cls.__qualname__}.Config must be a dataclass (frozen, keyword-only), "
                f"got {declared!r}."
            )

    def __init__(self, config: C | None = None, **overrides: Any) -> None:
        label = f"{self.role.capitalize()} '{self._label()}'"
        try:
            if config is None:
                config = make_config(self.Config, overrides)
            elif overrides:
                config = make_config(self.Config, {**config_to_json(config), **overrides})
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from e
        if not isinstance(config, self.Config):
            raise ConfigError(
                f"Expected a {self.Config.__qualname__} for {self.role} '{self._label()}', "
                f"got {type(config).__qualname__}."
            )
        self.config: C = config

    def _label(self) -> str:
        return getattr(self, "name", type(self).__qualname__)

    def identity(self) -> dict[str, Any]:
        """Name, version and resolved config: the object's part of every cache key."""
        return {"name": self.name, "version": self.version, "config": config_to_json(self.config)}


# --- methods ------------------------------------------------------------------------------------


class Method(Configurable[C], abc.ABC):
    """Base class of every method. See the module docstring."""

    role: ClassVar[str] = "method"
    #: ``baseline``: a trivial control shown beside the methods (see :class:`Baseline`).
    kind: ClassVar[Literal["method", "baseline"]] = "method"
    requires: ClassVar[Requirements] = Requirements()
    #: Units per call of ``_describe``; the runner checkpoints after each chunk.
    chunk_size: ClassVar[int] = 256

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "describe" in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__} overrides Method.describe, which is final; "
                "implement _describe instead."
            )

    def check(self, ctx: MethodContext) -> None:
        """Cheap preconditions, called by the runner for every method before any expensive
        stage (recording, training): raise a :class:`~bench.errors.RequirementError` saying what
        is missing and how to supply it (files, downloads). No heavy work here. The base checks
        what ``requires`` declares of the probe set (``ctx.probe``: segmentations); a method
        that overrides this calls ``super().check(ctx)``. The runner checks the components
        (their weights, keys) itself."""
        if ctx.probe is not None:
            problem = self.probe_problem(ctx.probe)
            if problem:
                raise RequirementError(problem)

    def probe_problem(self, probe: Any) -> str | None:
        """What ``requires`` asks of the probe set that ``probe`` lacks, else ``None``."""
        if "segmentations" in self.requires.evidence and not probe.has_segmentations:
            return (
                f"Method '{self.name}' needs a probe set with per-pixel concept segmentations "
                f"(Broden format); '{probe.name}' has none. "
                "Use --probe broden or --probe synthetic."
            )
        return None

    def top_k(self) -> int:
        """Top images per unit the method reads from the ``topk`` evidence: the recording keeps
        at least this many. Default ``requires.k``; a method whose config sets the number
        (DnD's ``num_images``) returns that when larger."""
        return self.requires.k

    def needs_whole_layers(self) -> bool:
        """Whether a unit's description depends on the other units of its layer (CLIP-Dissect's
        prior over the layer): then the runner records every unit of each described layer,
        whatever ``--units`` selects. Default: no, each unit stands alone."""
        return False

    def fit(self, ctx: MethodContext) -> None:  # noqa: B027 - optional hook
        """Train or load what the method needs (MILAN). Default: nothing."""

    @abc.abstractmethod
    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        """One description per unit, in the order given."""

    def describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        """Describe ``units``: the final template method around ``_describe``."""
        units = list(units)
        if not units:
            return []
        self.check_requirements(units, evidence, ctx)
        start = time.perf_counter()
        try:
            out = self._validated(units, self._describe(units, evidence, ctx))
        except Exception as e:  # isolate the failing units: retry one at a time
            if len(units) == 1:
                return [self._failed(units[0], e, time.perf_counter() - start)]
            log.warning(
                "%s failed on a batch of %d units (%s); retrying unit by unit.",
                self.name,
                len(units),
                e,
            )
            return [d for u in units for d in self.describe([u], evidence, ctx)]
        per_unit = (time.perf_counter() - start) / len(units)
        return [d if d.seconds is not None else d.replace(seconds=per_unit) for d in out]

    def check_requirements(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> None:
        req = self.requires
        if not req.evidence and not evidence.layers:
            return  # a method that reads no evidence (a constant label) runs on nothing recorded
        missing_layers = sorted({u.layer for u in units} - set(evidence.layers))
        if missing_layers:
            raise RequirementError(
                f"Method '{self.name}' was asked for layers {missing_layers} "
                f"that were not recorded (recorded: {sorted(evidence.layers)})."
            )
        problem = self.probe_problem(evidence.probe)
        if problem:
            raise RequirementError(problem)
        if "target" in req.evidence and ctx.target is None:
            raise RequirementError(
                f"Method '{self.name}' needs to run the target on new images, "
                "but no target was given in its context."
            )
        missing = sorted(req.components - set(ctx.components))
        if missing:
            raise RequirementError(
                f"Method '{self.name}' needs components {missing}; "
                f"the run provides {sorted(ctx.components) or 'none'}."
            )
        for layer in {u.layer for u in units}:
            le = evidence.layers[layer]
            bad = [u.index for u in units if u.layer == layer and u.index >= le.num_units]
            if bad:
                raise RequirementError(
                    f"Layer '{layer}' has {le.num_units} units; got unit "
                    f"indices {bad[:5]} (0-based)."
                )
            le.rows([u.index for u in units if u.layer == layer])  # each one recorded
            if not le.whole and self.needs_whole_layers():
                raise RequirementError(
                    f"Method '{self.name}' needs every unit of layer '{layer}' recorded (its "
                    "descriptions depend on the whole layer), but the evidence holds "
                    f"{len(le.recorded_units)} of its {le.num_units} units; record the whole "
                    "layer."
                )
            if "topk" in req.evidence:
                for mode in req.topk_by:
                    le.top(mode)
            if "thresholds" in req.evidence:
                for q in req.quantiles:
                    le.threshold(q)
            if "maps" in req.evidence:
                le.require_maps()

    def _validated(self, units: list[UnitRef], out: Any) -> list[Description]:
        if not isinstance(out, list) or len(out) != len(units):
            n = len(out) if isinstance(out, list) else type(out).__name__
            raise MethodError(
                f"Method '{self.name}' returned {n} descriptions for {len(units)} units."
            )
        checked = []
        for u, d in zip(units, out, strict=True):
            if not isinstance(d, Description) or d.unit != u:
                got = d.unit if isinstance(d, Description) else type(d).__name__
                raise MethodError(
                    f"Method '{self.name}' returned a description for {got} where {u} was expected."
                )
            if d.ok and d.score is not None and not math.isfinite(d.score):
                d = d.replace(status="error", error=f"non-finite score {d.score}", label="")
            checked.append(d)
        return checked

    def _failed(self, unit: UnitRef, e: BaseException, seconds: float) -> Description:
        log.warning("%s failed on %s: %s: %s", self.name, unit, type(e).__name__, e)
        return Description(
            unit=unit, label="", status="error", error=f"{type(e).__name__}: {e}", seconds=seconds
        )


class Baseline(Method[C]):
    """A trivial control: the same label for every unit, whatever the evidence.

    Suites score the registered baseline beside every method without running it: they take
    :meth:`constant_label` of a default instance (``bench.suites`` looks it up in ``METHODS``).
    """

    kind: ClassVar[Literal["method", "baseline"]] = "baseline"

    @abc.abstractmethod
    def constant_label(self) -> str:
        """The label of every unit."""

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        label = self.constant_label()
        return [Description(unit=u, label=label, extras={"constant": True}) for u in units]
