"""benchmarks/observability.py: variants side by side, ratios to the baseline and targets, the
report, and the command line (the run itself is the lead's, on a quiet machine)."""

from __future__ import annotations

import pytest

from benchmarks import observability


def _round(rps: float) -> dict[str, float]:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": 3.0, "cpu_ms_per_request": 0.1}


def test_ratios_are_to_the_baseline_and_targets_are_judged_on_medians() -> None:
    rounds = {
        "w1": {
            "metrics off": [_round(1000), _round(1100), _round(900)],
            "metrics on": [_round(980), _round(950), _round(1200)],
        }
    }
    summary = observability.summarize(rounds)["w1"]
    assert summary["metrics off"]["ratio"] == 1.0
    assert summary["metrics on"]["ratio"] == pytest.approx(0.98)
    assert summary["metrics on"]["best_ratio"] == pytest.approx(1200 / 1100)
    assert summary["metrics on"]["met"] is True
    assert summary["metrics off"]["met"] is None  # no target of its own


def test_the_report_has_a_row_per_workload_and_variant() -> None:
    rounds = {w: {"metrics off": [_round(1000)], "metrics on": [_round(900)]} for w in ("w1", "w2")}
    found = {
        "machine": {"date": "today", "cpu": "cpu", "nproc": 2, "python": "3.11", "servekit": "0"},
        "settings": {"connections": 32, "duration": 2.0, "warmup": 1.0, "rounds": 1, "torch_threads": 1},
        "variants": {
            "metrics off": {"serve": {"metrics": False}, "env": {}},
            "metrics on": {"serve": {}, "env": {}},
        },
        "summary": observability.summarize(rounds),
    }
    report = observability.render(found)
    assert "| W2 | metrics on | 900 | 0.900 |" in report
    assert ">= 0.97: MISSED" in report


def test_the_command_line_knows_its_variants_and_keeps_the_baseline() -> None:
    quick = observability.parse_args(["--quick", "--workloads", "w1"])
    assert (quick.rounds, quick.duration, quick.workloads) == (1, 2.0, ("w1",))
    with pytest.raises(SystemExit):
        observability.parse_args(["--variants", "metrics on"])
    with pytest.raises(SystemExit):
        observability.parse_args(["--variants", "metrics off,tracing 200%"])
