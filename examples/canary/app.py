"""Two canaries on a live server: a worse v2 is rolled back, an equal v2 is promoted to 100%.

    python examples/canary/app.py

Each scenario serves a sentiment classifier behind `sk.split(..., canary=sk.Canary(...))`,
sends it traffic until the canary has decided, and prints `servekit rollout status` for the
router (the same command works against any running server with `--url`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from pathlib import Path

import httpx

import servekit as sk

TEXTS = ["a good movie", "a great film", "fine acting", "a dull plot"]
ALL_WORDS = ["good", "great", "fine"]


@sk.deployment
class Sentiment:
    def __init__(self, version: str, positive_words: list[str]) -> None:
        self.version = version
        self.positive = set(positive_words)

    async def __call__(self, text: str) -> str:
        return "positive" if self.positive & set(text.lower().split()) else "negative"


@sk.deployment
class Api:
    def __init__(self, sentiment: sk.DeploymentHandle) -> None:
        self.sentiment = sentiment

    @sk.endpoint("/classify", methods=["GET"])
    async def classify(self, text: str) -> dict[str, str]:
        return {"label": await self.sentiment(text)}


def the_label(result: str) -> str:
    """The declared output the canary compares: the label itself."""
    return result


def app(v2_words: list[str]) -> sk.Application:
    """v1 knows every positive word; v2 knows `v2_words` (fewer: its labels shift)."""
    sentiment = sk.split(
        {
            "v1": Sentiment.options(name="SentimentV1").bind("v1", ALL_WORDS),
            "v2": Sentiment.options(name="SentimentV2").bind("v2", v2_words),
        },
        name="sentiment",
        canary=sk.Canary(
            baseline="v1",
            candidate="v2",
            steps=[20, 100],
            bake_s=1,
            min_samples=50,
            max_p95_ratio=20,  # this demo checks the labels; a busy laptop's latency is noisy
            output=the_label,
        ),
    )
    return Api.bind(sentiment)


async def drive(url: str, until: set[str]) -> str:
    """Send traffic (8 requests in flight) until the canary's state is one of `until`; that state."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        texts = itertools.cycle(TEXTS)
        while True:
            answers = await asyncio.gather(
                *(client.get("/classify", params={"text": next(texts)}) for _ in range(8))
            )
            assert all(answer.status_code == 200 for answer in answers)
            state: str = (await client.get("/-/rollouts/sentiment")).json()["state"]
            if state in until:
                return state


def rollout_status(url: str) -> str:
    """What `servekit rollout status sentiment --url URL` prints."""
    env = {**os.environ, "PYTHONPATH": str(Path(sk.__file__).parent.parent)}
    argv = [sys.executable, "-m", "servekit", "rollout", "status", "sentiment", "--url", url]
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=60).stdout


def scenario(title: str, v2_words: list[str]) -> None:
    """Serve the app, drive traffic until its canary ends, print the outcome and the CLI's status."""
    with sk.serve(app(v2_words), port=0, blocking=False) as server:
        outcome = asyncio.run(drive(server.url, {"completed", "rolled_back"}))
        print(f"{title}: {outcome}")
        print(rollout_status(server.url))


if __name__ == "__main__":
    scenario("worse v2 (misses 'great' and 'fine')", ["good"])
    scenario("equal v2", ALL_WORDS)
