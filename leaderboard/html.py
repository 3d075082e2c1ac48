"""HTML building blocks of the leaderboard: escaping, number formatting, the page shell.

Every piece of text that comes from a result file (labels, annotations, method, metric and layer
names, settings) goes through :func:`esc` (text and double-quoted attributes) or
:func:`json_for_script` (JSON inside a ``<script>`` element). The CSS and the sorting script are
inline; the Content-Security-Policy allows only this script (by hash), inline styles and images
from the site itself, so even a missed escape could neither run code nor load anything remote.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from typing import Any

from bench.schema import dumps

__all__ = ["CSS", "JS", "esc", "fmt", "fmt_interval", "fmt_seconds", "json_for_script", "page"]


def esc(value: object) -> str:
    """``value`` as HTML text, safe in element content and in quoted attributes."""
    return html.escape(str(value), quote=True)


_SCRIPT_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def json_for_script(obj: Any) -> str:
    """Canonical JSON that is safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e`` and ``\\u0026`` (so no ``</script>`` or
    ``<!--`` can end or alter the element), U+2028 and U+2029 are escaped (line terminators in
    older JavaScript). ``JSON.parse`` gives back the original strings.
    """
    text = dumps(obj)
    return "".join(_SCRIPT_JSON_ESCAPES.get(ch, ch) for ch in text)


def fmt(x: float, digits: int = 3) -> str:
    """A score with fixed decimals; never ``-0.000``."""
    s = f"{x:.{digits}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    return s


def fmt_interval(low: float, high: float) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


def fmt_seconds(x: float) -> str:
    """Seconds with three significant digits: ``0.00123``, ``1.5``, ``2.4e+03``."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    return f"{x:.3g}"


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --best: #dafbe1; --bestfg: #1a7f37;
  --ceil: #f3efff; --na: #8c959f; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
h1 { font-size: 1.6rem; margin: .6rem 0; }
h2 { font-size: 1.3rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
small, .muted { color: var(--muted); font-weight: normal; }
a { color: #0969da; }
nav ul { padding-left: 1.2rem; }
.offline { background: #fff8c5; border: 1px solid #d4a72c; padding: .4rem .7rem;
  border-radius: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); padding: .2rem 0; caption-side: bottom; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left;
  vertical-align: top; }
thead th { background: var(--bg2); white-space: nowrap; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th:hover { background: #eaeef2; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
td.num { white-space: nowrap; }
.ci { color: var(--muted); font-size: .85em; }
td.g1 { background: var(--best); }
td.g1 .v { font-weight: 700; color: var(--bestfg); }
.grp { display: inline-block; min-width: 1.3em; margin-left: .3em; padding: 0 .25em;
  border-radius: 4px; font-size: .75em; text-align: center; background: #eaeef2;
  color: var(--muted); }
td.g1 .grp { background: var(--bestfg); color: #fff; }
td.na { color: var(--na); font-style: italic; }
tbody.ceiling th, tbody.ceiling td { background: var(--ceil); font-style: italic; }
.tag { font-size: .75em; padding: 0 .35em; border-radius: 4px; background: #eaeef2;
  color: var(--muted); }
.err { color: #cf222e; }
.label { white-space: pre-wrap; word-break: break-word; }
pre { background: var(--bg2); padding: .5rem; overflow-x: auto; font-size: .85em;
  white-space: pre-wrap; word-break: break-word; }
dl.notes dt { font-weight: 600; margin-top: .4rem; }
dl.notes dd { margin-left: 1.2rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem 2rem; }
figure { margin: .5rem 0; }
figcaption { color: var(--muted); font-size: .9em; max-width: 560px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
svg .axis { stroke: #8c959f; stroke-width: 1; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .whisker { stroke: #57606a; stroke-width: 1.5; }
svg .dot { fill: #6e7781; }
svg .dot.g1 { fill: var(--bestfg); }
svg .band { fill: #8250df; fill-opacity: .12; }
svg .ceil { stroke: #8250df; stroke-dasharray: 4 3; stroke-width: 1.5; }
th.fails-sanity, td.fails-sanity { background-image: repeating-linear-gradient(135deg,
  transparent 0 6px, rgba(207, 34, 46, .07) 6px 12px); }
.insane { color: #cf222e; }
td.pass { color: var(--bestfg); }
td.fail { color: #cf222e; font-weight: 700; background: #ffebe9; }
td.normalised, .norm { color: var(--muted); }
.norm { font-size: .85em; }
svg .on { fill: #cf222e; fill-opacity: .45; stroke: #cf222e; stroke-width: 1; }
svg .off { fill: #8c959f; fill-opacity: .35; stroke: #6e7781; stroke-width: 1; }
.dists { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }
img.exemplars { max-width: 100%; height: auto; border: 1px solid var(--line); }
.gen-strip { display: inline-grid; max-width: 100%; }
.gen-strip img { grid-column: 1 / -1; width: 100%; height: auto; image-rendering: pixelated;
  border: 1px solid var(--line); }
.gen-strip span { text-align: center; font-size: .85em; font-variant-numeric: tabular-nums; }
footer { margin-top: 3rem; border-top: 2px solid var(--line); font-size: .9em; }
"""

JS = """(function () {
  "use strict";
  function sortKey(cell) {
    if (!cell) { return ""; }
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim().toLowerCase() : v;
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var asc = current === "none" || current === null ? !numeric : current !== "ascending";
    var rows = Array.prototype.map.call(body.rows, function (r, i) {
      return { row: r, key: sortKey(r.cells[col]), pos: i };
    });
    rows.sort(function (a, b) {
      var ea = a.key === "", eb = b.key === "";
      if (ea || eb) { return ea === eb ? a.pos - b.pos : (ea ? 1 : -1); }
      var c;
      if (numeric) { c = parseFloat(a.key) - parseFloat(b.key); }
      else { c = a.key < b.key ? -1 : (a.key > b.key ? 1 : 0); }
      if (c === 0) { return a.pos - b.pos; }
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) {
      h.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var head = table.tHead;
    if (!head || !head.rows.length) { return; }
    Array.prototype.forEach.call(head.rows[head.rows.length - 1].cells, function (th, col) {
      th.setAttribute("tabindex", "0");
      th.setAttribute("aria-sort", "none");
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""

_JS_HASH = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode("ascii")
CSP = (
    "default-src 'none'; "
    f"script-src 'sha256-{_JS_HASH}'; "
    "style-src 'unsafe-inline'; "
    "img-src 'self' file:; "
    "base-uri 'none'; form-action 'none'"
)


def page(*, title: str, body: str, footer: str, data: Any | None = None) -> str:
    """A whole HTML document. ``title`` is raw text (escaped here); ``body`` and ``footer`` are
    HTML built with :func:`esc`; ``data`` is embedded as JSON for scripts and tools."""
    data_block = (
        ""
        if data is None
        else f'<script type="application/json" id="page-data">{json_for_script(data)}</script>\n'
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<footer>\n{footer}\n</footer>\n"
        f"{data_block}"
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )
