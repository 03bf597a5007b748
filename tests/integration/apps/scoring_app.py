"""A small scoring app for `servekit batch` tests: a batched method, a model parameter, failures."""

from __future__ import annotations

from pydantic import BaseModel

import servekit as sk


class Review(BaseModel):
    text: str
    stars: int


@sk.deployment
class Scorer:
    @sk.batch(max_batch_size=32, max_wait_ms=2)
    async def double(self, xs: list[float]) -> list[dict[str, float]]:
        return [{"y": 2 * x} for x in xs]

    @sk.endpoint("/score")
    async def score(self, x: float) -> dict[str, float]:
        if x == 13:
            raise ValueError("13 is unlucky")
        return await self.double(x)

    @sk.endpoint("/review")
    def review(self, review: Review) -> dict[str, object]:
        return {"length": len(review.text), "good": review.stars >= 4}


app = Scorer.bind()
