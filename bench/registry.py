"""One generic registry for methods, targets, probes, suites and metrics.

Entries are either objects or lazy ``"module:attr"`` strings, imported on first use so that
``import bench`` and ``bench --help`` stay light. Third-party packages add methods through the
entry-point group ``bench.methods``; they are discovered on the first lookup, not at import.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bench.errors import UnknownNameError, UsageError

if TYPE_CHECKING:
    from bench.method import Method

log = logging.getLogger(__name__)

T = TypeVar("T")


def import_string(path: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"Expected 'module:attr', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> object, with lazy entries, entry-point discovery and "did you mean" errors.

    ``check`` validates an object when it is resolved (for methods: a subclass of ``Method``
    whose ``name`` equals its key). Registering a taken name is an error, never an override.
    """

    def __init__(
        self,
        kind: str,
        *,
        check: Callable[[str, Any], None] | None = None,
        entry_point_group: str | None = None,
        populate: str | tuple[str, ...] | None = None,
    ):
        self.kind = kind
        # "module:function"(s) that register the built-in entries, called on first lookup.
        self._populate: tuple[str, ...] = (
            (populate,) if isinstance(populate, str) else tuple(populate or ())
        )
        self._check = check
        self._group = entry_point_group
        self._entries: dict[str, Any] = {}
        self._resolved: dict[str, T] = {}
        self._discovered = entry_point_group is None
        self._lock = threading.Lock()

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` (or a ``"module:attr"`` string) under ``name``.

        Without ``obj`` it returns a decorator: ``@METHODS.register("mine")``.
        """
        if obj is None:

            def decorator(o: Any) -> Any:
                self.register(name, o)
                return o

            return decorator
        if not name or name != name.strip():
            raise UsageError(f"Expected a non-empty {self.kind} name without spaces, got {name!r}.")
        with self._lock:
            if name in self._entries and self._entries[name] is not obj:
                raise UsageError(
                    f"A {self.kind} named '{name}' is already registered "
                    f"({self._describe(self._entries[name])}); pick another name."
                )
            if not isinstance(obj, str) and self._check is not None:
                self._check(name, obj)
            self._entries[name] = obj
            self._resolved.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)
            self._resolved.pop(name, None)

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        if name not in self._resolved:
            entry = self._entries[name]
            obj = import_string(entry) if isinstance(entry, str) else entry
            if isinstance(entry, str) and self._check is not None:
                self._check(name, obj)
            self._resolved[name] = obj
        return self._resolved[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _discover(self) -> None:
        if self._populate:
            populate, self._populate = self._populate, ()
            for fn in populate:
                import_string(fn)()
        if self._discovered:
            return
        self._discovered = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group or ""):
            if ep.name in self._entries:
                if self._entries[ep.name] != ep.value:
                    log.warning(
                        "Ignoring entry point %s=%s: the %s name is taken by %s",
                        ep.name,
                        ep.value,
                        self.kind,
                        self._describe(self._entries[ep.name]),
                    )
                continue
            self._entries[ep.name] = ep.value

    @staticmethod
    def _describe(entry: Any) -> str:
        if isinstance(entry, str):
            return entry
        return f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', entry)}"


def _check_method(name: str, obj: Any) -> None:
    from bench.method import Method

    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise UsageError(
            f"Expected a subclass of bench.method.Method (also importable as methods.base.Method) "
            f"for method '{name}', got {obj!r}."
        )
    if obj.name != name:
        raise UsageError(
            f"Method class {obj.__qualname__} has name {obj.name!r} but is registered as {name!r}; "
            "the class attribute `name` must equal the registry key."
        )


METHODS: Registry[type[Method[Any]]] = Registry(
    "method", check=_check_method, entry_point_group="bench.methods"
)
# The synthetic world (bench.synth) registers its own targets, probe sets and MILANNOTATIONS keys
# through these populate strings, as a plug-in would: bench.targets, bench.probes and
# bench.milannotations know nothing of it.
_SYNTH = "bench.synth.registration"
#: name -> bench.targets.TargetSpec
TARGETS: Registry[Any] = Registry(
    "target", populate=("bench.targets:register_builtin_targets", f"{_SYNTH}:register_targets")
)
#: name -> factory(root: Path | None, *, download: bool, cache: Cache, **options) -> ProbeSet
PROBES: Registry[Any] = Registry(
    "probe", populate=("bench.probes:register_builtin_probes", f"{_SYNTH}:register_probes")
)
#: dataset name -> bench.milannotations.KeySource (keys that are generated, not downloaded)
MILANNOTATIONS_SOURCES: Registry[Any] = Registry(
    "MILANNOTATIONS key source", populate=(f"{_SYNTH}:register_milannotations",)
)
#: probe name -> reader(label) -> JSON formula tree over the probe's concepts, or None
#: (bench.presence: free text read into a probe's concepts)
LABEL_READERS: Registry[Any] = Registry(
    "label reader", populate=(f"{_SYNTH}:register_label_readers",)
)
SUITES: Registry[Any] = Registry("suite", populate="bench.suites:register_builtin_suites")
METRICS: Registry[Any] = Registry("metric")

# Built-in methods, lazily: importing them pulls in torch and friends.
METHODS.register("depictions", "methods.baselines:Depictions")
METHODS.register("netdissect", "methods.netdissect:NetDissect")
METHODS.register("compexp", "methods.compexp:CompExp")
METHODS.register("compexp-analysis", "methods.compexp:CompExpAnalysis")
METHODS.register("invert", "methods.invert:Invert")
METHODS.register("dnd", "methods.dnd:DnD")
METHODS.register("milan", "methods.milan:Milan")
METHODS.register("milan-captioning", "methods.milan:MilanCaptioning")
METHODS.register("clip-dissect", "methods.clip_dissect:ClipDissect")
# Built-in metrics, lazily as well.
METRICS.register("bertscore", "metrics.text:bertscore")
METRICS.register("sentence-cosine", "metrics.text:sentence_cosine")
METRICS.register("clip-cosine", "metrics.text:clip_text_cosine")
METRICS.register("auroc", "metrics.classification:auroc_result")
METRICS.register("auprc", "metrics.classification:auprc_result")
