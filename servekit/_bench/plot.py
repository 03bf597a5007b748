"""`servekit bench --plot out.html`: one self-contained HTML file (inline SVG, no script, no CDN).

A results document in; HTML out with the results table, throughput and latency per phase, each
phase's latency percentile curve (HdrHistogram style: the tail spread out), and requests per
second over time.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

Point = tuple[float, float]
Series = tuple[str, list[Point]]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_WIDTH, _HEIGHT = 720, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 150, 20, 44
_NINES_CAP = 5.0  # the curve's x axis ends at 99.999%


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def nines(q: float) -> float:
    """Where percentile `q` sits on the curve's axis: 90 -> 1, 99 -> 2, 99.9 -> 3 (capped)."""
    return _NINES_CAP if q >= 100 else min(_NINES_CAP, -math.log10(1 - q / 100))


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    x_ticks: Sequence[tuple[float, str]] | None = None,
) -> str:
    """An SVG line chart of `series` (name, points); `x_ticks` (value, text) or evenly spaced numbers."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return f"<p>{html.escape(title)}: no data</p>"
    xs = [p[0] for p in points]
    x_min, x_max = min(xs), max(xs)
    if x_ticks:
        x_min, x_max = min(x_min, *(t[0] for t in x_ticks)), max(x_max, *(t[0] for t in x_ticks))
    y_ticks = nice_ticks(max(p[1] for p in points))
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (0.5 if x_max == x_min else (x - x_min) / (x_max - x_min)) * plot_w

    def sy(y: float) -> float:
        return _TOP + plot_h - y / y_ticks[-1] * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    label_y = _TOP + plot_h + 16
    for value, text in x_ticks or [(x, f"{x:g}") for x in nice_ticks(x_max) if x_min <= x <= x_max]:
        parts.append(
            f'<text x="{sx(value):.1f}" y="{label_y}" text-anchor="middle">{html.escape(text)}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    for index, (name, pts) in enumerate(series):
        color = _COLORS[index % len(_COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
        legend_y = _TOP + 14 + index * 18
        parts.append(
            f'<rect x="{_WIDTH - _RIGHT + 12}" y="{legend_y - 9}" width="12" height="4" fill="{color}"/>'
        )
        parts.append(f'<text x="{_WIDTH - _RIGHT + 30}" y="{legend_y}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return f"<h2>{html.escape(title)}</h2>\n" + "\n".join(parts)


def _per_phase_charts(phases: Sequence[dict[str, Any]]) -> list[str]:
    ticks = [(float(i), p["label"]) for i, p in enumerate(phases)]
    throughput = [("req/s", [(float(i), float(p["rps"])) for i, p in enumerate(phases)])]
    latency = [
        (
            key,
            [
                (float(i), p["latency_ms"][key])
                for i, p in enumerate(phases)
                if p["latency_ms"].get(key) is not None
            ],
        )
        for key in ("p50", "p90", "p99")
    ]
    return [
        line_chart("Throughput per phase", throughput, "phase", "requests/s", ticks),
        line_chart("Latency per phase", latency, "phase", "ms", ticks),
    ]


def _curve_chart(phases: Sequence[dict[str, Any]]) -> str:
    series = [
        (p["label"], [(nines(q), ms) for q, ms in p["percentile_curve"] if ms is not None]) for p in phases
    ]
    ticks = [(nines(q), f"{q:g}%") for q in (0.0, 90.0, 99.0, 99.9, 99.99, 100.0)]
    return line_chart("Latency by percentile", series, "percentile", "ms", ticks)


def _timeline_chart(phases: Sequence[dict[str, Any]]) -> str:
    series = [
        (p["label"], [(row["second"] + 0.5, _per_second(row, p["duration_s"])) for row in p["timeline"]])
        for p in phases
    ]
    return line_chart("Requests per second over time", series, "second of the measured window", "requests/s")


def _per_second(row: dict[str, Any], duration_s: float) -> float:
    """The row's requests per second (the last second of a phase may be a part of one)."""
    length = min(1.0, duration_s - row["second"])
    return float(row["requests"]) / length if length > 0 else float(row["requests"])


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _results_table(phases: Sequence[dict[str, Any]]) -> str:
    keys = ("p50", "p90", "p99", "p99.9", "max")
    head = "".join(f"<th>{h}</th>" for h in ("phase", "requests", "req/s", *keys, "errors"))
    rows = []
    for p in phases:
        latency = "".join(
            f"<td>{'-' if p['latency_ms'].get(k) is None else p['latency_ms'][k]:}</td>" for k in keys
        )
        errors = {**{s: c for s, c in p["statuses"].items() if int(s) >= 400}, **p["transport_errors"]}
        error_text = ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0"
        rows.append(
            f"<tr><td>{html.escape(p['label'])}</td><td>{p['requests']}</td><td>{p['rps']:.1f}</td>{latency}"
            f"<td>{html.escape(error_text)}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table><p>latency in ms, over successful responses</p>"


def html_report(results: dict[str, Any]) -> str:
    """The whole report as one HTML page."""
    phases = results["phases"]
    title = f"servekit bench: {results.get('target', '')}"
    charts = [*_per_phase_charts(phases)] if len(phases) > 1 else []
    charts += [_curve_chart(phases), _timeline_chart(phases)]
    setup = ", ".join(
        f"{key}: {results[key]}"
        for key in ("method", "body_bytes", "processes", "finished_at")
        if key in results
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}svg text{font-size:11px;fill:#333}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p>{html.escape(setup)}</p>\n"
        f"{_results_table(phases)}\n" + "\n".join(charts) + "\n</body></html>\n"
    )
