"""Progress bars: tqdm when the CLI asks for them, a silent stand-in otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextmanager
def progress_bar(
    *, total: int | None, desc: str, enabled: bool, unit: str = "unit"
) -> Iterator[Any]:
    """A tqdm bar on stderr when ``enabled``; otherwise an object with the same update methods."""
    if not enabled:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield bar
