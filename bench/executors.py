"""Executors: where the shards of a run (:mod:`bench.shards`) are executed.

The driver plans the shards, merges their partial files and owns the run directory; an executor
only runs :func:`bench.shards.run_shard` on each shard and reports back. ``local`` (the default)
runs them in the driver's process, or in a pool of ``--workers N`` processes, and imports no
engine. ``ray`` runs them on a Ray cluster (``--address auto`` or ``HOST:PORT``; a private local
Ray without ``--address``): shards become tasks, or go to actors for methods that hold large
models (:class:`bench.method.Resources`), with the method's CPUs, GPUs and GPU memory class as
Ray resources. A shard whose worker dies (killed, out of memory, node lost) is run again, up to
``max_attempts`` times; a worker's own error (a :class:`~bench.errors.BenchError`) ends the run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from bench.errors import BenchError, UsageError
from bench.shards import Shard, run_shard

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
#: Attempts per shard when workers die under it.
MAX_ATTEMPTS = 4

OnDone = Callable[[Shard, dict[str, Any]], None]


class ExecutorError(BenchError):
    """Shards could not be executed (workers kept dying, the cluster is unreachable)."""


class Executor:
    """Runs shards; ``in_process`` executors share the driver's loaded objects."""

    name = "executor"
    in_process = False

    def run(self, shards: Sequence[Shard], on_done: OnDone) -> None:
        """Run every shard, calling ``on_done(shard, result)`` in the driver as each completes."""
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, gpus: float = 0) -> list[Any]:
        """``[fn(x) for x in items]`` through the executor (recording range jobs)."""
        raise NotImplementedError

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

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, gpus: float = 0) -> list[Any]:
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


class RayExecutor(Executor):
    """Shards as Ray tasks, or on actors for methods whose resources say ``actor``."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        num_cpus: int | None = None,
    ):
        try:
            import ray
        except ImportError as e:
            raise UsageError(
                "--executor ray needs Ray: pip install 'neuron-bench[ray]' (on every node)."
            ) from e
        if workers is not None and workers < 1:
            raise UsageError(f"Expected --workers >= 1, got {workers}.")
        self.ray = ray
        self.workers = workers
        self.max_attempts = max_attempts
        self._started = False
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
        if self._started:
            self.ray.shutdown()
            self._started = False

    # -- options --------------------------------------------------------------------------------

    @staticmethod
    def options(shard: Shard) -> dict[str, Any]:
        """Ray options of one shard from its method's resources (GPUs only for a GPU run)."""
        res = shard.resources or {}
        opts: dict[str, Any] = {"num_cpus": float(res.get("cpus", 1))}
        gpus = float(res.get("gpus", 0)) if shard.device.startswith("cuda") else 0.0
        if gpus:
            opts["num_gpus"] = gpus
            if res.get("gpu_memory"):
                from bench.method import gpu_memory_resource

                opts["resources"] = {gpu_memory_resource(int(res["gpu_memory"])): gpus}
        return opts

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

    # -- running --------------------------------------------------------------------------------

    def run(self, shards: Sequence[Shard], on_done: OnDone) -> None:
        if not shards:
            return
        opts = self.options(shards[0])
        if (shards[0].resources or {}).get("actor"):
            self._run_actors(list(shards), opts, on_done)
        else:
            self._run_tasks(list(shards), on_done)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, gpus: float = 0) -> list[Any]:
        remote = self.ray.remote(fn)
        opts: dict[str, Any] = {"num_cpus": 1, **({"num_gpus": gpus} if gpus else {})}
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
        died, and raise a worker's own error."""
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

        fill()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
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


class _ShardWorker:
    """A Ray actor: keeps the models it loaded for the next shard (bench.shards' state)."""

    def run(self, shard_json: dict[str, Any]) -> dict[str, Any]:
        return run_shard(shard_json)


def make_executor(
    name: str = "local", *, address: str | None = None, workers: int | None = None
) -> Executor:
    """The executor ``bench run --executor NAME`` asks for."""
    if name == "local":
        if address:
            raise UsageError("--address is for --executor ray; drop it or add --executor ray.")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers=workers)
    raise UsageError(f"Unknown executor '{name}'; expected one of {', '.join(EXECUTORS)}.")
