"""Run every benchmark script: ``python -m perf [name ...]``.

Discovers the modules ``perf/<name>_perf.py`` (each exposing ``main() -> int``) and runs them in
name order, or only those named on the command line (``python -m perf record``). Exits non-zero
only when a script crashes or returns non-zero; a missed performance target is a printed
``MISSED``, not a failure.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    """Names (without ``_perf``) of the benchmark modules in this package, sorted."""
    here = Path(__file__).resolve().parent
    return sorted(p.stem.removesuffix("_perf") for p in here.glob("*_perf.py"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    available = discover()
    unknown = [a for a in args if a not in available]
    if unknown:
        print(
            f"error: unknown benchmark(s) {unknown}; available: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in args or available:
        print(f"== perf.{name}_perf ==", flush=True)
        start = time.perf_counter()
        try:
            rc = importlib.import_module(f"perf.{name}_perf").main()
        except Exception:
            traceback.print_exc()
            rc = 1
        print(
            f"== perf.{name}_perf: exit {rc} in {time.perf_counter() - start:.1f} s ==\n",
            flush=True,
        )
        status = status or int(rc or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
