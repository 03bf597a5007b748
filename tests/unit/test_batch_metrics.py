"""A replica's batch queues as metric families: sizes, waits and items waiting."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

import servekit as sk
from servekit._replica.batch_metrics import batch_families
from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._telemetry.metrics import render, size_buckets


def parsed(families: list[object]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} as prometheus_client's parser reads `families`."""
    body, _ = render(families)  # type: ignore[arg-type]
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


class Scorer:
    @sk.batch(max_batch_size=4, max_wait_ms=50)
    async def score(self, xs: list[int]) -> list[int]:
        await asyncio.sleep(0.001)
        return xs


async def test_a_replicas_batch_queues_give_size_wait_and_queued_families() -> None:
    replica = Replica(ReplicaContext("Scorer", "Scorer#2", "cpu", ()), Scorer, is_function=False)
    await replica.start((), {})
    assert batch_families(replica) == []  # no queue before a first call
    try:
        await asyncio.gather(*(replica.instance.score(x) for x in range(10)))
        found = parsed(batch_families(replica))
    finally:
        replica.stop()
    where = {"deployment": "Scorer", "replica": "Scorer#2", "method": "score"}
    assert found["servekit_batch_size_sum"] == [(where, 10.0)]
    assert 3 <= found["servekit_batch_size_count"][0][1] < 10  # at most 4 a batch, shared
    sizes = {labels["le"]: value for labels, value in found["servekit_batch_size_bucket"]}
    assert sizes["4.0"] == sizes["+Inf"]
    assert found["servekit_batch_wait_seconds_count"] == [(where, 10.0)]
    assert found["servekit_batch_queued_items"] == [(where, 0.0)]
    assert size_buckets({"1": 2, 8: 3}).counts[:4] == [2, 0, 0, 3]
