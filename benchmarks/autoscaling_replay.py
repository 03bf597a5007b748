"""Replay a step load through servekit's Autoscaler and print the replica counts as a table.

    python -m benchmarks.autoscaling_replay

In: nothing (the load and the options are fixed below). Out: the Markdown table of
docs/autoscaling.md's "Simulated step load" section, on stdout.
"""

from __future__ import annotations

from servekit import Autoscaling, MetricsSample
from servekit._replica.autoscaling import Autoscaler  # the autoscaler itself is internal

CAPACITY = 8  # max_ongoing_requests: requests one replica runs at once; the rest queue
SERVICE_MS = 50.0  # latency of a request that does not queue


def load(t: float) -> int:
    """Requests in the deployment at time t: 40 from t=10 s to t=90 s, none otherwise."""
    return 40 if 10 <= t < 90 else 0


def run(**options: object) -> list[int]:
    """Replica count after each 1 s decision from t=0 to t=240, starting at one replica."""
    base = {
        "min_replicas": 0,
        "max_replicas": 8,
        "initial_replicas": 1,
        "target_ongoing_requests": 4,
        "upscale_delay_s": 5,
        "downscale_delay_s": 30,
        "downscale_to_zero_delay_s": 60,
        "look_back_period_s": 5,
        "target_latency_ms": 100,
    }
    config = Autoscaling(**{**base, **options})
    scaler = Autoscaler(config, 0.0, max_ongoing_requests=CAPACITY)
    replicas, trajectory = config.start_replicas, []
    for now in range(241):
        requests = load(now)
        ongoing = min(requests, replicas * CAPACITY)
        slowdown = requests / (replicas * CAPACITY) if replicas else 1.0
        latencies = (SERVICE_MS * max(1.0, slowdown),) * ongoing
        scaler.observe(MetricsSample(now, replicas, ongoing, requests - ongoing, latencies))
        replicas = scaler.decide(now, replicas).desired
        trajectory.append(replicas)
    return trajectory


def main() -> None:
    """Print the table: one row per second at which some column changed."""
    runs = {
        "ongoing_requests": run(),
        "ongoing_requests, smoothing 0.5": run(smoothing_factor=0.5),
        "queue_depth": run(policy="queue_depth", target_queue_depth=4),
        "latency": run(policy="latency"),
    }
    times = [t for t in range(241) if t == 0 or any(r[t] != r[t - 1] for r in runs.values())]
    print("| t (s) | requests | " + " | ".join(runs) + " |")
    print("|---:|---:|" + "---:|" * len(runs))
    for t in times:
        print(f"| {t} | {load(t)} | " + " | ".join(str(r[t]) for r in runs.values()) + " |")


if __name__ == "__main__":
    main()
