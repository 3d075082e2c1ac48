"""``python -m leaderboard RESULTS... --out DIR``: build the site, as ``bench leaderboard`` does.

Prints the path of ``index.html``; a bad input prints ``error: ...`` on one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.errors import DataError, UsageError
from leaderboard.build import build


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leaderboard",
        description="Build the static leaderboard site from suite result files.",
    )
    parser.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="suite result files (<run_dir>/suites/<suite>.json), run directories, or folders "
        "of runs",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the site")
    args = parser.parse_args(argv)
    try:
        index = build(args.results, args.out)
    except (DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
