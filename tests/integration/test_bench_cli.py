"""`servekit bench` as a user runs it: a subprocess loading a real server on 127.0.0.1, whose own
counts are the reference for the requests, statuses and open-loop schedule that bench reports.
Runs are short (at most 1 s of load) and nothing here asserts a speed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import Response

import servekit as sk

pytestmark = pytest.mark.integration

StartServer = Callable[..., sk.Server]
BENCH = (sys.executable, "-m", "servekit", "bench")
RUN_DEADLINE_S = 60.0


@sk.deployment
class Counted:
    """Counts what it answers, by route and status; `GET /count` tells."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []

    @sk.endpoint("/hit")
    async def hit(self, body: dict[str, Any]) -> dict[str, bool]:
        self.counts["hit 200"] += 1
        return {"ok": True}

    @sk.endpoint("/flaky", methods=["GET"])
    async def flaky(self) -> Response:
        status = (200, 404, 503)[sum(v for k, v in self.counts.items() if k.startswith("flaky")) % 3]
        self.counts[f"flaky {status}"] += 1
        return Response(b"{}", status, media_type="application/json")

    @sk.endpoint("/v2/models/{model}", methods=["GET"])
    async def metadata(self, model: str) -> dict[str, Any]:
        return {"name": model, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3]}]}

    @sk.endpoint("/v2/models/{model}/infer")
    async def infer(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        self.counts["infer 200"] += 1
        self.bodies.append({"model": model, **body})
        return {"model_name": model, "outputs": []}

    @sk.endpoint("/v1/chat/completions")
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self.counts["chat 200"] += 1
        self.bodies.append(body)
        return {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}

    @sk.endpoint("/stream")
    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
        self.counts["stream 200"] += 1
        for token in ("hel", "lo"):
            yield {"token": token}

    @sk.endpoint("/count", methods=["GET"])
    async def count(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "bodies": self.bodies[-1:]}


def _bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENCH, *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
        cwd=cwd,
        check=False,
    )


def _ran(*args: str, out: Path, cwd: Path | None = None) -> dict[str, Any]:
    done = _bench(*args, "--out", str(out), cwd=cwd)
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def _counts(server: sk.Server) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/count", timeout=10).json()
    return answer


