"""The pure parts of async jobs and batch scoring: retry delays, signatures, headers, mappings."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

import servekit as sk
from servekit._http.jobs import decode_request, encode_request, wants_async
from servekit._replica.jobs import store as store_module
from servekit._replica.jobs.records import JobRecord, retry_delay_s, should_retry
from servekit._replica.jobs.webhook import deliver, signature
from servekit._runtime.batch.calls import output_row, parse_mapping
from servekit._runtime.batch.inputs import Malformed, count_rows, read_chunks
from servekit.errors import DeploymentOptionError, JobStoreError


@pytest.mark.parametrize(("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (10, 60.0)])
def test_retry_delays_double_up_to_the_cap(attempt: int, expected: float) -> None:
    assert retry_delay_s(attempt, backoff_s=0.5, max_backoff_s=60.0) == expected


def test_only_retryable_failures_with_attempts_left_run_again() -> None:
    assert should_retry(1, 3, retryable=True)
    assert not should_retry(3, 3, retryable=True)
    assert not should_retry(1, 3, retryable=False)


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    expected = hmac.new(b"key", b'{"a":1}', hashlib.sha256).hexdigest()
    assert signature("key", b'{"a":1}') == f"sha256={expected}"


async def test_a_webhook_is_retried_until_accepted_and_signed() -> None:
    seen: list[dict[str, str]] = []

    def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        seen.append(headers)
        return 503 if len(seen) < 3 else 200

    assert await deliver("http://hook", b"{}", "key", attempts=5, backoff_s=0.0, post=post)
    assert len(seen) == 3
    assert seen[0]["X-Servekit-Signature"] == signature("key", b"{}")
    assert not await deliver("http://hook", b"{}", None, attempts=2, backoff_s=0.0, post=lambda *a: 500)


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ("respond-async", True),
        ("wait=10, respond-async", True),
        ("Respond-Async; wait=5", True),
        ("return=minimal", False),
    ],
)
def test_prefer_respond_async_is_read_from_the_header(prefer: str, expected: bool) -> None:
    request = Request({"type": "http", "headers": [(b"prefer", prefer.encode())]})
    assert wants_async(request) is expected


async def test_a_stored_request_reads_back_as_it_came() -> None:
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/items/3", "query_string": b"q=1",
        "headers": [(b"content-type", b"application/json")], "path_params": {"item_id": "3"},
    }  # fmt: skip
    again = decode_request(encode_request(Request(scope), b'{"a": "\\n"}'))
    assert (again.method, again.url.path, again.query_params["q"]) == ("POST", "/items/3", "1")
    assert again.path_params == {"item_id": "3"}
    assert again.headers["content-type"] == "application/json"
    assert json.loads(await again.body()) == {"a": "\n"}


def test_the_status_document_has_iso_times_and_links() -> None:
    record = JobRecord("j1", "http", "POST /x", "queued", 0, 0, 1, 0.0, 0.0)
    document = record.to_dict()
    assert document["created_at"] == "1970-01-01T00:00:00+00:00"
    assert document["links"] == {"self": "/-/jobs/j1", "result": "/-/jobs/j1/result"}


def test_a_full_disk_is_refused_before_the_store_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1024})())
    with pytest.raises(JobStoreError, match="has 1 KiB free"):
        store_module.check_data_dir(tmp_path / "data")


def test_job_options_are_checked() -> None:
    with pytest.raises(ValueError, match="retries"):
        sk.JobOptions(retries=-1)
    with pytest.raises(DeploymentOptionError, match="mode must be 'sync' or 'async'"):
        sk.endpoint("/x", mode="later")  # type: ignore[arg-type]


def test_mappings_and_output_rows() -> None:
    assert parse_mapping(["review=text", "n=stars"]) == {"review": "text", "n": "stars"}
    with pytest.raises(DeploymentOptionError, match="COLUMN=FIELD"):
        parse_mapping(["review"])
    assert output_row(3, {"y": 1}) == {"row": 3, "y": 1}
    assert output_row(4, 0.5) == {"row": 4, "result": 0.5}


def test_jsonl_chunks_have_a_fixed_size_and_malformed_lines_stay_in_place(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text('{"a": 1}\n[1]\n{"a": 3}\n\n{"a": 5}')
    chunks = list(read_chunks(source, 2))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert chunks[0][1] == Malformed("line 2 is not a JSON object")
    assert chunks[1][1] == Malformed("line 4 is empty")
    assert count_rows(source) == 5
