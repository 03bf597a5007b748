"""Results of `servekit bench`: each phase as a JSON-ready summary, the results table, and the
comparison of two saved runs.

`PhaseResult`s in; a results document (the `--out` JSON), text tables and warnings out.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servekit._bench.histogram import Histogram
from servekit._bench.load import PhaseResult
from servekit._version import __version__

FORMAT = "servekit-bench/1"
SUMMARY_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CURVE_PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
LAG_WARNING_MS = 5.0


class ResultsError(ValueError):
    """A results file cannot be read or compared; the message says why."""


@dataclass(frozen=True)
class Phase:
    """One phase of a run: closed loop at `concurrency`, or open loop at `rate` requests/s."""

    concurrency: int | None
    rate: float | None
    connections: int
    warmup_s: float
    duration_s: float

    @property
    def label(self) -> str:
        """`c=16` or `rate=500`: what the phase is matched by in a comparison."""
        if self.rate is not None:
            return f"rate={self.rate:g}"
        return f"c={self.concurrency}"


def _ms(value_us: float | None) -> float | None:
    return None if value_us is None else round(value_us / 1000, 4)


def latency_summary(histogram: Histogram) -> dict[str, float | None]:
    """Mean, min, p50, p90, p99, p99.9 and max in milliseconds (None when nothing succeeded)."""
    summary: dict[str, float | None] = {"mean": _ms(histogram.mean_us), "min": None, "max": None}
    if histogram.total:
        summary["min"], summary["max"] = _ms(histogram.min_us), _ms(histogram.max_us)
    for q in SUMMARY_PERCENTILES:
        summary[f"p{q:g}"] = _ms(histogram.percentile(q))
    return summary


def phase_summary(phase: Phase, result: PhaseResult) -> dict[str, Any]:
    """The JSON-ready summary of one phase."""
    elapsed = result.elapsed_s or phase.duration_s
    ok = sum(count for status, count in result.statuses.items() if status < 400)
    summary: dict[str, Any] = {
        "label": phase.label,
        "mode": "open" if phase.rate is not None else "closed",
        "concurrency": phase.concurrency,
        "rate": phase.rate,
        "connections": phase.connections,
        "warmup_s": phase.warmup_s,
        "duration_s": phase.duration_s,
        "elapsed_s": round(elapsed, 4),
        "requests": result.requests,
        "ok": ok,
        "errors": result.requests - ok,
        "rps": round(result.requests / elapsed, 2) if elapsed else 0.0,
        "ok_rps": round(ok / elapsed, 2) if elapsed else 0.0,
        "statuses": {str(status): count for status, count in sorted(result.statuses.items())},
        "transport_errors": dict(sorted(result.errors.items())),
        "warmup_requests": result.warmup_requests,
        "unsent": result.unsent,
        "bytes_received": result.bytes_received,
        "latency_ms": latency_summary(result.latency),
        "first_byte_ms": latency_summary(result.first_byte),
        "percentile_curve": [[q, _ms(result.latency.percentile(q))] for q in CURVE_PERCENTILES]
        if result.latency.total
        else [],
        "timeline": [
            {
                "second": second,
                "requests": row[0],
                "errors": row[1],
                "mean_ms": _ms(row[2] / (row[0] - row[1])) if row[0] > row[1] else None,
                "max_ms": _ms(row[3]) if row[0] > row[1] else None,
            }
            for second, row in enumerate(result.timeline)
        ],
        "histogram_us": result.latency.to_sparse(),
    }
    if phase.rate is not None:
        summary["send_lag_ms"] = {
            "p50": _ms(result.send_lag.percentile(50)),
            "p99": _ms(result.send_lag.percentile(99)),
            "max": _ms(result.send_lag.max_us) if result.send_lag.total else None,
        }
    return summary


def document(setup: dict[str, Any], phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole run's results (what `--out` writes)."""
    return {
        "format": FORMAT,
        "servekit_version": __version__,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **setup,
        "phases": phases,
    }


