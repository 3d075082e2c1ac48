"""Executors: where the shards of a run (:mod:`bench.shards`) are executed.

The driver plans the shards, merges their partial files and owns the run directory; an executor
only runs :func:`bench.shards.run_shard` on each shard and reports back. ``local`` (the default)
runs them in the driver's process, or in a pool of ``--workers N`` processes, and imports no
engine. ``ray`` runs them on a Ray cluster (``--address auto`` or ``HOST:PORT``; a private local
Ray without ``--address``): shards become tasks, or go to actors for methods that hold large
models (:class:`bench.method.Resources`), with the method's CPUs, GPUs and GPU memory class as
Ray resources (:func:`ray_options`): GPUs exactly when the work runs on a GPU
(:func:`bench.shards.work_device`). Before anything is submitted, the Ray executor checks that
some node of the cluster offers what one shard or job needs (:meth:`RayExecutor.check`): work no
node can take would wait forever, so it is a usage error that names the missing resource, unless
``resource_wait`` seconds are given for an autoscaler to add such a node. A shard whose worker
dies (killed, out of memory, node lost) is run again, up to ``max_attempts`` times; a worker's
own error (a :class:`~bench.errors.BenchError`) ends the run.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.errors import BenchError, UsageError
from bench.shards import Shard, run_shard, work_device

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
#: Attempts per shard when workers die under it.
MAX_ATTEMPTS = 4

OnDone = Callable[[Shard, dict[str, Any]], None]
#: What one recording range job (bench.record.run_range_job) needs: it runs the target on the
#: run's device, so one GPU on a GPU run (bench.method.Resources as JSON).
RANGE_JOB_RESOURCES: dict[str, Any] = {"cpus": 1, "gpus": 1}
#: Seconds between looks at the cluster while waiting for resources (``resource_wait``).
RESOURCE_POLL_S = 2.0


class ExecutorError(BenchError):
    """Shards could not be executed (workers kept dying, the cluster is unreachable)."""


class Executor:
    """Runs shards; ``in_process`` executors share the driver's loaded objects."""

    name = "executor"
    in_process = False

    def run(self, shards: Sequence[Shard], on_done: OnDone) -> None:
        """Run every shard, calling ``on_done(shard, result)`` in the driver as each completes."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        resources: Mapping[str, Any] | None = None,
        device: str = "cpu",
    ) -> list[Any]:
        """``[fn(x) for x in items]`` through the executor (recording range jobs). Each call
        needs ``resources`` (default :data:`RANGE_JOB_RESOURCES`) when it runs on ``device``."""
        raise NotImplementedError

    def check(self, needs: Sequence[tuple[str, Mapping[str, Any], str]]) -> None:
        """Raise a :class:`~bench.errors.UsageError` when some work of ``needs`` (``(what,
        resources, device)``: what one shard or job of it asks for) can never run here."""

    def close(self) -> None:
        """Release workers and connections."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """In the driver's process, or with ``workers > 1`` in a pool of that many processes."""

    name = "local"

    def __init__(self, workers: int | None = None, *, max_attempts: int = MAX_ATTEMPTS):
        if workers is not None and workers < 1:
            raise UsageError(f"Expected --workers >= 1, got {workers}.")
        self.workers = workers or 1
        self.in_process = self.workers == 1
        self.max_attempts = max_attempts
        self._pool: Any = None  # a ProcessPoolExecutor, started on first use

    def run(self, shards: Sequence[Shard], on_done: OnDone) -> None:
        if self.in_process:
            for s in shards:
                on_done(s, run_shard(s.to_json()))
            return
        self._pool_run([(s, s.to_json()) for s in shards], run_shard, on_done)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        resources: Mapping[str, Any] | None = None,
        device: str = "cpu",
    ) -> list[Any]:
        if self.in_process:
            return [fn(x) for x in items]
        results: dict[int, Any] = {}
        self._pool_run(
            list(enumerate(items)), fn, lambda i, r: results.__setitem__(i, r)
        )  # fmt: skip
        return [results[i] for i in range(len(items))]

    def _pool_run(
        self, jobs: list[tuple[Any, Any]], fn: Callable[[Any], Any], on_done: Callable[..., None]
    ) -> None:
        """``jobs``: (tag, argument) pairs; a pool broken by a dead worker is replaced and the
        jobs it held run again. The pool lives until :meth:`close`, so its processes (and what
        they loaded) serve every method and the recording of a run."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        attempts = dict.fromkeys(range(len(jobs)), 0)
        todo = deque(range(len(jobs)))
        while todo:
            pool = self._get_pool()
            futures = {}
            while todo:
                i = todo.popleft()
                attempts[i] += 1
                futures[pool.submit(fn, jobs[i][1])] = i
            broken: list[int] = []
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    i = futures[f]
                    try:
                        result = f.result()
                    except BrokenProcessPool:
                        broken.append(i)
                        continue
                    on_done(jobs[i][0], result)
            if broken:
                self._close_pool()
            for i in sorted(broken):
                if attempts[i] >= self.max_attempts:
                    raise ExecutorError(
                        f"A worker process died {attempts[i]} times under the same job; "
                        "giving up (see the log for memory or signals)."
                    )
                log.warning("a worker process died; running its job again")
                todo.append(i)

    def _get_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._close_pool()


def ray_options(resources: Mapping[str, Any] | None, device: str) -> dict[str, Any]:
    """Ray task or actor options for one piece of work that needs ``resources``
    (:class:`bench.method.Resources` as JSON) in a run on ``device``: its CPUs, and its GPUs and
    GPU memory class exactly when it works on a CUDA device (:func:`bench.shards.work_device`),
    so that a GPU run reserves a GPU for the work that uses one and for no other."""
    res = resources or {}
    opts: dict[str, Any] = {"num_cpus": float(res.get("cpus", 1))}
    if work_device(res, device).startswith("cuda"):
        gpus = float(res["gpus"])
        opts["num_gpus"] = gpus
        if res.get("gpu_memory"):
            from bench.method import gpu_memory_resource

            opts["resources"] = {gpu_memory_resource(int(res["gpu_memory"])): gpus}
    return opts


def ray_demand(opts: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources (``CPU``, ``GPU``, custom ones) that task options take on a node."""
    out = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0))}
    out.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
    return {k: v for k, v in out.items() if v > 0}


