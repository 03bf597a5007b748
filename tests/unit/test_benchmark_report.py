"""The benchmark report's targets: both stacks, W2 with sync and async stages, W3 at c=1 and
at the top, and the soak's memory slope (benchmarks/harness/report.py, benchmarks/soak.py)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from benchmarks import run, soak
from benchmarks.harness import report


def _row(
    workload: str, role: str, concurrency: int, rps: float, mean_batch: float | None = None
) -> dict[str, Any]:
    return {
        "workload": workload,
        "label": role,
        "role": role,
        "concurrency": concurrency,
        "error": None,
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
        "mean_batch": mean_batch,
        "server_cpu_pct": 100.0,
        "wrk_cpu_pct": 20.0,
        "steal_pct": 0.0,
    }


def _rows(suffix: str) -> list[dict[str, Any]]:
    rows = []
    for c in (1, 64):
        rows += [
            _row(f"W1{suffix}", "baseline", c, 1000),
            _row(f"W1{suffix}", "servekit", c, 900),
            _row(f"W2{suffix}", "baseline", c, 1000),
            _row(f"W2{suffix}", "servekit", c, 750),
            _row(f"W2{suffix}", "servekit-sync", c, 500 if c == 1 else 850),
            _row(f"W3{suffix}", "reference", c, 1000),
            _row(f"W3{suffix}", "baseline", c, 100 if c == 1 else 4000, 1.0 if c == 1 else 32.0),
            _row(f"W3{suffix}", "servekit", c, 950 if c == 1 else 3900, 1.0 if c == 1 else 30.0),
        ]
    return rows


def _results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": rows, "settings": {"concurrency": [1, 64]}}
    results["w3_ceiling"] = report.w3_ceiling(results, 64)
    return results


def _verdicts(results: dict[str, Any]) -> dict[str, str]:
    return {check["target"]: check["result"] for check in report.targets(results)}


def test_fast_stack_targets_cover_sync_and_async_w2_and_w3_at_both_ends() -> None:
    verdicts = _verdicts(_results(_rows("")))
    assert verdicts == {
        "W1 c=1 servekit/Starlette req/s": "PASS",
        "W1 c=64 servekit/Starlette req/s": "PASS",
        "W2 c=64 servekit (3 async deployments)/Starlette (one function) req/s": "PASS",
        "W2 c=1 servekit (3 sync def deployments)/Starlette (one function) req/s": "FAIL",
        "W2 c=64 servekit (3 sync def deployments)/Starlette (one function) req/s": "PASS",
        "W3 c=1 servekit @sk.batch / Starlette without batching req/s": "PASS",
        "W3 c=64 servekit @sk.batch / hand-rolled batcher req/s": "PASS",
        "W3 c=64 servekit mean batch size": "PASS",
        "examples/classifier sk.run ready beyond import torch (s)": "n/a",
    }


def test_pure_stack_targets_appear_when_the_pure_stack_ran() -> None:
    verdicts = _verdicts(_results(_rows("") + _rows("-pure")))
    pure = {name: verdict for name, verdict in verdicts.items() if "-pure" in name}
    assert len(pure) == 8
    assert pure["W1-pure c=1 servekit/Starlette req/s"] == "PASS"


def test_the_default_run_measures_both_stacks_and_both_w2_variants() -> None:
    cases = run.selected_cases(run.parse_args([]))
    assert {(case.workload, case.role, case.stack) for case in cases} >= {
        ("W1-pure", "servekit", "pure"),
        ("W2", "servekit-sync", "fast"),
        ("W2-pure", "servekit-sync", "pure"),
        ("W3-pure", "reference", "pure"),
    }
    assert {case.stack for case in cases if not case.workload.endswith("-pure")} == {"fast"}


def test_the_report_prints_both_w2_variants_against_starlette() -> None:
    results = {**_results(_rows("")), "machine": _machine(), "settings": _settings(), "command": "x"}
    results["targets"] = report.targets(results)
    text = report.markdown(results)
    assert "servekit-sync / baseline req/s" in text
    assert "| 1 | 0.75x | 1.00x | 0.50x | 1.00x |" in text


def _settings() -> dict[str, Any]:
    return {"concurrency": [1, 64], "warmup_s": 0, "duration_s": 1, "torch_threads": 1, "repeat": 1}


def _machine() -> dict[str, Any]:
    keys = ["cpu", "nproc", "ram_gib", "os", "python", "torch", "uvicorn", "starlette", "uvloop"]
    return {key: "-" for key in [*keys, "httptools", "pydantic", "servekit", "wrk", "date", "host"]}


def test_slope_is_the_least_squares_line_of_rss_against_requests() -> None:
    samples = [(n, 50_000_000 + 2 * n, 0.0) for n in (0, 1000, 2000, 3000)]
    assert soak.slope_per_request(samples) == pytest.approx(2.0)
    assert soak.slope_per_request(samples[:2]) is None


def test_a_soak_that_keeps_memory_per_request_fails_its_target() -> None:
    args = argparse.Namespace(warmup_fraction=0.1, stack="fast", concurrency=16, requests=100_000)
    growing = [(n, 40_000_000 + 50 * n, float(n)) for n in range(0, 100_001, 10_000)]
    flat = [(n, 40_000_000 + (4096 if n % 20_000 else 0), float(n)) for n in range(0, 100_001, 10_000)]
    runs = [soak.summarize("w1", args, growing, 10.0, 0), soak.summarize("w2", args, flat, 10.0, 0)]
    assert runs[0]["slope_bytes_per_1k"] == pytest.approx(50_000)
    assert runs[0]["fit_from_requests"] == 10_000
    checks = report.soak_targets({"soak": {"runs": runs}})
    assert [check["result"] for check in checks] == ["FAIL", "PASS"]
    assert "slope after warm-up" in "\n".join(report.soak_section({"sample_every_s": 3.0, "runs": runs}))
