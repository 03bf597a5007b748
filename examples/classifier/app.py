"""A three-stage serving graph: Preprocess -> Classifier -> Postprocess.

    servekit serve examples/classifier/app.py:app --port 8000

``Pipeline`` is the ingress: it owns the HTTP endpoints and calls the other
three deployments through handles. ``Classifier`` batches: concurrent calls
to ``predict`` are grouped into one forward pass of up to 32 texts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from make_weights import WEIGHTS, ensure_weights
from model import LABELS, featurize, load_model
from pydantic import BaseModel, Field

import servekit as sk


class Req(BaseModel):
    text: str = Field(min_length=1, max_length=10_000, examples=["Is this thing on?"])


class StreamReq(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=256, examples=[["Hello.", "Really?"]])


class Resp(BaseModel):
    label: str = Field(examples=["question"])
    score: float = Field(ge=0.0, le=1.0, examples=[0.99])


@sk.deployment
class Preprocess:
    """Text -> 16 float features (cheap, pure Python)."""

    def __call__(self, text: str) -> list[float]:
        return featurize(text)


@sk.deployment(max_ongoing_requests=256)
class Classifier:
    """The torch MLP, on the device the runtime picked for this replica.

    The toy weights are trained on the spot (fixed seed, < 1 s) if the file is missing.
    """

    def __init__(self, weights: str) -> None:
        self.device = sk.replica_context().device
        self.model = load_model(ensure_weights(Path(weights)), self.device)

    @sk.batch(max_batch_size=32, max_wait_ms=5)
    async def predict(self, features: list[list[float]]) -> list[list[float]]:
        """One call per text; servekit hands this method up to 32 of them at once."""
        with torch.inference_mode():
            logits = self.model(torch.tensor(features, device=self.device))
        return logits.cpu().tolist()


@sk.deployment
class Postprocess:
    """Logits -> the best label and its softmax probability."""

    def __call__(self, logits: list[float]) -> Resp:
        probs = torch.tensor(logits).softmax(dim=0)
        best = int(probs.argmax())
        return Resp(label=LABELS[best], score=round(float(probs[best]), 4))


@sk.deployment
class Pipeline:
    """The ingress: HTTP in, three handle calls, HTTP out."""

    def __init__(
        self, pre: sk.DeploymentHandle, model: sk.DeploymentHandle, post: sk.DeploymentHandle
    ) -> None:
        self.pre, self.model, self.post = pre, model, post

    async def _classify(self, text: str) -> Resp:
        features = await self.pre(text)
        logits = await self.model.predict(features)
        return await self.post(logits)

    @sk.endpoint("/classify")
    async def classify(self, req: Req) -> Resp:
        """Classify one text as a statement, a question or an exclamation."""
        return await self._classify(req.text)

    @sk.endpoint("/classify/stream")
    async def classify_stream(self, req: StreamReq) -> AsyncIterator[Resp]:
        """Classify many texts; results stream back in input order as they are ready."""
        tasks = [asyncio.ensure_future(self._classify(text)) for text in req.texts]
        try:
            for task in tasks:
                yield await task
        finally:
            for task in tasks:
                task.cancel()


app = Pipeline.bind(Preprocess.bind(), Classifier.bind(str(WEIGHTS)), Postprocess.bind())
