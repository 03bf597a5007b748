"""Traces of a real server, exported over real OTLP/HTTP to the test receiver (`otlp_receiver`).

One request through preprocess -> model (in a worker process, batched) -> postprocess is one
trace that continues the client's `traceparent`: the edge's server span, a client span per
handle call with the replica's server span under it, the queue wait, the batch wait, and the
batch span linked to the items it served. Tracing off installs nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import servekit as sk
from servekit._http.tracing import TracingMiddleware
from servekit._telemetry import tracing

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Req(BaseModel):
    text: str


@sk.deployment(max_ongoing_requests=1)
class Preprocess:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    async def __call__(self, text: str) -> list[float]:
        for _ in range(1000):  # bounded: at most ~10 s
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        return [float(len(word)) for word in text.split()]


@sk.deployment(isolation="process")
class Model:
    @sk.batch(max_batch_size=8, max_wait_ms=20)
    async def predict(self, rows: list[list[float]]) -> list[dict[str, int]]:
        return [{"label": int(sum(row)), "pid": os.getpid()} for row in rows]


@sk.deployment
def postprocess(scored: dict[str, int]) -> dict[str, int]:
    return {**scored, "post": 1}


@sk.deployment
class Pipeline:
    def __init__(
        self, pre: sk.DeploymentHandle, model: sk.DeploymentHandle, post: sk.DeploymentHandle
    ) -> None:
        self.pre, self.model, self.post = pre, model, post

    @sk.endpoint("/classify")
    async def classify(self, req: Req) -> dict[str, int]:
        return await self.post(self.model.predict(self.pre(req.text)))


def _one(spans: list[Any], name: str, kind: str, parent: str | None = None) -> Any:
    found = [s for s in spans if s.name == name and s.kind == kind and parent in (None, s.parent_id)]
    assert len(found) == 1, (name, kind, parent, [(s.name, s.kind, s.parent_id) for s in spans])
    return found[0]


async def test_a_request_is_one_trace_across_edge_handles_queue_a_process_replica_and_a_batch(
    otlp_receiver: Any, await_until: Callable[..., Any]
) -> None:
    gate = threading.Event()
    app = Pipeline.bind(Preprocess.bind(gate), Model.bind(), postprocess.bind())
    server = sk.serve(app, port=0, blocking=False, tracing=True)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            traced = asyncio.create_task(
                client.post(
                    server.url + "/classify",
                    json={"text": "one three seven"},
                    headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
                )
            )
            preprocess = lambda: server.handle.status()["deployments"]["Preprocess"]  # noqa: E731
            await await_until(lambda: preprocess()["ongoing"] == 1, "the first request to hold Preprocess")
            queued = asyncio.create_task(client.post(server.url + "/classify", json={"text": "a b"}))
            await await_until(lambda: preprocess()["queued"] == 1, "the second request to queue behind it")
            gate.set()
            first, second = await traced, await queued
    finally:
        server.shutdown()  # every process exports what it buffered before it exits
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    spans = otlp_receiver.trace(TRACE_ID)

    edge = _one(spans, "POST /classify", "server", parent=CLIENT_SPAN)
    assert edge.attributes["http.route"] == "/classify"
    assert edge.attributes["http.response.status_code"] == 200
    assert edge.attributes["servekit.request_id"] == first.headers["x-request-id"]
    ingress = _one(spans, "Pipeline.classify", "server", parent=edge.span_id)
    servers = {}
    for name in ("Preprocess.__call__", "Model.predict", "postprocess.__call__"):
        client_span = _one(spans, name, "client", parent=ingress.span_id)
        servers[name] = _one(spans, name, "server", parent=client_span.span_id)
    model = servers["Model.predict"]
    assert model.attributes["servekit.replica"] == "Model#0"
    assert model.resource["process.pid"] == first.json()["pid"] != edge.resource["process.pid"]

    wait = _one(spans, "batch wait", "internal", parent=model.span_id)
    batch = next(
        s for s in otlp_receiver.spans if s.name == "batch Model.predict" and model.span_id in s.links
    )
    assert wait.links == (batch.span_id,)
    assert batch.attributes["servekit.batch.size"] == len(batch.links)

    other = otlp_receiver.trace(next(s.trace_id for s in otlp_receiver.spans if s.name == "queue Preprocess"))
    other_ingress = _one(other, "Pipeline.classify", "server")
    pre_call = _one(other, "Preprocess.__call__", "client", parent=other_ingress.span_id)
    _one(other, "queue Preprocess", "internal", parent=pre_call.span_id)
    assert not [s for s in spans if s.name.startswith("queue")]  # the first request did not wait
    assert all(s.status != "error" for s in spans + other)


def test_tracing_off_installs_no_layer_and_starts_no_pipeline(
    serve_app: Callable[..., sk.Server], otlp_receiver: Any, client: httpx.Client
) -> None:
    server = serve_app(Pipeline.bind(Preprocess.bind(threading.Event()), Model.bind(), postprocess.bind()))
    assert tracing.active() is None
    middleware = server._front._asgi.app.user_middleware  # type: ignore[attr-defined]
    assert TracingMiddleware not in [layer.cls for layer in middleware]
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    response = client.get(server.url + "/healthz", headers=headers)
    assert response.status_code == 200
    server.shutdown()
    assert otlp_receiver.spans == []


@sk.deployment
class Front:
    def __init__(self, post: sk.DeploymentHandle) -> None:
        self.post = post

    @sk.endpoint("/label", methods=["GET"])
    async def label(self, n: int) -> dict[str, int]:
        return await self.post({"label": n})


def test_a_request_its_caller_did_not_sample_makes_no_span_on_any_hop(
    otlp_receiver: Any, client: httpx.Client
) -> None:
    with sk.serve(Front.bind(postprocess.bind()), port=0, blocking=False, tracing=True) as server:
        unsampled = client.get(
            server.url + "/label", params={"n": 1}, headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-00"}
        )
        sampled = client.get(server.url + "/label", params={"n": 2})
    assert (unsampled.status_code, sampled.status_code) == (200, 200)
    assert otlp_receiver.trace(TRACE_ID) == []
    assert {span.name for span in otlp_receiver.spans} == {
        "GET /label",
        "Front.label",
        "postprocess.__call__",
    }


def test_a_malformed_traceparent_starts_a_trace_of_its_own(otlp_receiver: Any, client: httpx.Client) -> None:
    with sk.serve(Front.bind(postprocess.bind()), port=0, blocking=False, tracing=True) as server:
        responses = [
            client.get(server.url + "/label", params={"n": 1}, headers={"traceparent": header})
            for header in ("garbage", f"00-{'0' * 32}-{CLIENT_SPAN}-01", f"ff-{TRACE_ID}-{CLIENT_SPAN}-01")
        ]
    assert [response.status_code for response in responses] == [200, 200, 200]
    edges = [span for span in otlp_receiver.spans if span.name == "GET /label"]
    assert len(edges) == 3
    assert all(span.parent_id == "" and span.trace_id != TRACE_ID for span in edges)
