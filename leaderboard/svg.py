"""Inline SVG plots: a metric's mean and interval per method (dot and whisker), quality
against cost per unit (scatter on a log-scaled cost axis), and a unit's activation histogram on
concept against non-concept images.

Pure functions of their inputs returning markup; coordinates are printed with two decimals, so
the same numbers always give the same bytes. Names are escaped with :func:`leaderboard.html.esc`
(inline SVG is parsed by the HTML parser).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from leaderboard.html import esc, fmt, fmt_interval, fmt_seconds

__all__ = ["CostPoint", "Row", "cost_plot", "distribution_plot", "interval_plot", "nice_ticks"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One method in an interval plot."""

    name: str
    mean: float
    low: float
    high: float
    group: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CostPoint:
    """One method in the quality-against-cost plot."""

    name: str
    seconds: float
    mean: float
    low: float
    high: float
    group: int | None = None


def _c(x: float) -> str:
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else name[: n - 1] + "\u2026"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return fmt(v, decimals)


def _range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 0.05)
    else:
        pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def interval_plot(
    rows: Sequence[Row],
    *,
    metric: str,
    higher_is_better: bool = True,
    ceiling: Row | None = None,
    title: str = "",
) -> str:
    """Dot (mean) and whisker (95% interval) per method, best group in green, the ceiling as a
    shaded band. Returns an ``<svg>`` element."""
    width, left, right, top, row_h, bottom = 560, 170, 64, 22, 22, 36
    values = [v for r in rows for v in (r.low, r.high, r.mean)]
    if ceiling is not None:
        values += [ceiling.low, ceiling.high, ceiling.mean]
    lo, hi = _range(values)
    ticks = nice_ticks(lo, hi)
    plot_w = width - left - right
    height = top + row_h * len(rows) + bottom

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    y0, y1 = top - 4, top + row_h * len(rows)
    label = title or f"{metric}: mean and 95% interval per method"
    out = [
        f'<svg class="plot" role="img" aria-label="{esc(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{esc(label)}</title>",
    ]
    for t in ticks:
        out.append(
            f'<line class="grid" x1="{_c(x(t))}" y1="{_c(y0)}" x2="{_c(x(t))}" y2="{_c(y1)}"/>'
        )
        out.append(
            f'<text x="{_c(x(t))}" y="{_c(y1 + 14)}" text-anchor="middle">'
            f"{esc(_tick_label(t, ticks))}</text>"
        )
    out.append(f'<line class="axis" x1="{left}" y1="{_c(y1)}" x2="{width - right}" y2="{_c(y1)}"/>')
    better = "higher is better \u2192" if higher_is_better else "\u2190 lower is better"
    out.append(
        f'<text x="{_c(left + plot_w / 2)}" y="{_c(y1 + 30)}" text-anchor="middle">'
        f"{esc(metric)} ({better})</text>"
    )
    if ceiling is not None:
        out.append(
            f"<g><title>{esc(ceiling.name)}: {fmt(ceiling.mean)} "
            f"{fmt_interval(ceiling.low, ceiling.high)}</title>"
            f'<rect class="band" x="{_c(x(ceiling.low))}" y="{_c(y0)}" '
            f'width="{_c(max(x(ceiling.high) - x(ceiling.low), 1.0))}" height="{_c(y1 - y0)}"/>'
            f'<line class="ceil" x1="{_c(x(ceiling.mean))}" y1="{_c(y0)}" '
            f'x2="{_c(x(ceiling.mean))}" y2="{_c(y1)}"/>'
            f'<text x="{_c(x(ceiling.mean))}" y="{_c(y0 - 3)}" text-anchor="middle">'
            f"{esc(_short(ceiling.name, 30))}</text></g>"
        )
    for i, r in enumerate(rows):
        yc = top + row_h * i + row_h / 2
        cls = "dot g1" if r.group == 1 else "dot"
        group = f", group {r.group}" if r.group is not None else ""
        out.append(
            f"<g><title>{esc(r.name)}: {fmt(r.mean)} {fmt_interval(r.low, r.high)}{group}</title>"
            f'<text x="{left - 8}" y="{_c(yc + 4)}" text-anchor="end">{esc(_short(r.name, 26))}'
            "</text>"
            f'<line class="whisker" x1="{_c(x(r.low))}" y1="{_c(yc)}" x2="{_c(x(r.high))}" '
            f'y2="{_c(yc)}"/>'
            f'<line class="whisker" x1="{_c(x(r.low))}" y1="{_c(yc - 4)}" x2="{_c(x(r.low))}" '
            f'y2="{_c(yc + 4)}"/>'
            f'<line class="whisker" x1="{_c(x(r.high))}" y1="{_c(yc - 4)}" x2="{_c(x(r.high))}" '
            f'y2="{_c(yc + 4)}"/>'
            f'<circle class="{cls}" cx="{_c(x(r.mean))}" cy="{_c(yc)}" r="4"/>'
            f'<text x="{width - right + 6}" y="{_c(yc + 4)}">{esc(fmt(r.mean))}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def cost_plot(points: Sequence[CostPoint], *, metric: str, higher_is_better: bool = True) -> str:
    """Quality (mean and interval of ``metric``) against seconds per unit on a log axis.

    A cost of zero cannot sit on a log axis: such points are drawn at a tenth of the smallest
    positive cost (or 1 ms) and labelled with ``\u2264``.
    """
    width, height, left, right, top, bottom = 560, 320, 60, 30, 20, 46
    positive = [p.seconds for p in points if p.seconds > 0]
    floor = min(positive) / 10.0 if positive else 1e-3
    xs = [math.log10(p.seconds if p.seconds > 0 else floor) for p in points]
    xlo, xhi = min(xs), max(xs)
    if xhi - xlo < 1e-9:
        xlo, xhi = xlo - 1.0, xhi + 1.0
    else:
        xlo, xhi = xlo - 0.3, xhi + 0.3
    ylo, yhi = _range([v for p in points for v in (p.low, p.high, p.mean)])
    yticks = nice_ticks(ylo, yhi)
    pw, ph = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + (v - xlo) / (xhi - xlo) * pw

    def y(v: float) -> float:
        return top + (1.0 - (v - ylo) / (yhi - ylo)) * ph

    label = f"{metric} against seconds per unit (log scale)"
    out = [
        f'<svg class="plot" role="img" aria-label="{esc(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{esc(label)}</title>",
    ]
    for k in range(math.ceil(xlo), math.floor(xhi) + 1):
        out.append(
            f'<line class="grid" x1="{_c(x(k))}" y1="{top}" x2="{_c(x(k))}" y2="{top + ph}"/>'
            f'<text x="{_c(x(k))}" y="{top + ph + 14}" text-anchor="middle">'
            f"{esc(fmt_seconds(10.0**k))}</text>"
        )
    for t in yticks:
        out.append(
            f'<line class="grid" x1="{left}" y1="{_c(y(t))}" x2="{left + pw}" y2="{_c(y(t))}"/>'
            f'<text x="{left - 6}" y="{_c(y(t) + 4)}" text-anchor="end">'
            f"{esc(_tick_label(t, yticks))}</text>"
        )
    out.append(
        f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>'
        f'<text x="{_c(left + pw / 2)}" y="{height - 8}" text-anchor="middle">'
        "seconds per unit (log scale)</text>"
    )
    better = "higher is better" if higher_is_better else "lower is better"
    out.append(
        f'<text x="14" y="{_c(top + ph / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_c(top + ph / 2)})">{esc(metric)} ({better})</text>'
    )
    for p, lx in zip(points, xs, strict=True):
        cls = "dot g1" if p.group == 1 else "dot"
        cost = fmt_seconds(p.seconds) if p.seconds > 0 else f"\u2264{fmt_seconds(floor)}"
        out.append(
            f"<g><title>{esc(p.name)}: {fmt(p.mean)} {fmt_interval(p.low, p.high)} at "
            f"{esc(cost)} s per unit</title>"
            f'<line class="whisker" x1="{_c(x(lx))}" y1="{_c(y(p.low))}" x2="{_c(x(lx))}" '
            f'y2="{_c(y(p.high))}"/>'
            f'<circle class="{cls}" cx="{_c(x(lx))}" cy="{_c(y(p.mean))}" r="4"/>'
            f'<text x="{_c(x(lx) + 6)}" y="{_c(y(p.mean) - 6)}">{esc(_short(p.name, 18))}'
            f"{'' if p.seconds > 0 else ' (' + esc(cost) + ' s)'}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def distribution_plot(
    edges: Sequence[float],
    concept: Sequence[int],
    other: Sequence[int],
    *,
    title: str,
) -> str:
    """A unit's activations on the images with the concept and on the others: two step
    histograms over the same bins, each as the share of its own images (so a handful of
    concept images is visible beside thousands of others). Returns a small ``<svg>``."""
    bins = len(concept)
    if bins == 0 or len(other) != bins or len(edges) != bins + 1:
        raise ValueError(
            f"expected {bins + 1} bin edges and {bins} counts per group, got {len(edges)} edges, "
            f"{len(concept)} and {len(other)} counts"
        )
    width, height, left, right, top, bottom = 300, 120, 34, 10, 16, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    n_on, n_off = sum(concept), sum(other)
    share_on = [c / n_on if n_on else 0.0 for c in concept]
    share_off = [c / n_off if n_off else 0.0 for c in other]
    peak = max([*share_on, *share_off, 1e-12])
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0

    def x(v: float) -> float:
        return left + (v - lo) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / peak * plot_h

    def steps(shares: Sequence[float]) -> str:
        pts = [f"{_c(x(lo))},{_c(y(0.0))}"]
        for i, v in enumerate(shares):
            pts.append(f"{_c(x(edges[i]))},{_c(y(v))}")
            pts.append(f"{_c(x(edges[i + 1]))},{_c(y(v))}")
        pts.append(f"{_c(x(edges[-1]))},{_c(y(0.0))}")
        return " ".join(pts)

    base = top + plot_h
    out = [
        f'<svg class="plot dist" role="img" aria-label="{esc(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{esc(title)}</title>",
        f'<polygon class="off" points="{steps(share_off)}"/>',
        f'<polygon class="on" points="{steps(share_on)}"/>',
        f'<line class="axis" x1="{left}" y1="{_c(base)}" x2="{width - right}" y2="{_c(base)}"/>',
        f'<text x="{left}" y="{_c(base + 13)}" text-anchor="start">{esc(fmt(lo))}</text>',
        f'<text x="{width - right}" y="{_c(base + 13)}" text-anchor="end">{esc(fmt(hi))}</text>',
        f'<text x="{_c(left + plot_w / 2)}" y="{_c(base + 25)}" text-anchor="middle">'
        "activation</text>",
        f'<text x="{left - 4}" y="{_c(top + 4)}" text-anchor="end">{esc(fmt(peak, 2))}</text>',
        f'<rect class="on" x="{left + 4}" y="2" width="10" height="8"/>'
        f'<text x="{left + 18}" y="10">concept ({n_on})</text>',
        f'<rect class="off" x="{left + 124}" y="2" width="10" height="8"/>'
        f'<text x="{left + 138}" y="10">other images ({n_off})</text>',
        "</svg>",
    ]
    return "".join(out)
