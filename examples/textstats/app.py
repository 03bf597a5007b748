"""A small two-stage app without torch, the bundle examples' subject (docs/bundles.md).

    servekit serve examples/textstats/app.py:app
    servekit build examples/textstats/app.py:app -o dist/
    servekit serve dist/textstats-<version>.tar.gz

``Stats`` is the ingress; ``Tokenize`` splits the text into words.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from words import tokenize

import servekit as sk


class Text(BaseModel):
    text: str = Field(min_length=1, max_length=100_000, examples=["the cat saw the dog"])


class Summary(BaseModel):
    words: int
    unique: int
    top: list[str]


@sk.deployment
class Tokenize:
    def __call__(self, text: str) -> list[str]:
        return tokenize(text)


@sk.deployment
class Stats:
    def __init__(self, tokenize: sk.DeploymentHandle, top: int) -> None:
        self.tokenize, self.top = tokenize, top

    @sk.endpoint("/stats")
    async def stats(self, req: Text) -> Summary:
        """How many words, how many different ones, and the most frequent."""
        words = await self.tokenize(req.text)
        counts: dict[str, int] = {}
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return Summary(words=len(words), unique=len(counts), top=ranked[: self.top])


app = Stats.bind(Tokenize.bind(), top=3)
