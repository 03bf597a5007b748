"""W1 and W2 written directly for Ray Serve: the baseline the servekit-on-Ray apps are measured against.

The same model code and shapes as :mod:`benchmarks.workloads.servekit_apps` (``POST /`` with
``{"x": [16 floats]}``), in the way Ray Serve's docs write them: an ingress whose
``__call__(request)`` parses the JSON body and calls the other deployments through
``DeploymentHandle``s. Every deployment has the options the servekit apps map to by default
(1 CPU per replica, ``max_ongoing_requests=100``, no per-request access log), so both sides
ask Ray for the same thing.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from benchmarks.workloads.transforms import normalize, postprocess

MAX_ONGOING_REQUESTS = 100  # servekit's default, which the servekit apps carry to Ray
NO_ACCESS_LOG = {"enable_access_log": False}  # servekit's default too (Ray logs every request otherwise)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, logging_config=NO_ACCESS_LOG)
class Echo:
    """W1: echo the input vector."""

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"y": body["x"]}


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, logging_config=NO_ACCESS_LOG)
class Normalize:
    async def __call__(self, x: list[float]) -> list[float]:
        return normalize(x)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, logging_config=NO_ACCESS_LOG)
class Model:
    def __init__(self) -> None:
        from benchmarks.workloads.models import w2_model

        self.model = w2_model()

    async def __call__(self, x: list[float]) -> list[float]:
        return self.model(x)  # type: ignore[no-any-return]


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, logging_config=NO_ACCESS_LOG)
class Postprocess:
    async def __call__(self, logits: list[float]) -> dict[str, float | int]:
        return postprocess(logits)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, logging_config=NO_ACCESS_LOG)
class Pipeline:
    """W2 ingress: normalize -> model -> postprocess, through handles."""

    def __init__(self, normalize: DeploymentHandle, model: DeploymentHandle, post: DeploymentHandle) -> None:
        self.normalize, self.model, self.post = normalize, model, post

    async def __call__(self, request: Request) -> dict[str, float | int]:
        body = await request.json()
        x = await self.normalize.remote(body["x"])
        logits = await self.model.remote(x)
        return await self.post.remote(logits)  # type: ignore[no-any-return]


def build_w1() -> Any:
    return Echo.bind()


def build_w2() -> Any:
    return Pipeline.bind(Normalize.bind(), Model.bind(), Postprocess.bind())


BUILDERS = {"w1": build_w1, "w2": build_w2}
