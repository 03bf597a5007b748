"""The benchmark workloads written with servekit.

Same model code and same request/response shapes as
:mod:`benchmarks.workloads.starlette_apps`; all routes are ``POST /`` with body
``{"x": [16 floats]}``.  The body is taken as a plain ``dict`` (like the
baseline's ``await request.json()``) so both sides do the same parsing work.
Model objects are built in ``__init__`` and torch is imported lazily, so W1
starts without torch.

* W1: one deployment with an ``@sk.endpoint("/")``.
* W2: ``Normalize -> Model -> Postprocess``, three deployments composed with
  ``.bind()`` behind an ingress.
* W3: an ingress plus a model deployment whose method is
  ``@sk.batch(max_batch_size=32, max_wait_ms=5)``; batch statistics come from
  ``GET /-/status``.
* W2P / W3P (``w2-process``, ``w3-process``): the same classes with
  ``isolation="process"``: W2's three stages each in a worker process, W3's batched
  model as two worker-process replicas.  The ingress stays in the server process
  (it owns the HTTP routes).
* W2S (``w2-sync``): W2 as users write it, the three stages as plain ``def`` methods
  behind the same async ingress (compare with W2 and the Starlette baseline's ``w2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import servekit as sk
from benchmarks.workloads import MAX_BATCH_SIZE, MAX_WAIT_MS
from benchmarks.workloads.process_apps import build_step
from benchmarks.workloads.transforms import normalize, postprocess

Item = list[float]
Result = dict[str, float | int]


# --- W1 -------------------------------------------------------------------


@sk.deployment
class Echo:
    """W1: echo the input vector."""

    @sk.endpoint("/")
    async def echo(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return ``{"y": x}``."""
        return {"y": body["x"]}


# --- W2 -------------------------------------------------------------------


@sk.deployment
class Normalize:
    """W2 stage 1: standardize the input vector."""

    async def __call__(self, x: Item) -> Item:
        """Return the normalized vector."""
        return normalize(x)


@sk.deployment
class Model:
    """W2 stage 2: the MLP 16-256-256-10."""

    def __init__(self) -> None:
        """Build the seeded model."""
        from benchmarks.workloads.models import w2_model

        self.model = w2_model()

    async def __call__(self, x: Item) -> list[float]:
        """Return the logits."""
        return self.model(x)


@sk.deployment
class Postprocess:
    """W2 stage 3: softmax + argmax."""

    async def __call__(self, logits: list[float]) -> Result:
        """Return ``{"label", "score"}``."""
        return postprocess(logits)


@sk.deployment
class Pipeline:
    """W2 ingress: calls the three stages in order."""

    def __init__(
        self,
        normalize: sk.DeploymentHandle,
        model: sk.DeploymentHandle,
        post: sk.DeploymentHandle,
    ) -> None:
        """Keep the handles of the three stages."""
        self.normalize = normalize
        self.model = model
        self.post = post

    @sk.endpoint("/")
    async def predict(self, body: dict[str, Any]) -> Result:
        """Normalize -> model -> postprocess."""
        x = await self.normalize(body["x"])
        logits = await self.model(x)
        result: Result = await self.post(logits)
        return result


@sk.deployment
class SyncNormalize:
    """W2 with sync stages, stage 1: the same work as `Normalize`, as a plain `def`."""

    def __call__(self, x: Item) -> Item:
        """Return the normalized vector."""
        return normalize(x)


@sk.deployment
class SyncModel:
    """W2 with sync stages, stage 2: the same work as `Model`, as a plain `def`."""

    def __init__(self) -> None:
        """Build the seeded model."""
        from benchmarks.workloads.models import w2_model

        self.model = w2_model()

    def __call__(self, x: Item) -> list[float]:
        """Return the logits."""
        return self.model(x)


@sk.deployment
class SyncPostprocess:
    """W2 with sync stages, stage 3: the same work as `Postprocess`, as a plain `def`."""

    def __call__(self, logits: list[float]) -> Result:
        """Return ``{"label", "score"}``."""
        return postprocess(logits)


# --- W3 -------------------------------------------------------------------


@sk.deployment
class DeepModel:
    """W3 model deployment: the deep narrow MLP behind a dynamic batcher."""

    def __init__(self) -> None:
        """Build the seeded model."""
        from benchmarks.workloads.models import w3_model

        self.model = w3_model()

    @sk.batch(max_batch_size=MAX_BATCH_SIZE, max_wait_ms=MAX_WAIT_MS)
    async def predict(self, xs: list[Item]) -> list[Result]:
        """One forward pass for the whole batch."""
        return [postprocess(logits) for logits in self.model.batch(xs)]


@sk.deployment
class BatchedIngress:
    """W3 ingress: forwards one item to the batched model."""

    def __init__(self, model: sk.DeploymentHandle) -> None:
        """Keep the model handle."""
        self.model = model

    @sk.endpoint("/")
    async def predict(self, body: dict[str, Any]) -> Result:
        """Return the model's result for one item."""
        result: Result = await self.model.predict(body["x"])
        return result


def build_w1() -> sk.Application:
    """W1 application."""
    return Echo.bind()


def build_w2() -> sk.Application:
    """W2 application: three deployments behind an ingress."""
    return Pipeline.bind(Normalize.bind(), Model.bind(), Postprocess.bind())


def build_w2_sync() -> sk.Application:
    """W2S: W2 as users write it, three plain `def` stages behind the async ingress."""
    return Pipeline.bind(SyncNormalize.bind(), SyncModel.bind(), SyncPostprocess.bind())


def build_w3() -> sk.Application:
    """W3 application: ingress + batched model deployment."""
    return BatchedIngress.bind(DeepModel.bind())


def build_w2_process() -> sk.Application:
    """W2P: the three W2 stages as process replicas, the ingress in-process."""
    stages = (Normalize, Model, Postprocess)
    return Pipeline.bind(*(stage.options(isolation="process").bind() for stage in stages))


def build_w3_process() -> sk.Application:
    """W3P: the batched W3 model as two process replicas, the ingress in-process."""
    return BatchedIngress.bind(DeepModel.options(isolation="process", num_replicas=2).bind())


#: Workload name -> app factory, used by :mod:`benchmarks.workloads.launch`.
BUILDERS: dict[str, Callable[[], sk.Application]] = {
    "w1": build_w1,
    "w2": build_w2,
    "w3": build_w3,
    "w2-process": build_w2_process,
    "w2-sync": build_w2_sync,
    "w3-process": build_w3_process,
    "step": build_step,  # benchmarks.step_load: autoscaled process deployment, GET /work
}
