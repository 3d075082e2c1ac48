"""What recording costs: ``bench.record.record`` against a plain forward pass, and its memory.

1. Time: torchvision resnet18 with random weights (plumbing only: weights do not change the speed
   of a forward pass), 224 x 224 random images in an in-memory probe, the default layers
   conv1..layer4 + fc. A plain loop of forward passes over the same batches (same DataLoader and
   preprocessing) against ``record(...)`` with its default statistics (top-15 by max, MILAN's and
   NetDissect's quantiles). Both run alternately ``--rounds`` times; the reported ratio is the
   median of the per-round ratios (each pair ran under similar load on a shared machine), with
   the process CPU-time ratio beside it. Target: under 1.15x.
2. Memory: ``record`` on two probe sizes 4x apart, each in a fresh subprocess, reporting peak RSS
   (``VmHWM``: ``getrusage`` maxrss would include the parent's RSS at fork; glibc is told to serve
   large blocks from mmap so that the peak tracks live memory), next to a plain forward loop at
   the same sizes. The probes generate each image from its index on access, so the probe itself
   holds nothing. What may grow with N is the pooled outputs (N x U) and the exact quantile tails
   (about 1% of the N * h * w positions per unit); the script prints that expected growth next to
   the measured one (record's growth minus the plain loop's). Target: no growth beyond it (plus
   10% + 16 MiB of slack).

``python -m perf`` runs this with the defaults; ``python -m perf.record_perf --help`` for options.
Prints ``MISSED`` for a missed target but always exits 0: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench.probes.base import ProbeSet

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
TIME_TARGET = 1.15
MIB = 2**20


class RandomImages(ProbeSet):
    """``n`` random RGB images of ``size`` x ``size``: held in memory, or made on access."""

    name = "random"
    fixed_geometry = True

    def __init__(self, n: int, size: int = 224, *, seed: int = 0, in_memory: bool = True):
        self.n, self.size, self.seed = n, size, seed
        self.images = np.stack([self._make(i) for i in range(n)]) if in_memory else None

    def _make(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        return rng.integers(0, 256, size=(self.size, self.size, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self.n

    def load_image(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i] if self.images is not None else self._make(i))

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "size": self.size, "seed": self.seed}


def resnet18_target():
    import torch
    import torchvision

    from bench.targets import Preprocessing, Target, TargetSpec

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    spec = TargetSpec(
        name="resnet18.random",
        family="torchvision",
        arch="resnet18",
        weights=None,
        preprocessing=Preprocessing(input_size=224, resize=256),
        layers=LAYERS,
        final_layer="fc",
        num_classes=1000,
        description="random weights: recording cost does not depend on them",
    )
    return Target(spec=spec, model=model, weights_sha256="random-seed-0")


def plain_forward(target, probe: ProbeSet, batch_size: int) -> None:
    """The same DataLoader and forward passes that ``record`` runs, without hooks."""
    import torch

    from bench.record import ProbeImages

    loader = torch.utils.data.DataLoader(
        ProbeImages(probe, target.preprocessing), batch_size=batch_size, shuffle=False
    )
    with torch.inference_mode():
        for images, _ in loader:
            target.model(images)


def run_record(target, probe: ProbeSet, batch_size: int) -> None:
    from bench.record import record

    record(target, probe, batch_size=batch_size)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_ratio(n_images: int, batch_size: int, rounds: int) -> bool:
    import statistics

    import torch

    target = resnet18_target()
    probe = RandomImages(n_images)
    print(
        f"resnet18 (random weights: plumbing only, weights do not change the speed), "
        f"{n_images} random 224x224 images in memory, batch {batch_size}, layers "
        f"{', '.join(LAYERS)}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    with torch.inference_mode():  # warm up the kernels once
        target.model(torch.zeros(batch_size, 3, 224, 224))
    plain, rec = [], []
    for r in range(rounds):
        # Alternate, and compare each round's pair: on a shared machine the load drifts.
        plain.append(timed(plain_forward, target, probe, batch_size))
        rec.append(timed(run_record, target, probe, batch_size))
        print(
            f"  round {r + 1}: forward {plain[-1][0]:.2f} s (CPU {plain[-1][1]:.2f} s), "
            f"record {rec[-1][0]:.2f} s (CPU {rec[-1][1]:.2f} s), "
            f"ratio {rec[-1][0] / plain[-1][0]:.2f}x",
            flush=True,
        )
    wall = statistics.median(r[0] / p[0] for p, r in zip(plain, rec, strict=True))
    cpu = statistics.median(r[1] / p[1] for p, r in zip(plain, rec, strict=True))
    fwd = statistics.median(p[0] for p in plain)
    print(f"plain forward: {fwd:.2f} s ({1000 * fwd / n_images:.1f} ms/image, median of {rounds})")
    rwall = statistics.median(r[0] for r in rec)
    print(
        f"record:        {rwall:.2f} s ({1000 * rwall / n_images:.1f} ms/image, median of {rounds})"
    )
    ok = wall < TIME_TARGET
    print(
        f"record/forward time ratio: {wall:.2f}x (target < {TIME_TARGET:.2f}x)"
        f"{'' if ok else '  MISSED'}   [median of per-round wall-time ratios]"
    )
    print(
        f"record/forward CPU-time ratio: {cpu:.2f}x   [process CPU time; steadier when the "
        "machine is shared]",
        flush=True,
    )
    return ok


def memory_child(n_images: int, batch_size: int, mode: str) -> dict[str, Any]:
    """Run in a fresh process: ``record`` (or, with ``mode="plain"``, a plain forward loop) over
    ``n_images`` generated images; report the peak RSS and the sizes of what ``record`` kept."""
    from bench.record import record

    target = resnet18_target()
    probe = RandomImages(n_images, in_memory=False)
    out: dict[str, Any] = {"n_images": n_images, "mode": mode}
    if mode == "plain":
        plain_forward(target, probe, batch_size)
    else:
        evidence = record(target, probe, batch_size=batch_size)
        layers = evidence.values()
        out["pooled_bytes"] = sum(ev.pooled_max.nbytes + ev.pooled_mean.nbytes for ev in layers)
        out["tail_bytes"] = sum(int(ev.meta["quantile_exact_bytes"]) for ev in layers)
        out["topk_maps_bytes"] = sum(t.maps.nbytes for ev in layers for t in ev.topk.values())
        out["exact"] = all(ev.meta["exact_quantiles"] for ev in layers)
    out["maxrss_bytes"] = peak_rss()
    return out


def peak_rss() -> int:
    """Peak RSS of this process in bytes.

    ``VmHWM`` of ``/proc/self/status`` where it exists (Linux): ``getrusage``'s ``ru_maxrss``
    also counts the parent's RSS at fork (it survives ``execve``), which a child started by a big
    parent would report as its own. Elsewhere ``ru_maxrss``.
    """
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def run_child(n_images: int, batch_size: int, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "perf.record_perf", "--child-memory", str(n_images)]
    cmd += ["--child-mode", mode, "--batch-size", str(batch_size)]
    # Large blocks straight from mmap, returned on free: the peak RSS then tracks live memory
    # instead of what glibc's heap happens to retain (which varies by +-100 MiB between runs).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory child ({mode}, {n_images} images) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_growth(small: int, batch_size: int) -> bool:
    big = 4 * small
    print(
        f"peak RSS, each run in a fresh process, probe sizes {small} and {big} "
        f"(images generated on access), batch {batch_size}",
        flush=True,
    )
    plain = {n: run_child(n, batch_size, "plain") for n in (small, big)}
    rec = {n: run_child(n, batch_size, "record") for n in (small, big)}
    for n in (small, big):
        r = rec[n]
        print(
            f"  N={n:5d}: plain forward {plain[n]['maxrss_bytes'] / MIB:7.1f} MiB, record "
            f"{r['maxrss_bytes'] / MIB:7.1f} MiB "
            f"(+{(r['maxrss_bytes'] - plain[n]['maxrss_bytes']) / MIB:.1f}); record keeps "
            f"O(N): pooled {r['pooled_bytes'] / MIB:.1f} MiB, quantile tail buffers "
            f"{r['tail_bytes'] / MIB:.1f} MiB; O(1): top-k maps "
            f"{r['topk_maps_bytes'] / MIB:.1f} MiB"
            f"{'' if r['exact'] else ' (approximate quantiles)'}"
        )
    a, b = rec[small], rec[big]
    grew = b["maxrss_bytes"] - a["maxrss_bytes"]
    plain_grew = plain[big]["maxrss_bytes"] - plain[small]["maxrss_bytes"]
    expected = (b["pooled_bytes"] + b["tail_bytes"]) - (a["pooled_bytes"] + a["tail_bytes"])
    allowed = 1.1 * expected + 16 * MIB
    ok = grew - plain_grew <= allowed
    print(
        f"record peak RSS ratio N={big} / N={small}: {b['maxrss_bytes'] / a['maxrss_bytes']:.2f}x "
        f"(probe 4x larger)"
    )
    print(
        f"record peak RSS growth beyond the plain loop's: {(grew - plain_grew) / MIB:.1f} MiB "
        f"(record {grew / MIB:+.1f}, plain {plain_grew / MIB:+.1f}); expected O(N) growth "
        f"(pooled + quantile tails): {expected / MIB:.1f} MiB (target <= {allowed / MIB:.1f} MiB)"
        f"{'' if ok else '  MISSED'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.record_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=128, help="probe size for the timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--memory-images",
        type=int,
        default=64,
        help="smaller probe size of the memory test (the other is 4x)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child-memory", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", default="record", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.child_memory:
        print(json.dumps(memory_child(args.child_memory, args.batch_size, args.child_mode)))
        return 0
    time_ratio(args.images, args.batch_size, args.rounds)
    if not args.skip_memory:
        memory_growth(args.memory_images, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
