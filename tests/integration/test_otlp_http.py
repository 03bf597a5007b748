"""The exporter process's POSTs to a real OTLP/HTTP receiver on 127.0.0.1: the headers, gzip, the
kept-alive connection, retries of a busy collector, no retry of a refused batch, a bounded wait
for an unreachable one."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from servekit._telemetry.otlp_export import ExportError, OtlpHttp

pytestmark = pytest.mark.integration


class _Receiver:
    """Answers each POST with the next status of `statuses` (200 once they run out)."""

    def __init__(self, statuses: list[int]) -> None:
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append((dict(self.headers.items()), body))
                self.send_response(statuses.pop(0) if statuses else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[_Receiver]:
    served = _Receiver(list(getattr(request, "param", [])))
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.mark.parametrize("receiver", [[503, 429]], indirect=True)
def test_a_busy_collector_is_retried_and_the_body_arrives_gzipped_with_the_headers(
    receiver: _Receiver,
) -> None:
    sender = OtlpHttp(receiver.url, {"authorization": "Bearer x"}, compression="gzip", backoff_s=0.01)
    sender.post(b"spans")
    sender.post(b"more")  # over the kept-alive connection
    sender.close()
    assert [gzip.decompress(body) for _, body in receiver.bodies] == [b"spans"] * 3 + [b"more"]
    headers = receiver.bodies[-1][0]
    assert headers["authorization"] == "Bearer x"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_a_refused_batch_is_not_retried(receiver: _Receiver) -> None:
    sender = OtlpHttp(receiver.url, {}, backoff_s=0.01)
    with pytest.raises(ExportError, match="HTTP 400"):
        sender.post(b"spans")
    sender.close()
    assert len(receiver.bodies) == 1


def test_an_unreachable_collector_is_given_up_on_after_the_timeout() -> None:
    with pytest.raises(ExportError, match=r"after 0.2 s .*Connection"):
        OtlpHttp("http://127.0.0.1:9/v1/traces", {}, timeout_s=0.2, backoff_s=0.01).post(b"spans")
