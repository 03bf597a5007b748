"""The app the metrics behaviour suite serves: an ingress over a batched scorer that records user
metrics, on every backend."""

from __future__ import annotations

import servekit as sk


@sk.deployment(max_ongoing_requests=64)
class Scorer:
    """Scores in batches and counts what it scored with user metrics."""

    def __init__(self) -> None:
        self.scored = sk.metrics.counter("scorer_items_total", "Items scored.", labels=["parity"])
        self.values = sk.metrics.histogram("scorer_values", "Values scored.", buckets=[1, 10, 100])

    @sk.batch(max_batch_size=8, max_wait_ms=20)
    async def score(self, xs: list[float]) -> list[float]:
        for x in xs:
            self.scored.labels(parity="even" if int(x) % 2 == 0 else "odd").inc()
            self.values.observe(x)
        return [2 * x for x in xs]

    async def tag(self, name: str) -> str:
        """Counts a caller-chosen label (a mistake the cap of 3 label sets keeps bounded)."""
        tags = sk.metrics.counter("scorer_tags_total", "Tags seen.", labels=["tag"], max_label_sets=3)
        tags.labels(tag=name).inc()
        return name


@sk.deployment(max_ongoing_requests=64)
class Api:
    def __init__(self, scorer: sk.DeploymentHandle) -> None:
        self.scorer = scorer

    @sk.endpoint("/score/{x}", methods=["GET"])
    async def score(self, x: float) -> dict[str, float]:
        return {"y": await self.scorer.score(x)}

    @sk.endpoint("/tag/{name}", methods=["GET"])
    async def tag(self, name: str) -> dict[str, str]:
        return {"tag": await self.scorer.tag(name)}


def metrics_app() -> sk.Application:
    return Api.bind(Scorer.bind())
