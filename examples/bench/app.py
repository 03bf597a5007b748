"""A small scoring API to load-test: an ingress and a batched "model" (see run.py beside it)."""

import asyncio

from pydantic import BaseModel

import servekit as sk


class Features(BaseModel):
    x: list[float]


@sk.deployment
class Scorer:
    @sk.batch(max_batch_size=16, max_wait_ms=2)
    async def score(self, xs: list[list[float]]) -> list[float]:
        await asyncio.sleep(0.002)  # stands in for one forward pass over the whole batch
        return [sum(x) / len(x) for x in xs]


@sk.deployment
class Api:
    def __init__(self, scorer: sk.DeploymentHandle) -> None:
        self.scorer = scorer

    @sk.endpoint("/score")
    async def score(self, features: Features) -> dict[str, float]:
        return {"score": await self.scorer.score(features.x)}


app = Api.bind(Scorer.bind())
