"""The README's path: `servekit serve examples/classifier/app.py:app`, then curl-like calls."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"statement", "question", "exclamation"}


@pytest.fixture
def example_url(free_port: int, processes: list[subprocess.Popen[str]]) -> str:
    command = [
        sys.executable,
        "-m",
        "servekit",
        "serve",
        "examples/classifier/app.py:app",
        "--port",
        str(free_port),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    processes.append(process)
    url = f"http://127.0.0.1:{free_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the example did not become ready within 60 s")


def test_classify_returns_a_label_and_score(example_url: str) -> None:
    response = httpx.post(f"{example_url}/classify", json={"text": "Is this thing on?"}, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["label"] in LABELS
    assert 0.0 <= body["score"] <= 1.0


def test_bad_input_is_422_naming_the_field(example_url: str) -> None:
    response = httpx.post(f"{example_url}/classify", json={"txt": "hi"}, timeout=10)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["errors"][0]["loc"] == ["body", "text"]


def test_stream_returns_one_result_per_text(example_url: str) -> None:
    texts = ["Hello there.", "Really?", "No way!"]
    with httpx.stream(
        "POST", f"{example_url}/classify/stream", json={"texts": texts}, timeout=10
    ) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 3
    assert all(line["label"] in LABELS for line in lines)


def test_concurrent_requests_are_batched_by_the_classifier(example_url: str) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=20) as client:
            calls = [client.post(f"{example_url}/classify", json={"text": f"text {i}?"}) for i in range(64)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    status = httpx.get(f"{example_url}/-/status", timeout=10).json()
    batching = status["deployments"]["Classifier"]["replicas"][0]["batching"]["predict"]
    assert batching["items"] >= 64
    assert batching["mean_batch_size"] > 1
    assert max(int(size) for size in batching["sizes"]) <= 32


def test_openapi_describes_the_request_and_response_models(example_url: str) -> None:
    document = httpx.get(f"{example_url}/openapi.json", timeout=10).json()
    operation = document["paths"]["/classify"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Req"
    }
    assert {"Req", "Resp"} <= set(document["components"]["schemas"])
