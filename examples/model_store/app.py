"""A sentiment classifier whose weights come from the model store, following the tag `production`.

Serve it with `servekit serve examples/model_store/app.py:app`; move the tag with
`servekit models tag sentiment v2 production` and the replicas load v2 in place.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

import servekit as sk


class Review(BaseModel):
    text: str


class Verdict(BaseModel):
    label: str
    score: int
    model_version: str | None


def load_weights(path: str) -> dict[str, int]:
    """The weights: a score per word (a real app would load a torch checkpoint here)."""
    return {str(word): int(score) for word, score in json.loads(Path(path).read_text()).items()}


@sk.deployment(num_replicas=2)
class Sentiment:
    def __init__(self, weights: str) -> None:
        self.weights = load_weights(weights)  # `weights` is a local path to the bound version

    def reconfigure_model(self, path: str) -> None:
        """A new version was promoted: load it while the old one serves, then switch."""
        self.weights = load_weights(path)

    @sk.endpoint("/classify")
    def classify(self, review: Review) -> Verdict:
        score = sum(self.weights.get(word, 0) for word in review.text.lower().split())
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return Verdict(label=label, score=score, model_version=sk.replica_context().model_version)


app = Sentiment.bind(sk.model("sentiment", tag="production", watch_s=0.5))
