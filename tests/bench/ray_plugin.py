"""Test methods and jobs for the executor tests (tests/bench/test_ray_executor.py and
test_executors.py), shipped as a plug-in.

Workers (Ray workers, pool processes, a driver in a subprocess) import a shard's method by its
class path (``tests.bench.ray_plugin:Gate``), as they would import an installed plug-in on every
node: the tests put the repository on their ``PYTHONPATH`` and, for drivers in a subprocess,
register the methods through an entry-point file (group ``bench.methods``).

:class:`Gate` describes units cheaply and is controlled through files in its ``control``
directory, so that a test can catch a worker while it holds a shard:

* every computed unit is appended to ``computed.log`` as ``unit pid node`` (one ``write``);
* ``hold_first``: the first shard to create ``held`` writes its pid to ``holder.pid`` and sleeps
  (a test kills that worker); every later attempt proceeds;
* ``gate_from``: a shard with a unit whose index is at least this waits for the file ``open``
  (a test kills the driver meanwhile, and creates ``open`` for the rerun);
* ``hold_node``: a shard on that Ray node writes ``holding.<pid>`` and sleeps (a test removes the
  node meanwhile).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.method import Method, Requirements, Resources
from bench.schema import Description

#: Longest wait for a test to act (kill or open); then the shard fails loudly.
MAX_WAIT_S = 120.0


@dataclass(frozen=True, kw_only=True, slots=True)
class GateConfig:
    control: str = ""
    hold_first: bool = False
    gate_from: int = -1
    hold_node: str = ""
    #: Seconds per shard (a cost to spread over workers).
    delay: float = 0.0


def node_id() -> str:
    """The Ray node this process runs on; ``local`` outside Ray (never imports Ray)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


def node_of(item: object) -> str:
    """The node a job ran on (an executor's ``map`` function: importable by workers)."""
    return node_id()


def die_once(item: tuple[str, int, bool]) -> int:
    """``2 * value`` of ``(control, value, always)``; the process SIGKILLs itself instead the
    first time a job with value 0 runs (the file ``died`` marks it), or every time if ``always``."""
    control, value, always = item
    if value == 0:
        try:
            fd = os.open(Path(control) / "died", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if always:
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return 2 * value


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + MAX_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {MAX_WAIT_S} s: the test never released it")
        time.sleep(0.05)


class Gate(Method[GateConfig]):
    """Labels each unit ``unit N``, logging where it was computed."""

    name = "ray-test-gate"
    version = "1"
    chunk_size = 2
    requires = Requirements()  # reads no evidence: the run records nothing

    def _describe(self, units, evidence, ctx):  # type: ignore[no-untyped-def]
        control = Path(self.config.control)
        if self.config.hold_first:
            try:
                fd = os.open(control / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass  # another attempt was held already: this one proceeds
            else:
                os.close(fd)
                (control / "holder.pid.tmp").write_text(str(os.getpid()))
                os.replace(control / "holder.pid.tmp", control / "holder.pid")
                _wait_for(control / "never")  # until the test kills this process
        if self.config.hold_node and node_id() == self.config.hold_node:
            (control / f"holding.{os.getpid()}").touch()
            _wait_for(control / "never")  # until the test removes this node
        if self.config.gate_from >= 0 and any(u.index >= self.config.gate_from for u in units):
            _wait_for(control / "open")
        if self.config.delay:
            time.sleep(self.config.delay)
        node = node_id()
        line = "".join(f"{u} {os.getpid()} {node}\n" for u in units)
        fd = os.open(control / "computed.log", os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return [
            Description(unit=u, label=f"unit {u.index}", extras={"node": node, "pid": os.getpid()})
            for u in units
        ]


class GpuGate(Gate):
    """:class:`Gate` that asks each shard for a GPU with 24 GiB (on a GPU run)."""

    name = "ray-test-gpu"
    requires = Requirements(resources=Resources(gpus=1, gpu_memory=24))


class ActorGate(Gate):
    """:class:`Gate` whose shards go to long-lived workers (Ray actors), as DnD's and MILAN's."""

    name = "ray-test-actor"
    requires = Requirements(resources=Resources(actor=True))


class GreedyGate(Gate):
    """:class:`Gate` whose shards ask for more CPUs than the tests' clusters have."""

    name = "ray-test-greedy"
    requires = Requirements(resources=Resources(cpus=64))
