"""What a default install (`pip install servekit`, no extras) gives: a fast, working server.

Run by `nox -s smoke` in a fresh virtualenv holding servekit alone. It serves a small graph
(a sync stage, a batched stage, a typed endpoint) over real HTTP on 127.0.0.1, with the
standard library as client, and checks the fast stack is the default, metrics and the dashboard
are served (prometheus_client is a default dependency, the page is package data), `/docs` has its
Swagger UI files, and no extra was pulled in.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from pydantic import BaseModel

import servekit as sk


class Req(BaseModel):
    text: str


@sk.deployment
class Words:
    def __call__(self, text: str) -> list[str]:
        return text.split()


@sk.deployment
class Count:
    @sk.batch(max_batch_size=8, max_wait_ms=5)
    async def count(self, items: list[list[str]]) -> list[int]:
        return [len(item) for item in items]


@sk.deployment
class Api:
    def __init__(self, words: sk.DeploymentHandle, count: sk.DeploymentHandle) -> None:
        self.words, self.count = words, count

    @sk.endpoint("/count")
    async def run(self, req: Req) -> dict[str, int]:
        return {"words": await self.count.count(self.words(req.text))}


def post(url: str, body: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def has_swagger_ui(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/docs/swagger-ui-bundle.js", timeout=30) as response:
            return b"SwaggerUIBundle" in response.read()
    except urllib.error.HTTPError:
        return False


def main() -> int:
    problems = []
    with sk.serve(Api.bind(Words.bind(), Count.bind()), port=0, blocking=False) as server:
        status, body = post(server.url + "/count", {"text": "a default install"})
        if (status, body) != (200, {"words": 3}):
            problems.append(f"POST /count answered {status} {body}")
        status, body = post(server.url + "/count", {"txt": 1})
        if status != 422:
            problems.append(f"a bad body answered {status} {body}, not 422")
        with urllib.request.urlopen(str(server.metrics_url), timeout=30) as response:
            metrics = response.read().decode()
        if 'servekit_http_requests_total{method="POST",route="/count",status="200"} 1.0' not in metrics:
            problems.append("/metrics (metrics are on by default) did not count POST /count")
        with urllib.request.urlopen(server.url + "/-/dashboard", timeout=30) as response:
            if b"<canvas" not in response.read():
                problems.append("/-/dashboard did not serve the page the package ships")
        if not has_swagger_ui(server.url):
            problems.append("/docs has no Swagger UI: the default install lacks openapi-ui-bundles")
        loop = type(server.handle._dispatcher.loop).__module__
        if not loop.startswith("uvloop"):
            problems.append(f"the default event loop is {loop}, not uvloop")
    for extra in ("ray", "torch"):
        if extra in sys.modules:
            problems.append(f"serving imported {extra!r}, which the default install must not need")
    for problem in problems:
        print(f"smoke: FAIL: {problem}")
    print("smoke: default install serves correctly" if not problems else "smoke: failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
