"""A method whose cost per unit is simulated, for the executor benchmark (``perf/ray_perf.py``).

:class:`SleepPerUnit` is a real :class:`~bench.method.Method`: registered for the benchmark's
runs (:func:`registered`), planned into shards of one unit by the runner, executed by the chosen
executor and merged like any method. Its ``_describe`` sleeps ``seconds_per_unit`` per unit (a
stand-in for a method's work that holds no CPU) and labels each unit with the process and Ray
node that described it, so the benchmark can check where the work ran. It reads no evidence, so a
run records nothing. Workers import it by its module path (``perf.simulated_method``): the
repository root must be on their ``sys.path`` (the benchmark passes it through Ray's
``runtime_env``). Not registered anywhere else: it is no method of the benchmark proper.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.method import Method, MethodContext, Requirements, Resources
from bench.schema import Description, UnitRef

if TYPE_CHECKING:
    from bench.evidence import Evidence

NAME = "perf-sleep"


@dataclass(frozen=True, kw_only=True, slots=True)
class SleepConfig:
    seconds_per_unit: float = 0.0

    def __post_init__(self) -> None:
        if not self.seconds_per_unit >= 0:
            raise ValueError(f"Expected seconds_per_unit >= 0, got {self.seconds_per_unit}")


def _node() -> str:
    """The Ray node this process runs on, or the host name outside Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


class SleepPerUnit(Method[SleepConfig]):
    """Sleeps ``seconds_per_unit`` per unit; one unit per shard, one CPU per shard, a task."""

    name = NAME
    version = "1"
    requires = Requirements(resources=Resources(cpus=1))
    chunk_size = 1

    def _describe(
        self, units: Sequence[UnitRef], evidence: Evidence, ctx: MethodContext
    ) -> list[Description]:
        time.sleep(self.config.seconds_per_unit * len(units))
        where = {"pid": os.getpid(), "node": _node()}
        return [Description(unit=u, label=f"unit {u}", extras=where) for u in units]


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """:class:`SleepPerUnit` in the method registry for the duration (the driver resolves
    methods by name; workers import the class by its path)."""
    from bench.registry import METHODS

    METHODS.register(NAME, SleepPerUnit)
    try:
        yield
    finally:
        METHODS.unregister(NAME)
