"""`serve`'s guard keywords become one checked `GuardOptions`, and the start-up notes say what is guarded."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import servekit as sk
from servekit._http.guards import guard_options, start_notes
from servekit._http.guards.keys import hash_key
from servekit.errors import DeploymentOptionError


def test_keywords_become_options_that_travel_to_a_ray_replica(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys: [{{name: a, hash: '{hash_key('sk_0123456789abcdef0123')}', scopes: [invoke]}}]")
    options = guard_options(keys, "10/s burst 20", ["https://a.example"], 50, 4096, environ={})
    assert options.keys is not None
    assert options.keys.path == str(keys)
    assert options.rate_limit == sk.RateLimit(10, 1, 20)
    assert options.cors == sk.Cors(allow_origins=("https://a.example",))
    assert pickle.loads(pickle.dumps(options)) == options


def test_nothing_configured_is_the_safe_default() -> None:
    options = guard_options(environ={})
    assert (options.keys, options.rate_limit, options.cors) == (None, None, None)
    assert (options.max_header_count, options.max_header_bytes) == (100, 32768)


@pytest.mark.parametrize(
    ("cors", "fault"),
    [
        ("app.example.com", "CORS origin 'app.example.com' is malformed"),
        (["https://a.example/path"], "without a path"),
        (sk.Cors(allow_origin_regex=r"https://.*\.example"), None),
    ],
)
def test_cors_origins_are_checked(cors: object, fault: str | None) -> None:
    if fault is None:
        assert guard_options(cors=cors, environ={}).cors == cors  # type: ignore[arg-type]
        return
    with pytest.raises(DeploymentOptionError, match=fault):
        guard_options(cors=cors, environ={})  # type: ignore[arg-type]


def test_empty_cors_is_no_cors_and_a_cors_needs_an_origin() -> None:
    assert guard_options(cors=[], environ={}).cors is None
    with pytest.raises(DeploymentOptionError, match="CORS needs allow_origins"):
        sk.Cors()


def test_header_limits_must_admit_something() -> None:
    with pytest.raises(DeploymentOptionError, match="must be at least 1"):
        guard_options(max_header_count=0, environ={})


def test_without_keys_the_start_says_the_admin_api_is_local_and_warns_off_localhost() -> None:
    local = start_notes(guard_options(environ={}), "127.0.0.1")
    assert [warning for warning, _ in local] == [False]
    assert "answers only clients on this machine" in local[0][1]
    exposed = start_notes(guard_options(environ={}), "0.0.0.0")
    assert [warning for warning, _ in exposed] == [False, True]
    assert "serving on 0.0.0.0 without API keys" in exposed[1][1]


def test_with_keys_the_start_names_where_they_come_from() -> None:
    document = f"[{{name: a, hash: '{hash_key('sk_0123456789abcdef0123')}', scopes: [admin]}}]"
    notes = start_notes(guard_options(environ={"SERVEKIT_API_KEYS": document}), "0.0.0.0")
    assert notes == [(False, "1 API key from $SERVEKIT_API_KEYS")]
    empty = start_notes(guard_options(environ={"SERVEKIT_API_KEYS": "keys: []"}), "127.0.0.1")
    assert empty == [(True, "$SERVEKIT_API_KEYS holds no API keys: every guarded path answers 401")]
