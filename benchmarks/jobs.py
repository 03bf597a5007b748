"""Serving modes: `servekit batch` throughput on the W3 model, and async-job submission overhead.

    python -m benchmarks.jobs [--rows 20000] [--requests 300] [--out benchmarks/results/STEM]

1. **Batch scoring vs the model's own capacity.** The W3 model (deep narrow MLP, the same code
   the HTTP benchmarks serve) behind `@sk.batch(max_batch_size=32)`; `sk.batch_score` scores a
   parquet file of `--rows` 16-float rows. Its rows/s is compared with the model alone calling
   `batch()` on 32 rows at a time in a loop (the ceiling). Goal: >= 0.9x.
2. **Async-job overhead.** One echo endpoint served on 127.0.0.1: `--requests` sequential direct
   POSTs, the same with `Prefer: respond-async` (the time to the 202: the job stored), and
   submit-then-poll to the result; with the in-memory store and an SQLite data dir.

Writes `<out>.json` and `<out>.md` (default `results/<date>-<host>-jobs`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

import servekit as sk
from benchmarks.harness.machine import describe, host_tag
from benchmarks.workloads.models import w3_model

RESULTS = Path(__file__).resolve().parent / "results"


@sk.deployment
class W3Scorer:
    def __init__(self) -> None:
        self.model = w3_model()

    @sk.batch(max_batch_size=32, max_wait_ms=5)
    def score(self, xs: list[list[float]]) -> list[list[float]]:
        return self.model.batch(xs)


@sk.deployment
class Echo:
    @sk.endpoint("/echo")
    async def echo(self, x: int) -> dict[str, int]:
        return {"x": x}


def model_capacity(seconds: float) -> float:
    """Rows/s of the bare W3 model on batches of 32."""
    model = w3_model()
    xs = [[0.1 * i] * 16 for i in range(32)]
    model.batch(xs)
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.batch(xs)
        rows += 32
    return rows / (time.perf_counter() - started)


def batch_throughput(rows: int, folder: Path) -> dict[str, Any]:
    """Rows/s of `sk.batch_score` over a parquet file of `rows` rows, on the W3 model."""
    source = folder / "w3.parquet"
    pq.write_table(pa.table({"x": [[float(i % 7) / 7] * 16 for i in range(rows)]}), source)
    report = sk.batch_score(W3Scorer.bind(), source, folder / "out.parquet", method="score",
                            mapping={"x": "xs"}, overwrite=True, progress=False)  # fmt: skip
    return {
        "rows": report.rows,
        "seconds": round(report.seconds, 3),
        "rows_per_s": report.rows / report.seconds,
    }


def job_overhead(requests: int, data_dir: str | None) -> dict[str, float]:
    """Median milliseconds: a direct request, a job's 202, and a job to its result (polled)."""
    options: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
    with (
        sk.serve(Echo.bind(), port=0, blocking=False, **options) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for i in range(20):  # warm-up
            client.post("/echo", params={"x": i})
        direct, accepted, finished = [], [], []
        for i in range(requests):
            started = time.perf_counter()
            client.post("/echo", params={"x": i})
            direct.append(time.perf_counter() - started)
        for i in range(requests):
            started = time.perf_counter()
            location = client.post("/echo", params={"x": i}, headers={"Prefer": "respond-async"}).headers[
                "location"
            ]
            accepted.append(time.perf_counter() - started)
            while client.get(location).json()["state"] != "succeeded":
                time.sleep(0.001)
            finished.append(time.perf_counter() - started)
    samples = {"direct_ms": direct, "submit_202_ms": accepted, "submit_to_result_ms": finished}
    median_ms = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    return {**median_ms, "submit_overhead_ms": median_ms["submit_202_ms"] - median_ms["direct_ms"]}


def render(results: dict[str, Any]) -> str:
    machine, batch, jobs = results["machine"], results["batch"], results["jobs"]
    ratios = batch["rounds"]["ratio"]
    lines = [
        f"# Serving modes: batch scoring and async jobs ({machine['date']})",
        "",
        f"Machine: {machine['cpu']}, {machine['nproc']} CPUs, {machine['ram_gib']} GiB; Python "
        f"{machine['python']}; servekit {machine['servekit']}. {results['note']}",
        "",
        "## `servekit batch` on the W3 model",
        "",
        "| | rows/s |",
        "|---|---|",
        f"| the model alone, batches of 32 | {batch['model_capacity_rows_per_s']:.0f} |",
        f"| `sk.batch_score`, in-process replica, {batch['run']['rows']} rows "
        f"| {batch['run']['rows_per_s']:.0f} |",
        f"| ratio (goal >= 0.9) | **{batch['ratio']:.2f}** |",
        "",
        "The median round's figures; each round's capacity is the mean of measurements just before and "
        f"after its batch run. Every round's ratio: {', '.join(f'{r:.2f}' for r in ratios)}. "
        "`@sk.batch` methods get whole batches of `--batch-size` rows per call (see docs/batch-scoring.md); "
        "a method that is not batched is called once per row.",
        "",
        "## Async-job submission overhead (median ms, sequential requests)",
        "",
        "| store | direct request | job accepted (202) | overhead | submit to result (polled) |",
        "|---|---|---|---|---|",
    ]
    for store, row in jobs.items():
        lines.append(f"| {store} | {row['direct_ms']:.2f} | {row['submit_202_ms']:.2f} | "
                     f"{row['submit_overhead_ms']:.2f} | {row['submit_to_result_ms']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or RESULTS / f"{time.strftime('%Y-%m-%d')}-{host_tag()}-jobs"
    with tempfile.TemporaryDirectory() as folder:
        capacities, runs, ratios = [], [], []
        for _ in range(args.rounds):  # each run between two capacity measurements: the machine may be shared
            before = model_capacity(args.capacity_seconds)
            runs.append(batch_throughput(args.rows, Path(folder)))
            after = model_capacity(args.capacity_seconds)
            capacities.append((before + after) / 2)
            ratios.append(runs[-1]["rows_per_s"] / capacities[-1])
        middle = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
        capacity, run = capacities[middle], runs[middle]
        jobs = {
            "memory": job_overhead(args.requests, None),
            "sqlite (--data-dir)": job_overhead(args.requests, str(Path(folder) / "data")),
        }
    results = {
        "machine": describe(None),
        "note": args.note,
        "batch": {
            "model_capacity_rows_per_s": capacity,
            "run": run,
            "ratio": run["rows_per_s"] / capacity,
            "rounds": {
                "capacity": capacities,
                "batch_score": [r["rows_per_s"] for r in runs],
                "ratio": ratios,
            },
        },
        "jobs": jobs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
