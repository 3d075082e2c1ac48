"""What splitting a recording by image ranges costs: one pass against the same recording as
``--jobs`` range jobs run one after the other in this process and merged (``record_cached`` with
``images_per_job``), on the shipped synthetic target and the synthetic probe.

Each round records into fresh caches, one pass and the ranges (which goes first alternates between
rounds, so a drift in the machine's load does not favour one side; an untimed small round first
takes torch's first-pass costs); the reported ratio is the
median of the per-round ratios (ranged / one pass), with the time of the jobs and of planning +
checking + merging + storing beside it. Serially the ranges can only cost more (the same forward
passes plus the merge); the figure is the overhead a cluster pays back. No target: a report, not
a test.

``python -m perf record_ranges`` runs it with the defaults (500 images, 3 rounds: about a minute
on two cores); ``python -m perf.record_ranges_perf --images 2000`` for the larger figure (about
five minutes); ``--help`` for the other options.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def one_round(
    n_images: int, jobs: int, batch_size: int, maps: bool, *, ranged_first: bool = False
) -> tuple[float, float, float]:
    """``(one pass s, ranged s, of which jobs s)`` of one round in fresh caches."""
    from bench.cache import Cache
    from bench.probes import load_probe
    from bench.record import record_cached
    from bench.targets import load_target

    with tempfile.TemporaryDirectory() as tmp:
        probe_cache = Cache(Path(tmp) / "probe")
        target = load_target("synth.resnet", cache=probe_cache)
        probe = load_probe(
            "synthetic", None, options={"n_images": str(n_images)}, cache=probe_cache
        )
        kwargs: dict[str, Any] = dict(batch_size=batch_size, store_maps=maps)

        def one_pass() -> float:
            start = time.perf_counter()
            record_cached(Cache(Path(tmp) / "one"), target, probe, None, **kwargs)
            return time.perf_counter() - start

        per_job = -(-n_images // jobs)
        job_seconds = 0.0

        # run_range_job loads by name: time the in-process path instead
        def serial(fn: Any, planned: Any) -> list[str]:
            nonlocal job_seconds
            from bench.record import _run_part

            t0 = time.perf_counter()
            cache = Cache(planned[0].cache_root)
            out = [str(_run_part(job, cache, target, probe)) for job in planned]
            job_seconds += time.perf_counter() - t0
            return out

        def ranged_pass() -> float:
            start = time.perf_counter()
            record_cached(
                Cache(Path(tmp) / "ranged"),
                target,
                probe,
                None,
                images_per_job=per_job,
                map_jobs=serial,
                **kwargs,
            )
            return time.perf_counter() - start

        if ranged_first:
            ranged = ranged_pass()
            one = one_pass()
        else:
            one = one_pass()
            ranged = ranged_pass()
    return one, ranged, job_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.record_ranges_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--images", type=int, default=500, help="synthetic probe images (2000: the larger figure)"
    )
    parser.add_argument("--jobs", type=int, default=3, help="range jobs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--maps", action="store_true", help="store every activation map too")
    args = parser.parse_args([] if argv is None else argv)  # python -m perf passes none
    # Warm-up (untimed): torch's first passes in a process cost more than the later ones.
    one_round(min(args.images, 2 * args.batch_size), args.jobs, args.batch_size, args.maps)
    rows = []
    for r in range(args.rounds):
        one, ranged, jobs_s = one_round(
            args.images, args.jobs, args.batch_size, args.maps, ranged_first=r % 2 == 1
        )
        rows.append((one, ranged, jobs_s))
        print(
            f"round {r + 1}: one pass {one:.2f} s; {args.jobs} ranges {ranged:.2f} s "
            f"(jobs {jobs_s:.2f} s, plan+check+merge+store {ranged - jobs_s:.2f} s); "
            f"ratio {ranged / one:.2f}x",
            flush=True,
        )
    ratio = statistics.median(r[1] / r[0] for r in rows)
    merge = statistics.median((r[1] - r[2]) / r[0] for r in rows)
    print(
        f"synth.resnet, {args.images} synthetic images, batch {args.batch_size}, "
        f"maps={args.maps}: {args.jobs} ranges merged serially / one pass = {ratio:.2f}x "
        f"(median of {args.rounds}); merge and bookkeeping alone = {merge:.2f}x of one pass"
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
