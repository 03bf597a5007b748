"""One request traced across preprocess -> model (a worker process, batched) -> postprocess.

`python examples/observability/tracing.py` starts a small OTLP/HTTP receiver (where an
OpenTelemetry Collector or Jaeger would listen), serves the app with `tracing=True`,
`log_format="json"` and the access log, sends one request that carries a W3C `traceparent`, and
prints the trace as a tree. With a real collector:

    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 \
        servekit serve examples/observability/tracing.py:app --tracing --log-format json --access-log
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

import servekit as sk

log = logging.getLogger("tracing_example")


class Req(BaseModel):
    text: str


@sk.deployment
class Preprocess:
    def __call__(self, text: str) -> list[float]:
        log.info("preprocessing %d characters", len(text))  # carries the request and trace ids
        return [float(len(word)) for word in text.split()]


@sk.deployment(isolation="process")  # its own worker process: the trace follows it there
class Model:
    @sk.batch(max_batch_size=8, max_wait_ms=5)
    async def predict(self, rows: list[list[float]]) -> list[int]:
        return [int(sum(row)) for row in rows]


@sk.deployment
def postprocess(label: int) -> dict[str, int]:
    return {"label": label}


@sk.deployment
class Pipeline:
    def __init__(
        self, pre: sk.DeploymentHandle, model: sk.DeploymentHandle, post: sk.DeploymentHandle
    ) -> None:
        self.pre, self.model, self.post = pre, model, post

    @sk.endpoint("/classify")
    async def classify(self, req: Req) -> dict[str, int]:
        return await self.post(self.model.predict(self.pre(req.text)))


app = Pipeline.bind(Preprocess.bind(), Model.bind(), postprocess.bind())

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"  # as if the client's own tracing had started it


def print_tree(spans: list, parent: str, depth: int = 0) -> None:
    for span in sorted((s for s in spans if s.parent_id == parent), key=lambda s: s.name):
        linked = f" (linked to {len(span.links)})" if span.links else ""
        print(f"{'  ' * depth}{span.name} [{span.kind}]{linked}")
        print_tree(spans, span.span_id, depth + 1)


def main() -> None:
    import httpx
    from otlp_receiver import OtlpReceiver  # beside this file

    receiver = OtlpReceiver()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    with sk.serve(app, port=0, blocking=False, tracing=True, log_format="json", access_log=True) as server:
        headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        response = httpx.post(server.url + "/classify", json={"text": "to be or not"}, headers=headers)
        print("response:", response.json(), "x-request-id:", response.headers["x-request-id"])
    # the server has stopped: every process exported its spans on the way out
    spans = [span for span in receiver.spans if span.trace_id == TRACE_ID]
    print(f"trace {TRACE_ID}: {len(spans)} spans")
    print_tree(spans, "00f067aa0ba902b7")
    receiver.close()


if __name__ == "__main__":
    main()