def warnings(summary: dict[str, Any]) -> list[str]:
    """What makes a phase's numbers less than they seem, in words."""
    found = []
    if summary.get("unsent"):
        found.append(
            f"{summary['label']}: {summary['unsent']} scheduled requests were never sent (every connection "
            "stayed busy to the end): the server cannot sustain this rate; add --connections or lower --rate"
        )
    lag = (summary.get("send_lag_ms") or {}).get("p99")
    if lag is not None and lag > LAG_WARNING_MS:
        found.append(
            f"{summary['label']}: the load generator sent on-time requests {lag:.1f} ms late (p99): it is "
            "short of CPU; add --processes or run it on another machine"
        )
    return found


def _status_text(summary: dict[str, Any]) -> str:
    parts = [f"{status}x{count}" for status, count in summary["statuses"].items() if int(status) >= 400]
    parts += [f"{kind}x{count}" for kind, count in summary["transport_errors"].items()]
    return " ".join(parts) or "0"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(header))
    ]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append(
            "  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row))
        )
    return "\n".join(lines)


def results_table(phases: Sequence[dict[str, Any]], first_byte: bool = False) -> str:
    """The results as an aligned text table: one row per phase, latencies in ms (with
    `first_byte`, also the time to the first byte of the body: p50 and p99)."""
    header = ["phase", "requests", "req/s", "p50", "p90", "p99", "p99.9", "max"]
    header += ["ttfb p50", "ttfb p99"] if first_byte else []
    rows = []
    for summary in phases:
        latency = summary["latency_ms"]
        row = [summary["label"], str(summary["requests"]), f"{summary['rps']:.1f}"]
        row += [_fmt(latency.get(key)) for key in ("p50", "p90", "p99", "p99.9", "max")]
        if first_byte:
            row += [_fmt(summary.get("first_byte_ms", {}).get(key)) for key in ("p50", "p99")]
        rows.append([*row, _status_text(summary)])
    note = "latency in ms, over successful responses" + (
        "; ttfb: to the body's first byte" if first_byte else ""
    )
    return _table([*header, "errors"], rows) + "\n" + note


def load(path: str | Path) -> dict[str, Any]:
    """A results file `servekit bench --out` wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ResultsError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{str(path)!r} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("phases"), list):
        raise ResultsError(f"{str(path)!r} is not a servekit bench results file (written with --out)")
    return data


def ratio(new: float | None, old: float | None) -> float | None:
    """`new / old`, or None when either is missing or `old` is 0."""
    if new is None or old is None or old == 0:
        return None
    return new / old


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A table of the phases both runs have: B's req/s and latencies over A's (above 1: B is more)."""
    by_label = {phase["label"]: phase for phase in old["phases"]}
    header = (
        "phase",
        "req/s A",
        "req/s B",
        "req/s B/A",
        "p50 B/A",
        "p90 B/A",
        "p99 B/A",
        "max B/A",
        "errors A",
        "errors B",
    )
    rows = []
    for b in new["phases"]:
        a = by_label.get(b["label"])
        if a is None:
            continue
        latency = [
            _fmt(ratio(b["latency_ms"].get(key), a["latency_ms"].get(key)), 3)
            for key in ("p50", "p90", "p99", "max")
        ]
        rows.append(
            (
                b["label"],
                f"{a['rps']:.1f}",
                f"{b['rps']:.1f}",
                _fmt(ratio(b["rps"], a["rps"]), 3),
                *latency,
                str(a["errors"]),
                str(b["errors"]),
            )
        )
    if not rows:
        labels_a = ", ".join(p["label"] for p in old["phases"])
        labels_b = ", ".join(p["label"] for p in new["phases"])
        raise ResultsError(f"the two runs share no phase (A: {labels_a}; B: {labels_b})")
    only = sorted({p["label"] for p in old["phases"]} ^ {p["label"] for p in new["phases"]})
    footer = "\nratios are B over A: req/s above 1 is faster, latency above 1 is slower"
    if only:
        footer += f"\nin one run only (not compared): {', '.join(only)}"
    return _table(header, rows) + footer
