"""bench.environment.tune_allocator: with it, large blocks come from the heap (reused after a
free) instead of a fresh mapping each (page-faulted afresh); the user's own choice is left alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import ctypes, json
import numpy as np
from bench.environment import tune_allocator

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
tuned = tune_allocator()
# 64 MiB: over glibc's largest dynamic mmap threshold (32 MiB), like a batch's activations.
block = np.ones(64 * 2**20 // 8)
print(json.dumps({"tuned": tuned, "mapped": libc.mallinfo2().hblkhd}))
"""


def _child(**env_extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "BENCH_TUNE_ALLOCATOR")
    }
    env.update(PYTHONPATH=str(REPO), **env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_tuned_allocator_serves_large_blocks_from_the_reused_heap() -> None:
    tuned = _child()
    plain = _child(BENCH_TUNE_ALLOCATOR="0")
    assert tuned["tuned"] is True and plain["tuned"] is False
    # glibc's default: a fresh mapping per large block (unmapped, and faulted again, each time)
    assert plain["mapped"] >= 64 * 2**20, plain
    assert tuned["mapped"] < 64 * 2**20, tuned
    chosen = _child(MALLOC_MMAP_THRESHOLD_="131072")  # the user's setting wins
    assert chosen["tuned"] is False and chosen["mapped"] >= 64 * 2**20
