"""Tracing on Ray: one HTTP request through Ray Serve's proxy is one trace across the actors of
its deployments (the context travels in the replica call's arguments), exported by each actor
over real OTLP/HTTP to the test receiver."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from behaviour_support import RayCluster

import servekit as sk

pytestmark = pytest.mark.integration

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "10f067aa0ba902b7"


@sk.deployment
class Tokens:
    def __call__(self, text: str) -> list[str]:
        return text.split()


@sk.deployment
class Counter:
    @sk.batch(max_batch_size=4, max_wait_ms=10)
    async def count(self, items: list[list[str]]) -> list[dict[str, int]]:
        return [{"words": len(item), "pid": os.getpid()} for item in items]


@sk.deployment
class Api:
    def __init__(self, tokens: sk.DeploymentHandle, counter: sk.DeploymentHandle) -> None:
        self.tokens, self.counter = tokens, counter

    @sk.endpoint("/count", methods=["GET"])
    async def count(self, text: str) -> dict[str, int]:
        return await self.counter.count(self.tokens(text))


def test_a_request_through_ray_is_one_trace_across_its_actors(
    ray_cluster: RayCluster, otlp_receiver: Any, wait_until: Callable[..., None]
) -> None:
    app = Api.bind(Tokens.bind(), Counter.bind())
    server = sk.serve(app, port=ray_cluster.http_port, blocking=False, backend="ray", tracing=True)
    try:
        headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
        response = httpx.get(server.url + "/count", params={"text": "a b c"}, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        names = {"GET /count", "Api.count", "Tokens.__call__", "Counter.count", "batch Counter.count"}
        wait_until(
            lambda: names <= {span.name for span in otlp_receiver.trace(TRACE_ID)},
            "the spans of every actor",
            timeout_s=60,
        )
    finally:
        server.shutdown()
    spans = otlp_receiver.trace(TRACE_ID)

    def one(name: str, kind: str, parent: str) -> Any:
        found = [s for s in spans if (s.name, s.kind, s.parent_id) == (name, kind, parent)]
        assert len(found) == 1, (name, kind, [(s.name, s.kind, s.parent_id) for s in spans])
        return found[0]

    edge = one("GET /count", "server", CLIENT_SPAN)
    ingress = one("Api.count", "server", edge.span_id)
    tokens = one("Tokens.__call__", "server", one("Tokens.__call__", "client", ingress.span_id).span_id)
    counter = one("Counter.count", "server", one("Counter.count", "client", ingress.span_id).span_id)
    one("batch wait", "internal", counter.span_id)
    pids = {edge.resource["process.pid"], tokens.resource["process.pid"], counter.resource["process.pid"]}
    assert len(pids) == 3  # three actors
    assert counter.resource["process.pid"] == response.json()["pid"]
    assert "x-request-id" in response.headers