def _fits(demand: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(float(node.get(k, 0)) >= v - 1e-9 for k, v in demand.items())


def _fmt(amount: float) -> str:
    return f"{amount:g}"


class RayExecutor(Executor):
    """Shards as Ray tasks, or on actors for methods whose resources say ``actor``.

    ``resource_wait``: seconds to wait, when no node offers what some work needs, for an
    autoscaler to add one (it is asked through ``ray.autoscaler.sdk.request_resources``); 0
    (the default) refuses such work at once with a :class:`~bench.errors.UsageError`."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        num_cpus: int | None = None,
        resource_wait: float = 0.0,
    ):
        try:
            import ray
        except ImportError as e:
            raise UsageError(
                "--executor ray needs Ray: pip install 'neuron-bench[ray]' (on every node)."
            ) from e
        if workers is not None and workers < 1:
            raise UsageError(f"Expected --workers >= 1, got {workers}.")
        if not resource_wait >= 0:
            raise UsageError(f"Expected --resource-wait >= 0 seconds, got {resource_wait}.")
        self.ray = ray
        self.workers = workers
        self.max_attempts = max_attempts
        self.resource_wait = float(resource_wait)
        self._started = False
        self._requested = False  # resources asked of an autoscaler (cleared on close)
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(
                    f"Could not connect to the Ray cluster at '{address or 'a new local one'}': "
                    f"{e}. Start one with 'ray start --head' and pass --address auto."
                ) from e
            self._started = True
        self._task = ray.remote(run_shard)
        self._actor_cls = ray.remote(_ShardWorker)

    def close(self) -> None:
        if self._requested:
            self._request([])
        if self._started:
            self.ray.shutdown()
            self._started = False

    # -- options --------------------------------------------------------------------------------

    @staticmethod
    def options(shard: Shard) -> dict[str, Any]:
        """Ray options of one shard from its method's resources (:func:`ray_options`)."""
        return ray_options(shard.resources, shard.device)

    def _actor_count(self, n_shards: int, opts: dict[str, Any]) -> int:
        if self.workers:
            return min(self.workers, n_shards)
        total = self.ray.cluster_resources()
        fits = [int(total.get("CPU", 1) // max(opts["num_cpus"], 1e-9))]
        if opts.get("num_gpus"):
            fits.append(int(total.get("GPU", 0) // opts["num_gpus"]))
        for name, amount in (opts.get("resources") or {}).items():
            fits.append(int(total.get(name, 0) // amount))
        return max(1, min(n_shards, *fits))

    # -- can the cluster run it at all -----------------------------------------------------------

    def _nodes(self) -> list[dict[str, float]]:
        """The total resources of each live node."""
        return [dict(n.get("Resources") or {}) for n in self.ray.nodes() if n.get("Alive")]

    def check(self, needs: Sequence[tuple[str, Mapping[str, Any], str]]) -> None:
        """Refuse work that no node of the cluster can ever take (Ray would keep it pending
        forever): a :class:`~bench.errors.UsageError` naming what is missing and how to offer
        it. With ``resource_wait``, first ask an autoscaler for it and wait that long."""
        demands: dict[str, dict[str, float]] = {}
        for what, resources, device in needs:
            demands.setdefault(what, ray_demand(ray_options(resources, device)))

        def unmet() -> dict[str, dict[str, float]]:
            nodes = self._nodes()
            return {w: d for w, d in demands.items() if not any(_fits(d, n) for n in nodes)}

        missing = unmet()
        if missing and self.resource_wait > 0:
            log.warning(
                "No node of the Ray cluster offers what %s needs; asking the autoscaler and "
                "waiting up to %g s (--resource-wait) for one",
                ", ".join(missing),
                self.resource_wait,
            )
            self._request(list(missing.values()))
            deadline = time.monotonic() + self.resource_wait
            while missing and time.monotonic() < deadline:
                time.sleep(max(0.0, min(RESOURCE_POLL_S, deadline - time.monotonic())))
                missing = unmet()
        if missing:
            raise UsageError(self._unmet_message(missing, self._nodes()))

    def _request(self, bundles: list[dict[str, float]]) -> None:
        """Ask an autoscaler for ``bundles`` (``[]``: withdraw the request); without one, the
        request is a hint nobody reads."""
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            self._requested = bool(bundles)
        except Exception as e:  # no autoscaler support: the wait still polls the cluster
            log.debug("could not ask the autoscaler for %s: %s", bundles, e)

    def _unmet_message(
        self, missing: Mapping[str, Mapping[str, float]], nodes: Sequence[Mapping[str, float]]
    ) -> str:
        lines = []
        for what, demand in missing.items():
            absent = [k for k, v in demand.items() if not any(n.get(k, 0) >= v for n in nodes)]
            need = ", ".join(f"{k}: {_fmt(v)}" for k, v in demand.items())
            why = (
                f"no node has {', '.join(absent)}"
                if absent
                else "no single node has all of them at once"
            )
            flags = []
            if "CPU" in demand:
                flags.append(f"--num-cpus {_fmt(max(demand['CPU'], 1))}")
            if "GPU" in demand:
                flags.append(f"--num-gpus {_fmt(max(demand['GPU'], 1))}")
            custom = {k: v for k, v in demand.items() if k not in ("CPU", "GPU")}
            if custom:
                amounts = {k: int(v) if float(v).is_integer() else v for k, v in custom.items()}
                flags.append(f"--resources '{json.dumps(amounts)}'")
            lines.append(
                f"{what} needs {{{need}}} on one node, but {why}. Offer it on a node that has "
                f"it: ray start --address HEAD:PORT {' '.join(flags)}"
            )
        shown = [
            "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in sorted(n.items()) if _shown(k)) + "}"
            for n in nodes[:5]
        ]
        more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
        return (
            "The Ray cluster cannot run this work: it would wait forever.\n"
            + "\n".join(f"  {line}" for line in lines)
            + f"\nThe cluster's nodes offer: {', '.join(shown) or 'nothing'}{more}. "
            "A GPU memory class (bench_gpu_mem_<G>g) is declared by each node whose GPUs have at "
            "least G GiB, one per GPU. Or run on the CPU (--device cpu), or, on a cluster that "
            "autoscales, give it time to add such a node (--resource-wait SECONDS)."
            + (f" Waited {self.resource_wait:g} s." if self.resource_wait else "")
        )

    # -- running --------------------------------------------------------------------------------

    def run(self, shards: Sequence[Shard], on_done: OnDone) -> None:
        if not shards:
            return
        first = shards[0]
        self.check([(f"A shard of method '{first.method}'", first.resources, first.device)])
        opts = self.options(first)
        if (first.resources or {}).get("actor"):
            self._run_actors(list(shards), opts, on_done)
        else:
            self._run_tasks(list(shards), on_done)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        resources: Mapping[str, Any] | None = None,
        device: str = "cpu",
    ) -> list[Any]:
        res = RANGE_JOB_RESOURCES if resources is None else resources
        if not items:
            return []
        self.check([("A recording job", res, device)])
        remote = self.ray.remote(fn)
        opts = ray_options(res, device)
        results: dict[int, Any] = {}
        self._loop(
            list(range(len(items))),
            lambda i: remote.options(**opts).remote(items[i]),
            lambda i, r: results.__setitem__(i, r),
        )
        return [results[i] for i in range(len(items))]

    def _run_tasks(self, shards: list[Shard], on_done: OnDone) -> None:
        def submit(s: Shard) -> Any:
            return self._task.options(max_retries=2, **self.options(s)).remote(s.to_json())

        self._loop(shards, submit, on_done)

    def _run_actors(self, shards: list[Shard], opts: dict[str, Any], on_done: OnDone) -> None:
        n = self._actor_count(len(shards), opts)
        actor_opts = {**opts, "max_restarts": 2, "max_task_retries": 2}
        idle: deque[Any] = deque(self._actor_cls.options(**actor_opts).remote() for _ in range(n))
        busy: dict[Any, Any] = {}  # shard key -> actor
        waiting: deque[Shard] = deque()

        def submit(s: Shard) -> Any:
            if not idle:
                return None
            actor = idle.popleft()
            busy[s.key] = actor
            return actor.run.remote(s.to_json())

        def release(s: Shard, dead: bool) -> None:
            actor = busy.pop(s.key, None)
            if actor is None:
                return
            if dead:
                self.ray.kill(actor, no_restart=True)
                actor = self._actor_cls.options(**actor_opts).remote()
            idle.append(actor)

        self._loop(shards, submit, on_done, release=release, waiting=waiting)
        for actor in list(idle) + list(busy.values()):
            self.ray.kill(actor, no_restart=True)

    def _loop(
        self,
        items: list[Any],
        submit: Callable[[Any], Any],
        on_done: Callable[[Any, Any], None],
        *,
        release: Callable[[Any, bool], None] | None = None,
        waiting: deque[Any] | None = None,
    ) -> None:
        """Submit ``items`` (``submit`` returns an object ref, or ``None`` when no worker is
        free: the item waits), collect results as they complete, run again those whose worker
        died, and raise a worker's own error.

        Each wait takes every result that is ready (one blocking ``ray.wait`` for the first,
        one that does not block for the others), so a run of many shards costs a wait per
        batch of completions, not per shard; each result is still handed to ``on_done`` (which
        merges it) before the next wait."""
        ray = self.ray
        from ray import exceptions as rex

        lost = (
            rex.WorkerCrashedError,
            rex.RayActorError,
            rex.NodeDiedError,
            rex.ObjectLostError,
            rex.OwnerDiedError,
            rex.TaskUnschedulableError,
        )
        queue = deque(items) if waiting is None else waiting
        if waiting is not None:
            queue.extend(items)
        attempts: dict[int, int] = {}
        inflight: dict[Any, Any] = {}

        def fill() -> None:
            while queue:
                item = queue[0]
                ref = submit(item)
                if ref is None:
                    return
                queue.popleft()
                attempts[id(item)] = attempts.get(id(item), 0) + 1
                inflight[ref] = item

        def collect(ref: Any) -> None:
            item = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except rex.RayTaskError as e:
                if release:
                    release(item, False)
                cause = e.cause if isinstance(e.cause, BaseException) else None
                if isinstance(cause, BenchError):
                    raise cause from None
                raise ExecutorError(f"A shard failed on a Ray worker: {e}") from e
            except lost as e:
                if release:
                    release(item, True)
                n = attempts.get(id(item), 1)
                if n >= self.max_attempts:
                    raise ExecutorError(
                        f"Ray workers died {n} times under the same shard; giving up: {e}"
                    ) from e
                log.warning("a Ray worker died under a shard (%s); running it again", e)
                queue.append(item)
            else:
                if release:
                    release(item, False)
                on_done(item, result)

        fill()
        while inflight:
            ready, rest = ray.wait(list(inflight), num_returns=1)
            if rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                collect(ref)
            fill()


def _shown(resource: str) -> bool:
    """Resources worth naming to a person (not Ray's per-node bookkeeping ones)."""
    return not (resource.startswith("node:") or resource in ("memory", "object_store_memory"))


class _ShardWorker:
    """A Ray actor: keeps the models it loaded for the next shard (bench.shards' state)."""

    def run(self, shard_json: dict[str, Any]) -> dict[str, Any]:
        return run_shard(shard_json)


def make_executor(
    name: str = "local",
    *,
    address: str | None = None,
    workers: int | None = None,
    resource_wait: float | None = None,
) -> Executor:
    """The executor ``bench run --executor NAME`` asks for."""
    if name == "local":
        if address:
            raise UsageError("--address is for --executor ray; drop it or add --executor ray.")
        if resource_wait:
            raise UsageError(
                "--resource-wait is for --executor ray; drop it or add --executor ray."
            )
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers=workers, resource_wait=resource_wait or 0.0)
    raise UsageError(f"Unknown executor '{name}'; expected one of {', '.join(EXECUTORS)}.")
