"""servekit's metrics through Ray's metrics pipeline (`ray.util.metrics`), from each Ray replica.

In: the metric families of one replica actor (its calls, its `@batch` queues, the user metrics
recorded in its process and, at the HTTP ingress, the edge's request metrics), read every
`EXPORT_INTERVAL_S`. Out: the same names as Ray metrics, which Ray's metrics agent serves to the
cluster's Prometheus (with Ray's ``ray_`` prefix): counters get their increase, gauges their
value, histograms their new observations (`SnapshotDeltas`). Nothing is added to the request
path: the replica records into servekit's own accumulators, and this task reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import Metric
from ray.util import metrics as ray_metrics

from servekit._telemetry.metrics import Increment, SnapshotDeltas, merge_families

logger = logging.getLogger("servekit.ray")

EXPORT_INTERVAL_S = float(os.environ.get("SERVEKIT_RAY_METRICS_INTERVAL_S", "5"))
"""How often a replica hands its metrics to Ray (Ray's agent reports every 10 s by default)."""

Source = Callable[[], Iterable[Metric]]


class RayMetricsExport:
    """Hands a replica's metric families to `ray.util.metrics` every `interval_s`."""

    def __init__(self, sources: list[Source], interval_s: float = EXPORT_INTERVAL_S) -> None:
        self._sources = list(sources)
        self._interval_s = interval_s
        self._deltas = SnapshotDeltas()
        self._metrics: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def add_source(self, source: Source) -> None:
        """Export `source`'s families too (the HTTP ingress adds the edge's request metrics)."""
        self._sources.append(source)

    def start(self) -> None:
        """Export in the background, on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="servekit-ray-metrics")

    def stop(self) -> None:
        """Stop exporting, after one last export."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        with contextlib.suppress(Exception):
            self.export()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.export()
            except Exception:
                logger.exception("exporting servekit's metrics to Ray failed")

    def export(self) -> None:
        """Hand what changed since the last export to Ray."""
        families = merge_families(*(source() for source in self._sources))
        for increment in self._deltas.increments(families):
            self._record(increment)

    def _record(self, increment: Increment) -> None:
        metric = self._metric(increment)
        if metric is None:
            return
        tags = increment.labels
        if increment.kind == "counter":
            metric.inc(increment.value, tags)
        elif increment.kind == "gauge":
            metric.set(increment.value, tags)
        else:
            for value, times in increment.observations:
                for _ in range(times):
                    metric.observe(value, tags)

    def _metric(self, increment: Increment) -> Any:
        """The Ray metric of `increment`'s family (made on first use); None when Ray cannot take it."""
        name = increment.family.replace(":", "_")
        keys = tuple(sorted(increment.labels))
        if name not in self._metrics:
            self._metrics[name] = _ray_metric(name, increment, keys)
        metric = self._metrics[name]
        if metric is None or tuple(sorted(metric.info["tag_keys"])) != keys:
            return None  # unsupported, or a series with other labels than the first one's
        return metric


def _ray_metric(name: str, increment: Increment, keys: tuple[str, ...]) -> Any:
    if increment.kind == "counter":
        return ray_metrics.Counter(name, increment.help, tag_keys=keys)
    if increment.kind == "gauge":
        return ray_metrics.Gauge(name, increment.help, tag_keys=keys)
    if increment.bounds and increment.bounds[0] > 0:
        return ray_metrics.Histogram(name, increment.help, list(increment.bounds), tag_keys=keys)
    logger.warning("histogram %r is not exported to Ray: Ray takes positive bucket bounds only", name)
    return None
