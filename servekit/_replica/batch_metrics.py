"""A replica's `@batch` queues as metric families: batch sizes, waits and items waiting.

In: a `Replica` (its queues' `BatchStats`, kept as batches form). Out: the `servekit_batch_*`
families, labelled with the replica's deployment, id and method. Read at scrape time (or when a
worker process answers a probe, or a Ray replica exports); nothing is added to the batch path.
"""

from __future__ import annotations

from typing import cast

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from servekit._replica.replica import Replica
from servekit._telemetry.metrics import new_family, size_buckets


def batch_families(replica: Replica) -> list[Metric]:
    """The `servekit_batch_*` families of `replica`'s batch queues (none before a first batch call)."""
    queues = replica.batch_queues()
    if not queues:
        return []
    sizes = cast(HistogramMetricFamily, new_family("servekit_batch_size"))
    waits = cast(HistogramMetricFamily, new_family("servekit_batch_wait_seconds"))
    queued = cast(GaugeMetricFamily, new_family("servekit_batch_queued_items"))
    context = replica.context
    for method, queue in queues:
        labels = [context.deployment, context.replica_id, method]
        stats = queue.stats
        histogram = size_buckets(stats.sizes)
        sizes.add_metric(labels, histogram.cumulative(), histogram.sum)
        waits.add_metric(labels, stats.waits.cumulative(), stats.waits.sum)
        queued.add_metric(labels, queue.queued)
    return [sizes, waits, queued]
