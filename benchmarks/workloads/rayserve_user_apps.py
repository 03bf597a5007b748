"""W1, W2, W2-sync and W3 written for Ray Serve the way Ray's docs write them.

The baseline of `benchmarks.ray_paired`: apps a new Ray Serve user would write, not derived
from servekit's. Every deployment has `max_ongoing_requests=128` and Ray's other defaults
(its access log included); methods are async unless the workload is about sync stages. The
ingress reads the body with `await request.json()`; the other deployments are called through
`DeploymentHandle.remote`; W3 is one deployment with `@serve.batch` on an async `infer`,
called from `__call__`. `POST /` with `{"x": [16 floats]}`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from benchmarks.workloads.models import w2_model, w3_model
from benchmarks.workloads.transforms import normalize, postprocess

MAX_ONGOING_REQUESTS = 128


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Echo:
    """W1: echo the input vector."""

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"y": body["x"]}


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Model:
    """W2 stage 2: the MLP 16-256-256-10."""

    def __init__(self) -> None:
        self.model = w2_model()

    async def __call__(self, x: list[float]) -> list[float]:
        return self.model(x)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Postprocess:
    """W2 stage 3: softmax + argmax."""

    async def __call__(self, logits: list[float]) -> dict[str, Any]:
        return postprocess(logits)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Preprocess:
    """W2 ingress: normalize here, then the model and the postprocessing through handles."""

    def __init__(self, model: DeploymentHandle, post: DeploymentHandle) -> None:
        self.model, self.post = model, post

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        logits = await self.model.remote(normalize(body["x"]))
        return await self.post.remote(logits)  # type: ignore[no-any-return]


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class SyncModel:
    """W2-sync stage 2 as a plain `def`."""

    def __init__(self) -> None:
        self.model = w2_model()

    def __call__(self, x: list[float]) -> list[float]:
        return self.model(x)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class SyncPostprocess:
    """W2-sync stage 3 as a plain `def`."""

    def __call__(self, logits: list[float]) -> dict[str, Any]:
        return postprocess(logits)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Batched:
    """W3: the deep narrow MLP behind `@serve.batch`, in the ingress itself."""

    def __init__(self) -> None:
        self.model = w3_model()
        self.batch_sizes: list[int] = []  # what the benchmark reads back (GET /)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def infer(self, xs: list[list[float]]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(xs))
        return [postprocess(logits) for logits in self.model.batch(xs)]

    async def __call__(self, request: Request) -> dict[str, Any]:
        if request.method == "GET":  # the benchmark's probe for the batch sizes
            sizes, self.batch_sizes[:] = list(self.batch_sizes), []
            return {"batch_sizes": sizes}
        body = await request.json()
        return await self.infer(body["x"])  # type: ignore[no-any-return]


def build_w1() -> Any:
    return Echo.bind()


def build_w2() -> Any:
    return Preprocess.bind(Model.bind(), Postprocess.bind())


def build_w2_sync() -> Any:
    return Preprocess.bind(SyncModel.bind(), SyncPostprocess.bind())


def build_w3() -> Any:
    return Batched.bind()


BUILDERS = {"w1": build_w1, "w2": build_w2, "w2-sync": build_w2_sync, "w3": build_w3}
