"""The README's "Adding a method" example runs and passes the conformance suite."""

from __future__ import annotations

import re
from pathlib import Path

from bench.registry import METHODS
from bench.testing import check_method

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_method_example_conforms(tmp_path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class Brightest" in b)
    namespace: dict[str, object] = {}
    try:
        exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        cls = METHODS.get("brightest")
        assert cls is namespace["Brightest"]
        out = check_method(cls, tmp_path)
        assert all(d.label.startswith("images like #") for d in out)
    finally:
        METHODS.unregister("brightest")
