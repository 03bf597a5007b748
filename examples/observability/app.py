"""Metrics and the live dashboard: a batched classifier behind a 90/10 split, with user metrics.

    python examples/observability/app.py           # serve, send traffic, print what /metrics says
    python examples/observability/app.py --serve   # keep serving with steady traffic (Ctrl-C stops)
    servekit serve examples/observability/app.py:app

Open http://127.0.0.1:8000/-/dashboard while it serves, and point Prometheus at /metrics
(`prometheus.yml` here; `grafana-dashboard.json` charts the metrics in Grafana).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import servekit as sk


class Request(BaseModel):
    text: str


LABELS = ("cat", "dog", "bird")


@sk.deployment(max_ongoing_requests=128)
class Classifier:
    def __init__(self, version: str) -> None:
        self.version = version
        # defined in every replica's __init__: the same metric each time, a series per replica
        self.predicted = sk.metrics.counter(
            "predictions_total", "Predictions made, by label.", labels=["label"]
        )
        self.confidence = sk.metrics.histogram(
            "prediction_confidence", "Confidence of each prediction.", buckets=[0.5, 0.8, 0.9, 0.99]
        )

    @sk.batch(max_batch_size=16, max_wait_ms=5)
    async def predict(self, texts: list[str]) -> list[dict[str, object]]:
        await asyncio.sleep(0.002)  # one model call per batch, whatever its size
        results = []
        for text in texts:
            label = LABELS[len(text) % len(LABELS)]
            confidence = 0.75 + (len(text) % 25) / 100
            self.predicted.labels(label=label).inc()
            self.confidence.observe(confidence)
            results.append({"label": label, "confidence": confidence, "version": self.version})
        return results


@sk.deployment
class Api:
    def __init__(self, classifier: sk.DeploymentHandle) -> None:
        self.classifier = classifier

    @sk.endpoint("/classify")
    async def classify(self, request: Request) -> dict[str, object]:
        return await self.classifier.predict(request.text.strip().lower())


app = Api.bind(
    sk.split(
        {
            "v1": Classifier.options(name="ClassifierV1", version="v1").bind("v1"),
            "v2": Classifier.options(name="ClassifierV2", version="v2").bind("v2"),
        },
        weights={"v1": 90, "v2": 10},
        name="classifier",
    )
)


async def traffic(url: str, requests: int, concurrency: int = 16) -> None:
    """`requests` POSTs to /classify, `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(index: int) -> None:
            async with limit:
                response = await client.post(f"{url}/classify", json={"text": "x" * (index % 40)})
                response.raise_for_status()

        await asyncio.gather(*(one(index) for index in range(requests)))


def summary(metrics_text: str) -> dict[str, object]:
    """A few figures from a /metrics scrape, read with prometheus_client's parser."""
    samples = [s for family in text_string_to_metric_families(metrics_text) for s in family.samples]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    batches = total("servekit_batch_size_count")
    return {
        "requests counted": int(total("servekit_http_requests_total", route="/classify", status="200")),
        "classifier calls": {
            arm: int(total("servekit_router_requests_total", arm=arm)) for arm in ("v1", "v2")
        },
        "mean batch size": round(total("servekit_batch_size_sum") / batches, 2) if batches else None,
        "predictions by label": {label: int(total("predictions_total", label=label)) for label in LABELS},
        "replicas running": int(total("servekit_deployment_running_replicas")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep serving with steady traffic until Ctrl-C")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with sk.serve(app, port=args.port, blocking=False) as server:
        print("dashboard:", f"{server.url}/-/dashboard")
        print("metrics:", server.metrics_url)
        if args.serve:
            try:
                while True:
                    asyncio.run(traffic(server.url, 200))
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return
        asyncio.run(traffic(server.url, 200))
        scraped = httpx.get(str(server.metrics_url), timeout=30).text
        for label, value in summary(scraped).items():
            print(f"{label}: {value}")


if __name__ == "__main__":
    main()
