"""W1, W2, W2-sync and W3 written for servekit the way a new user writes them, to run on Ray.

The servekit side of `benchmarks.ray_paired`: the same topology and options as
`rayserve_user_apps` (`max_ongoing_requests=128` on every deployment, async methods unless
the workload is about sync stages), with `@sk.endpoint("/predict")` taking a pydantic body and
`@sk.batch(max_batch_size=32, max_wait_ms=5)`. `POST /predict` with `{"x": [16 floats]}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import servekit as sk
from benchmarks.workloads.transforms import normalize, postprocess

MAX_ONGOING_REQUESTS = 128
PATH = "/predict"


class Body(BaseModel):
    """The request body of every workload."""

    x: list[float]


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Echo:
    """W1: echo the input vector."""

    @sk.endpoint(PATH)
    async def predict(self, body: Body) -> dict[str, Any]:
        """Return the input."""
        return {"y": body.x}


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Model:
    """W2 stage 2: the MLP 16-256-256-10."""

    def __init__(self) -> None:
        """Build the seeded model (imported here: servekit ships this module's code to Ray by
        value, and `models` keeps a `threading.local`, which does not pickle)."""
        from benchmarks.workloads.models import w2_model

        self.model = w2_model()

    async def __call__(self, x: list[float]) -> list[float]:
        """Return the logits."""
        return self.model(x)


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Postprocess:
    """W2 stage 3: softmax + argmax."""

    async def __call__(self, logits: list[float]) -> dict[str, Any]:
        """Return ``{"label", "score"}``."""
        return postprocess(logits)


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class SyncModel:
    """W2-sync stage 2 as a plain ``def``."""

    def __init__(self) -> None:
        """Build the seeded model (imported here: servekit ships this module's code to Ray by
        value, and `models` keeps a `threading.local`, which does not pickle)."""
        from benchmarks.workloads.models import w2_model

        self.model = w2_model()

    def __call__(self, x: list[float]) -> list[float]:
        """Return the logits."""
        return self.model(x)


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class SyncPostprocess:
    """W2-sync stage 3 as a plain ``def``."""

    def __call__(self, logits: list[float]) -> dict[str, Any]:
        """Return ``{"label", "score"}``."""
        return postprocess(logits)


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Preprocess:
    """W2 ingress: normalize here, then the model and the postprocessing through handles."""

    def __init__(self, model: sk.DeploymentHandle, post: sk.DeploymentHandle) -> None:
        """Keep the handles."""
        self.model, self.post = model, post

    @sk.endpoint(PATH)
    async def predict(self, body: Body) -> dict[str, Any]:
        """Normalize -> model -> postprocess."""
        logits = await self.model(normalize(body.x))
        result: dict[str, Any] = await self.post(logits)
        return result


@sk.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Batched:
    """W3: the deep narrow MLP behind `@sk.batch`, in the ingress itself."""

    def __init__(self) -> None:
        """Build the seeded model (imported here, as above)."""
        from benchmarks.workloads.models import w3_model

        self.model = w3_model()

    @sk.batch(max_batch_size=32, max_wait_ms=5)
    async def infer(self, xs: list[list[float]]) -> list[dict[str, Any]]:
        """One forward pass for the whole batch."""
        return [postprocess(logits) for logits in self.model.batch(xs)]

    @sk.endpoint(PATH)
    async def predict(self, body: Body) -> dict[str, Any]:
        """Return the model's result for one item."""
        result: dict[str, Any] = await self.infer(body.x)
        return result


def build_w1() -> sk.Application:
    """W1."""
    return Echo.bind()


def build_w2() -> sk.Application:
    """W2: the ingress normalizes, then two deployments."""
    return Preprocess.bind(Model.bind(), Postprocess.bind())


def build_w2_sync() -> sk.Application:
    """W2 with sync stages."""
    return Preprocess.bind(SyncModel.bind(), SyncPostprocess.bind())


def build_w3() -> sk.Application:
    """W3: one deployment, batched."""
    return Batched.bind()


BUILDERS = {"w1": build_w1, "w2": build_w2, "w2-sync": build_w2_sync, "w3": build_w3}
