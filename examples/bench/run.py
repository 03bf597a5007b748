"""Load-test app.py with `servekit bench`: a concurrency sweep, the results table, JSON and a plot.

    python examples/bench/run.py                   # 1, 8 and 32 requests in flight, 5 s each
    python examples/bench/run.py --duration 1      # quicker

`servekit bench` starts the app itself (a `file.py:app` target), loads it, and stops it. With
batching, more requests in flight fill bigger batches: throughput grows with concurrency while
each request waits at most the batch window longer. Open report.html in a browser.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", default="5")
    parser.add_argument("--warmup", default="1")
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="servekit-bench-"))
    args = parser.parse_args()
    results, plot = Path(args.out) / "results.json", Path(args.out) / "report.html"
    command = [
        *(sys.executable, "-m", "servekit", "bench", f"{HERE / 'app.py'}:app"),
        *("--path", "/score", "--json", json.dumps({"x": [0.5, 1.5, 2.5, 3.5]})),
        *("--concurrency", "1,8,32", "--duration", args.duration, "--warmup", args.warmup),
        *("--out", str(results), "--plot", str(plot)),
    ]
    subprocess.run(command, check=True)  # prints the results table
    for phase in json.loads(results.read_text())["phases"]:
        latency = phase["latency_ms"]
        print(
            f"{phase['label']}: {phase['rps']:.0f} req/s, p50 {latency['p50']:.1f} ms, "
            f"p99 {latency['p99']:.1f} ms, errors {phase['errors']}"
        )
    print(f"report: {plot}")


if __name__ == "__main__":
    main()
