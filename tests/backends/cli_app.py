"""A small app the CLI tests serve on Ray (no torch, so replicas start fast)."""

from __future__ import annotations

import os

from pydantic import BaseModel

import servekit as sk


class Words(BaseModel):
    text: str


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Counter:
    def count(self, text: str) -> int:
        return len(text.split())


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Front:
    def __init__(self, counter: sk.DeploymentHandle) -> None:
        self.counter = counter

    @sk.endpoint("/count")
    async def count(self, words: Words) -> dict[str, int]:
        return {"words": await self.counter.count(words.text), "pid": os.getpid()}


app = Front.bind(Counter.bind())
