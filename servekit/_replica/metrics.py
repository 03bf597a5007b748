"""`servekit.metrics`: counters, gauges and histograms for user code, on every backend.

```python
hits = sk.metrics.counter("cache_hits_total", "Cache hits.", labels=["model"])
hits.labels(model="a").inc()          # or hits.inc(labels={"model": "a"})
```

In: definitions and recordings from user code (a deployment's `__init__` and methods, or any
code in the process). Out: the process's user metrics as prometheus_client families
(`collect()`), which `/metrics` shows: a worker process ships its snapshot with each probe, and a
Ray replica exports it through Ray's metrics. Every series carries the `deployment` and
`replica` it was recorded in (empty outside a replica).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric

from servekit._replica.context import current_replica
from servekit._telemetry.metrics import LATENCY_BUCKETS_S
from servekit._telemetry.user_metrics import (
    DEFAULT_MAX_LABEL_SETS,
    BoundMetric,
    Counter,
    Gauge,
    Histogram,
    MetricRegistry,
)

__all__ = [
    "DEFAULT_MAX_LABEL_SETS",
    "BoundMetric",
    "Counter",
    "Gauge",
    "Histogram",
    "collect",
    "counter",
    "gauge",
    "histogram",
]


def _where() -> tuple[str, str]:
    context = current_replica()
    return ("", "") if context is None else (context.deployment, context.replica_id)


_PROCESS = MetricRegistry(("deployment", "replica"), _where)
"""The process's user metrics. Metrics are process-wide by nature (like loggers): a deployment's
replicas in this process define the same metric again and share it, each with its own series."""


def counter(
    name: str, description: str = "", labels: Sequence[str] = (), *, max_label_sets: int | None = None
) -> Counter:
    """A counter (a value that only goes up) named `name`, with label names `labels`.

    Defining it again with the same labels returns the same counter (so each replica's
    `__init__` may define it); other labels or another type raise `ValueError`. A name ending in
    ``_total`` is shown as is; others get ``_total`` added. At most `max_label_sets` (default
    1000) label sets per process: past it, recording a new one raises `ValueError`.
    """
    return _PROCESS.counter(name, description, labels, max_label_sets)


def gauge(
    name: str, description: str = "", labels: Sequence[str] = (), *, max_label_sets: int | None = None
) -> Gauge:
    """A gauge (a value that goes up and down) named `name`, with label names `labels`."""
    return _PROCESS.gauge(name, description, labels, max_label_sets)


def histogram(
    name: str,
    description: str = "",
    labels: Sequence[str] = (),
    *,
    buckets: Sequence[float] = LATENCY_BUCKETS_S,
    max_label_sets: int | None = None,
) -> Histogram:
    """A histogram named `name`, counting values per bucket: `buckets` are increasing upper bounds
    (+Inf is added); the default suits latencies in seconds."""
    return _PROCESS.histogram(name, description, labels, buckets, max_label_sets)


def collect() -> list[Metric]:
    """Every user metric of this process, as prometheus_client families."""
    return _PROCESS.collect()


def forget_replica(deployment: str, replica_id: str) -> None:
    """Drop the series replica `replica_id` of `deployment` recorded (it stopped)."""
    _PROCESS.forget((deployment, replica_id))
