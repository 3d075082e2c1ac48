"""The real-target path: ``bench run --methods netdissect --target resnet50 --weights FILE
--probe broden --probe-root DIR --layers layer4 --units 0-31`` against a plain forward pass.

A resnet50 with random weights (saved with ``torch.save(model.state_dict())``: weights do not
change the cost of a forward pass) and the synthetic world exported in Broden format
(:func:`bench.synth.broden_export.export_broden`, 64 x 64 images resized to 224 by the target's
preprocessing). Each measurement runs in a fresh process with an empty cache:

- ``forward``: the plain forward pass over the same images (the same DataLoader and
  preprocessing that recording uses), no hooks;
- ``run``: the real ``bench.runner.run`` (recording layer4, then NetDissect on 32 units, the
  concept table included), the time taken from ``run.json`` (record + NetDissect stages).

Prints both times, their ratio (target: within 2x), and each process's peak RSS (``VmHWM``)
and minor page faults. ``python -m perf realtarget`` runs it with the defaults (``--images
500``); ``python -m perf.realtarget_perf --images 2000`` is the workload of issue 18. Prints
``MISSED`` for a missed target but exits 0: it is a report, not a test. ``--compare-untuned``
adds both measurements with glibc's default allocator (:func:`bench.environment.tune_allocator`
off), which is where the page faults of issue 18 came from.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIME_TARGET = 2.0
MIB = 2**20
UNITS = "0-31"


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - not Linux


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child_forward(weights: str, probe_root: str, batch_size: int) -> dict[str, Any]:
    import torch

    from bench.environment import tune_allocator
    from bench.probes import load_probe
    from bench.record import ProbeImages
    from bench.targets import load_target

    target = load_target("resnet50", weights=weights, device="cpu", download=False)
    probe = load_probe("broden", probe_root)
    loader = torch.utils.data.DataLoader(
        ProbeImages(probe, target.preprocessing), batch_size=batch_size, shuffle=False
    )
    model = target.model.eval()
    tune_allocator()  # as record() does: the baseline gets the same allocator
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images, _ in loader:
            model(images)
    return {"seconds": time.perf_counter() - t0, "n_images": len(probe)}


def child_run(weights: str, probe_root: str, batch_size: int, out: str) -> dict[str, Any]:
    from bench.runner import RunConfig, run

    result = run(
        RunConfig(
            methods=("netdissect",),
            target="resnet50",
            weights=weights,
            probe="broden",
            probe_root=probe_root,
            layers=("layer4",),
            units=UNITS,
            batch_size=batch_size,
            device="cpu",
            out=str(Path(out) / "run"),
            cache_dir=str(Path(out) / "cache"),
        )
    )
    state = json.loads((result.run_dir / "run.json").read_text())
    stages = state["stages"]
    return {
        "record_seconds": stages["record"]["seconds"],
        "netdissect_seconds": stages["method:netdissect"]["seconds"],
        "seconds": stages["record"]["seconds"] + stages["method:netdissect"]["seconds"],
        "ok": result.methods[0].ok,
    }


def _spawn(
    mode: str, args: argparse.Namespace, weights: str, root: str, out: str, *, tuned: bool
) -> dict:
    cmd = [sys.executable, "-m", "perf.realtarget_perf", "--child", mode, "--weights", weights]
    cmd += ["--probe-root", root, "--batch-size", str(args.batch_size), "--child-out", out]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["BENCH_TUNE_ALLOCATOR"] = "1" if tuned else "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.realtarget_perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=500, help="probe size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", help="keep the weights and the export here (reused)")
    parser.add_argument(
        "--compare-untuned",
        action="store_true",
        help="also measure both with glibc's default allocator (BENCH_TUNE_ALLOCATOR=0)",
    )
    parser.add_argument("--child", choices=["forward", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--probe-root", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.child:
        before = _faults()
        if args.child == "forward":
            res = child_forward(args.weights, args.probe_root, args.batch_size)
        else:
            res = child_run(args.weights, args.probe_root, args.batch_size, args.child_out)
        res["peak_rss"] = _peak_rss()
        res["minor_faults"] = _faults() - before
        print(json.dumps(res))
        return 0

    import torch
    import torchvision

    from bench.synth.broden_export import export_broden

    with tempfile.TemporaryDirectory(prefix="realtarget-perf-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights = work / "resnet50-random.pth"
        root = work / f"broden-{args.images}"
        t0 = time.perf_counter()
        if not weights.is_file():
            torch.manual_seed(0)
            torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
        if not root.is_dir():
            export_broden(root, n_images=args.images, seed=0)
        print(
            f"resnet50 (random weights), synthetic Broden export of {args.images} images "
            f"(prepared in {time.perf_counter() - t0:.1f} s), layer4, units {UNITS}, batch "
            f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads",
            flush=True,
        )
        for tuned in (False, True) if args.compare_untuned else (True,):
            label = "" if tuned else " [untuned allocator: BENCH_TUNE_ALLOCATOR=0]"
            fwd = _spawn("forward", args, str(weights), str(root), str(work), tuned=tuned)
            with tempfile.TemporaryDirectory(prefix="run-", dir=work) as out:
                rec = _spawn("run", args, str(weights), str(root), out, tuned=tuned)
            _report(fwd, rec, label)
    return 0


def _report(fwd: dict, rec: dict, label: str) -> None:
    ratio = rec["seconds"] / fwd["seconds"]
    ok = ratio <= TIME_TARGET
    print(
        f"plain forward:       {fwd['seconds']:7.1f} s, peak RSS {fwd['peak_rss'] / MIB:7.1f} MiB,"
        f" {fwd['minor_faults']:>11,d} minor page faults{label}"
    )
    print(
        f"record + NetDissect: {rec['seconds']:7.1f} s (record {rec['record_seconds']:.1f} s, "
        f"NetDissect {rec['netdissect_seconds']:.1f} s), peak RSS "
        f"{rec['peak_rss'] / MIB:7.1f} MiB, {rec['minor_faults']:>11,d} minor page faults "
        f"(whole process){label}"
    )
    print(
        f"record + NetDissect / forward: {ratio:.2f}x (target <= {TIME_TARGET:.1f}x)"
        f"{'' if ok else '  MISSED'}{label}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