def test_closed_loop_reports_every_request_the_server_answered(
    serve_app: StartServer, tmp_path: Path
) -> None:
    server = serve_app(Counted.bind())
    results = _ran(
        f"{server.url}/hit",
        *("--json", '{"x": [1, 2, 3]}', "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0"),
        *("--plot", str(tmp_path / "plot.html")),
        out=tmp_path / "run.json",
    )
    phases = results["phases"]
    assert [p["label"] for p in phases] == ["c=1", "c=4"]
    assert sum(p["requests"] for p in phases) == _counts(server)["counts"]["hit 200"]
    for phase in phases:
        assert phase["statuses"] == {"200": phase["requests"]}
        assert phase["errors"] == 0
        latency = phase["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert sum(row["requests"] for row in phase["timeline"]) == phase["requests"]
    assert results["method"] == "POST"
    assert results["body_bytes"] == len('{"x": [1, 2, 3]}')
    page = (tmp_path / "plot.html").read_text()
    assert "<svg" in page
    assert "<script" not in page


def test_errors_are_counted_by_status_as_the_server_sent_them(serve_app: StartServer, tmp_path: Path) -> None:
    server = serve_app(Counted.bind())
    done = _bench(
        f"{server.url}/flaky",
        "--concurrency",
        "3",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 0, done.stderr
    phase = json.loads((tmp_path / "r.json").read_text())["phases"][0]
    served = {
        key.split()[1]: count for key, count in _counts(server)["counts"].items() if key.startswith("flaky")
    }
    assert phase["statuses"] == served
    assert set(served) == {"200", "404", "503"}
    assert phase["errors"] == served["404"] + served["503"]
    assert f"404x{served['404']} 503x{served['503']}" in done.stdout


def test_open_loop_sends_the_scheduled_requests_from_several_processes(
    serve_app: StartServer, tmp_path: Path
) -> None:
    server = serve_app(Counted.bind())
    results = _ran(
        f"{server.url}/hit",
        *("--json", "{}", "--rate", "200", "--duration", "1", "--warmup", "0", "--connections", "4"),
        *("--processes", "2"),
        out=tmp_path / "open.json",
    )
    phase = results["phases"][0]
    assert results["processes"] == 2
    assert phase["mode"] == "open"
    assert phase["requests"] == _counts(server)["counts"]["hit 200"]
    assert phase["requests"] + phase["unsent"] == 200  # rate x duration, each sent or reported unsent
    assert phase["send_lag_ms"]["max"] is not None


def test_compare_divides_b_by_a(serve_app: StartServer, tmp_path: Path) -> None:
    server = serve_app(Counted.bind())
    a = _ran(
        f"{server.url}/hit",
        "--json",
        "{}",
        "--concurrency",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        out=tmp_path / "a.json",
    )
    b = json.loads(json.dumps(a))
    b["phases"][0]["rps"] = a["phases"][0]["rps"] * 2
    b["phases"][0]["latency_ms"]["p99"] = a["phases"][0]["latency_ms"]["p99"] * 3
    (tmp_path / "b.json").write_text(json.dumps(b))
    done = _bench("--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("c=2")).split()
    assert (row[3], row[4], row[6]) == ("2.000", "1.000", "3.000")


APP_SOURCE = """
import servekit as sk

@sk.deployment
class Echo:
    @sk.endpoint("/echo")
    async def echo(self, body: dict) -> dict:
        return body

app = Echo.bind()
"""


def test_a_module_app_target_is_started_loaded_and_stopped(tmp_path: Path) -> None:
    (tmp_path / "echo_app.py").write_text(APP_SOURCE)
    results = _ran(
        "echo_app:app",
        *(
            "--path",
            "/echo",
            "--json",
            '{"a": 1}',
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ),
        out=tmp_path / "app.json",
        cwd=tmp_path,
    )
    phase = results["phases"][0]
    assert phase["requests"] > 0
    assert phase["statuses"] == {"200": phase["requests"]}
    target = httpx.URL(results["target"])
    assert target.path == "/echo"
    with socket.socket() as sock:  # the app was stopped after the run
        assert sock.connect_ex((target.host, target.port)) != 0


def test_templates_build_oip_and_openai_requests(serve_app: StartServer, tmp_path: Path) -> None:
    server = serve_app(Counted.bind())
    common = ("--concurrency", "1", "--duration", "0.2", "--warmup", "0")
    _ran(
        server.url,
        "--template",
        "oip",
        "--model",
        "resnet",
        "--shape",
        "2",
        *common,
        out=tmp_path / "oip.json",
    )
    seen = _counts(server)["bodies"][-1]
    assert seen["model"] == "resnet"
    assert [(t["name"], t["shape"], t["datatype"], len(t["data"])) for t in seen["inputs"]] == [
        ("pixels", [2, 3], "FP32", 6)
    ]
    _ran(
        server.url,
        "--template",
        "openai",
        "--model",
        "llm",
        "--prompt",
        "hi",
        *common,
        out=tmp_path / "ai.json",
    )
    seen = _counts(server)["bodies"][-1]
    assert seen == {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def test_a_streamed_response_reports_the_time_to_its_first_byte(
    serve_app: StartServer, tmp_path: Path
) -> None:
    server = serve_app(Counted.bind())
    done = _bench(
        *(f"{server.url}/stream", "--template", "openai", "--model", "llm", "--stream"),
        *("--concurrency", "1", "--duration", "0.2", "--warmup", "0", "--out", str(tmp_path / "s.json")),
    )
    assert done.returncode == 0, done.stderr
    assert "ttfb p50" in done.stdout
    phase = json.loads((tmp_path / "s.json").read_text())["phases"][0]
    assert phase["requests"] == _counts(server)["counts"]["stream 200"]
    assert 0 < phase["first_byte_ms"]["p50"] <= phase["latency_ms"]["max"]
    assert phase["first_byte_ms"]["max"] <= phase["latency_ms"]["max"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("http://127.0.0.1:9/x",), 1, "cannot connect to 127.0.0.1:9"),
        (("http://127.0.0.1:9/x", "--json", "{nope"), 2, "--json is not valid JSON"),
        (("http://127.0.0.1:9/x", "--template", "oip"), 2, "--template oip needs --model"),
        (("http://127.0.0.1:9/x", "--concurrency", "0"), 2, "--concurrency values must be above 0"),
        (("http://127.0.0.1:9/x", "--method", "head"), 2, "--method HEAD is not supported"),
        (
            ("http://127.0.0.1:9/x", "--rate", "5", "--connections", "0"),
            2,
            "--connections must be at least 1",
        ),
        (("no_such_module_here:app", "--duration", "0.2"), 1, "no module named 'no_such_module_here'"),
        ((), 2, "give a target"),
    ],
)
def test_bad_runs_fail_with_one_clear_line(
    args: tuple[str, ...], code: int, message: str, tmp_path: Path
) -> None:
    done = _bench(*args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_bench_example_sweeps_its_app_and_writes_a_report(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "bench" / "run.py"
    done = subprocess.run(
        [sys.executable, str(example), "--duration", "0.3", "--warmup", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = {
        line.split(":")[0]: line for line in done.stdout.splitlines() if line.startswith(("c=", "report"))
    }
    assert {"c=1", "c=8", "c=32", "report"} <= set(lines)
    assert all(lines[label].endswith("errors 0") for label in ("c=1", "c=8", "c=32"))
    assert "<svg" in (tmp_path / "report.html").read_text()
    assert [p["label"] for p in json.loads((tmp_path / "results.json").read_text())["phases"]] == [
        "c=1",
        "c=8",
        "c=32",
    ]
