"""The example scripts the docs include run, and print what the docs say they print."""

from __future__ import annotations

import ast
import json
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import servekit as sk

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

StartServer = Callable[..., sk.Server]


def run_example(name: str) -> dict[str, str]:
    """Run `examples/<name>` as a script; its output lines as {label: value} (split at ': ')."""
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = [line.partition(": ") for line in completed.stdout.splitlines() if ": " in line]
    return {label.strip(): value for label, _, value in lines}


def test_handles_example_shows_every_call_style() -> None:
    out = run_example("handles.py")
    assert out[".result()"] == "5"
    assert out["for"] == "['SYNC', 'CODE', 'ITERATES', 'TOO']"
    assert out["await"] == "3"
    assert out["gather"] == "[1, 2, 3]"
    assert out["async for"] == "['STREAMS', 'CROSS', 'DEPLOYMENTS']"
    assert out["direct"] == "2"
    assert out["error"] == "ValueError - deployment 'Counter': nothing to count"


def test_batching_example_forms_batches_and_fails_only_the_bad_item() -> None:
    out = run_example("batching.py")
    assert out["a lone call"] == "49"
    assert ast.literal_eval(out["20 concurrent calls"]) == [x * x for x in range(20)]
    lone, *concurrent = ast.literal_eval(out["batch sizes"])
    assert lone == 1
    assert sum(concurrent) == 20
    assert max(concurrent) <= 8  # max_batch_size
    assert len(concurrent) < 20  # concurrent calls shared batches
    assert ast.literal_eval(out["one bad item"]) == [
        9,
        "ValueError: deployment 'Squarer': cannot square -1: negative",
        16,
    ]
    assert ast.literal_eval(out["batched streams"]) == [[1], [1, 2, 3], [1, 2]]
    stats = ast.literal_eval(out["stats"])
    assert stats["items"] == 24
    assert stats["queued"] == 0


def test_http_api_example_answers_with_the_documented_statuses() -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "http_api.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    for line in [
        "GET /items/1?currency=USD -> 200",
        '{"name":"tea","price":3.5,"currency":"USD"}',
        '{"id":1,"name":"tea","price":3.5}\n    {"id":2,"name":"cake","price":4.0}',
        'data: {"id":1,"name":"tea","price":3.5}',
        '{"size":100,"content_type":"image/png"}',
        "GET /items/7 -> 404",
        "GET /items/seven -> 422",
        '"loc":["path","item_id"]',
        '"loc":["body","price"]',
        "POST /items -> 400",
        "DELETE /items/1 -> 405",
        "PUT /upload -> 413",
        '"limit_bytes":1024',
        '{"ready":true,"state":"running"}',
    ]:
        assert line in out


def test_getting_started_snippet_is_the_real_422_body(serve_app: StartServer, client: httpx.Client) -> None:
    app = runpy.run_path(str(EXAMPLES / "hello.py"))["app"]
    server = serve_app(app)
    response = client.post(f"{server.url}/hello", json={"nom": "Ada"})
    assert response.status_code == 422
    snippet = json.loads((ROOT / "docs" / "snippets" / "hello-422.json").read_text())
    assert response.json() == snippet


def test_getting_started_hello_answers_in_process() -> None:
    namespace = runpy.run_path(str(EXAMPLES / "hello.py"))
    with sk.run(namespace["app"]) as h:
        assert h.hello(namespace["Greeting"](name="Ada")).result(timeout=10) == {"message": "hello, Ada"}


def test_routing_example_splits_switches_and_credits_outcomes() -> None:
    out = run_example("routing.py")
    assert out["labels"] == "['positive']"
    assert ast.literal_eval(out["calls per arm"]) == {"v1": 18, "v2": 2}  # 90/10, exactly
    assert out["x-request-id present"] == "True"
    assert out["bad weights"].startswith("400 ")
    assert "negative" in out["bad weights"]
    assert sorted(set(ast.literal_eval(out["after 50/50"]))) == ["negative", "positive"]
    assert ast.literal_eval(out["switched weights"]) == {"v1": 0.0, "v2": 1.0}
    assert ast.literal_eval(out["back to"]) == {"v1": 50.0, "v2": 50.0}
    assert ast.literal_eval(out["outcome credited to"])["sentiment"] in {"v1", "v2"}
    assert out["shadow agreement"] == "True"


def test_model_store_example_promotes_and_rolls_back_live(free_port: int) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "model_store" / "demo.py"), str(free_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = dict(line.partition(": ")[::2] for line in completed.stdout.splitlines())
    assert json.loads(lines["production=v1"]) == {"label": "neutral", "score": 0, "model_version": "v1"}
    assert json.loads(lines["production=v2"]) == {"label": "negative", "score": -2, "model_version": "v2"}
    assert json.loads(lines["production=v1 again"])["model_version"] == "v1"
    assert lines["rollback"] == "sentiment:production -> v1 (rolled back)"


def test_canary_example_rolls_a_worse_v2_back_and_promotes_an_equal_one() -> None:
    out = run_example("canary/app.py")
    assert out["worse v2 (misses 'great' and 'fine')"] == "rolled_back"
    assert out["equal v2"] == "completed"
    readme = (EXAMPLES / "canary" / "README.md").read_text()
    assert "canary v1 -> v2: rolled_back" in readme
    assert "canary v1 -> v2: completed" in readme


def test_tracing_example_prints_one_trace_across_the_process_replica_and_the_batch() -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "observability" / "tracing.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    tree = completed.stdout.splitlines()[2:]
    assert tree == [
        "POST /classify [server]",
        "  Pipeline.classify [server]",
        "    Model.predict [client]",
        "      Model.predict [server]",
        "        batch Model.predict [internal] (linked to 1)",
        "        batch wait [internal] (linked to 1)",
        "    Preprocess.__call__ [client]",
        "      Preprocess.__call__ [server]",
        "    postprocess.__call__ [client]",
        "      postprocess.__call__ [server]",
    ]
    logged = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
    access = next(line for line in logged if line["logger"] == "servekit.access")
    assert access["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (
        next(line for line in logged if line["deployment"] == "Preprocess")["request_id"]
        == access["request_id"]
    )


def test_observability_example_counts_its_traffic_on_metrics() -> None:
    out = run_example("observability/app.py")
    assert out["requests counted"] == "200"
    assert ast.literal_eval(out["classifier calls"]) == {"v1": 180, "v2": 20}
    assert sum(ast.literal_eval(out["predictions by label"]).values()) == 200
    assert float(out["mean batch size"]) >= 1
    assert out["replicas running"] == "3"
    assert out["dashboard"].endswith("/-/dashboard")
