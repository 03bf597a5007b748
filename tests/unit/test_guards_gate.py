"""The guard layer in-process (httpx's ASGI transport, an injected clock): header limits, every way
a key can be wrong, scopes, the admin API on localhost without keys, and rate-limit responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servekit._http.guards import GuardOptions, guard_layers
from servekit._http.guards.gate import Gate
from servekit._http.guards.keys import KeySource, hash_key
from servekit._http.guards.ratelimit import RateLimit

APP_KEY = "sk_unit_invoke_key_000000000001"
ADMIN_KEY = "sk_unit_admin_key_0000000000001"
OLD_KEY = "sk_unit_expired_key_00000000001"
NOW = 1_900_000_000.0  # the wall clock the gate sees
KEYS = {
    "keys": [
        {"name": "app", "hash": hash_key(APP_KEY), "scopes": ["invoke:/predict*"]},
        {
            "name": "ops",
            "hash": hash_key(ADMIN_KEY),
            "scopes": ["admin", "metrics"],
            "rate_limit": "1/h burst 2",
        },
        {"name": "old", "hash": hash_key(OLD_KEY), "scopes": ["invoke"], "expires": "2030-01-01T00:00:00Z"},
    ]
}


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "authorization": request.headers.get("authorization")})


PATHS = [
    "/predict",
    "/other",
    "/healthz",
    "/-/status",
    "/-/jobs",
    "/-/jobs/{id}",
    "/metrics",
    "/openapi.json",
]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guarded(options: GuardOptions, clock: Clock | None = None, copies: int = 1) -> Starlette:
    layers = [
        Middleware(Gate, options=options, copies=copies, clock=clock or Clock(), wall_clock=lambda: NOW)
        if layer.cls is Gate
        else layer
        for layer in guard_layers(options, copies)
    ]
    return Starlette(routes=[Route(p, echo, methods=["GET", "POST"]) for p in PATHS], middleware=layers)


def with_keys(**options: object) -> GuardOptions:
    return GuardOptions(keys=KeySource("keys.json", json.dumps(KEYS)), **options)  # type: ignore[arg-type]


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async with client(guarded(with_keys())) as http:
        yield http


def client(app: Starlette, host: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(host, 5000)), base_url="http://test")


def error_of(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "/predict needs an API key; send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"),
        ({"authorization": "Bearer"}, "the API key is empty"),
        ({"authorization": "Bearer    "}, "the API key is empty"),
        ({"authorization": f"Basic {APP_KEY}"}, "the Authorization scheme 'Basic' is not supported"),
        ({"authorization": APP_KEY}, f"the Authorization scheme '{APP_KEY[:20]}' is not supported"),
        (
            {"authorization": "Bearer sk_not_a_known_key_000000"},
            "the API key is not valid (unknown or revoked)",
        ),
        ({"x-api-key": APP_KEY[:-1]}, "the API key is not valid"),
        ({"x-api-key": "sk_with a_space_in_it_000000"}, "the API key is malformed"),
        ({"x-api-key": "sk_" + "x" * 600}, "the API key is malformed"),
        ({"x-api-key": "sk_ключ_0000000000000000".encode()}, "the API key is malformed"),
        ({"x-api-key": OLD_KEY}, "API key 'old' has expired; ask for a new one"),
        ({"x-api-key": APP_KEY, "authorization": f"Bearer {ADMIN_KEY}"}, "two different API keys"),
    ],
)
async def test_a_missing_wrong_expired_or_malformed_key_gets_401(
    keyed: httpx.AsyncClient, headers: dict[str, str | bytes], message: str
) -> None:
    response = await keyed.post("/predict", headers=headers)
    assert response.status_code == 401
    assert error_of(response)["type"] == "unauthorized"
    assert message in error_of(response)["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="servekit"')
    assert ("invalid_token" in challenge) is bool(headers)


async def test_repeated_key_headers_get_401(keyed: httpx.AsyncClient) -> None:
    headers = [("x-api-key", APP_KEY), ("x-api-key", APP_KEY)]
    response = await keyed.post("/predict", headers=headers)
    assert response.status_code == 401
    assert "repeats a key header" in error_of(response)["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {APP_KEY}"},
        {"authorization": f"bearer   {APP_KEY}  "},
        {"x-api-key": APP_KEY},
        {"x-api-key": APP_KEY, "authorization": f"Bearer {APP_KEY}"},
    ],
)
async def test_the_key_is_accepted_in_either_header(
    keyed: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    assert (await keyed.post("/predict", headers=headers)).status_code == 200


async def test_with_x_api_key_another_authorization_scheme_is_left_to_the_app(
    keyed: httpx.AsyncClient,
) -> None:
    response = await keyed.post("/predict", headers={"x-api-key": APP_KEY, "authorization": "Basic dXNlcg=="})
    assert response.status_code == 200
    assert response.json()["authorization"] == "Basic dXNlcg=="


async def test_a_key_without_the_scope_gets_403_naming_it(keyed: httpx.AsyncClient) -> None:
    response = await keyed.get("/-/status", headers={"x-api-key": APP_KEY})
    assert response.status_code == 403
    assert error_of(response) == {
        "type": "forbidden",
        "message": "API key 'app' may not call /-/status: it needs the 'admin' scope (it has invoke:/predict*)",
    }
    assert 'error="insufficient_scope", scope="admin"' in response.headers["www-authenticate"]
    other = await keyed.post("/other", headers={"x-api-key": APP_KEY})
    assert other.status_code == 403
    assert 'scope="invoke:/other"' in other.headers["www-authenticate"]


async def test_health_and_public_paths_need_no_key_but_a_wrong_one_is_still_refused(
    keyed: httpx.AsyncClient,
) -> None:
    assert (await keyed.get("/healthz")).status_code == 200
    assert (await keyed.get("/healthz", headers={"x-api-key": "sk_wrong_but_ignored_000"})).status_code == 200
    assert (await keyed.get("/openapi.json")).status_code == 200
    assert (await keyed.get("/openapi.json", headers={"x-api-key": APP_KEY})).status_code == 200
    assert (
        await keyed.get("/openapi.json", headers={"x-api-key": "sk_wrong_000000000000"})
    ).status_code == 401


async def test_jobs_are_open_to_invoking_keys_and_the_listing_to_admin_keys(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.get("/-/jobs/{id}", headers={"x-api-key": APP_KEY})).status_code == 200
    assert (await keyed.get("/-/jobs", headers={"x-api-key": APP_KEY})).status_code == 403
    assert (await keyed.get("/-/jobs", headers={"x-api-key": ADMIN_KEY})).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
async def test_without_keys_the_admin_api_answers_this_machine(host: str) -> None:
    async with client(guarded(GuardOptions()), host) as http:
        assert (await http.get("/-/status")).status_code == 200


@pytest.mark.parametrize("host", ["203.0.113.7", "10.0.0.2", "::ffff:10.0.0.2", "2001:db8::1", "not-an-ip"])
async def test_without_keys_the_admin_api_refuses_other_machines_with_a_clear_message(host: str) -> None:
    async with client(guarded(GuardOptions()), host) as http:
        response = await http.get("/-/status")
        assert response.status_code == 403
        assert (
            "answers only clients on this machine while no API keys are configured"
            in error_of(response)["message"]
        )
        assert "www-authenticate" not in response.headers
        for path in ["/predict", "/healthz", "/-/jobs/{id}", "/metrics", "/openapi.json"]:
            assert (await http.get(path)).status_code == 200, path


async def test_without_keys_authorization_headers_are_the_apps() -> None:
    async with client(guarded(GuardOptions())) as http:
        response = await http.post("/predict", headers={"authorization": "Basic dXNlcg=="})
        assert response.json()["authorization"] == "Basic dXNlcg=="


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([(f"x-h{n}", "v") for n in range(101)], "the request has 10"),
        ([("x-big", "v" * 40_000)], "the request's headers take"),
    ],
)
async def test_too_many_or_too_large_headers_get_431(headers: list[tuple[str, str]], message: str) -> None:
    async with client(guarded(GuardOptions())) as http:
        response = await http.get("/predict", headers=headers)
        assert response.status_code == 431
        assert error_of(response)["type"] == "request_header_fields_too_large"
        assert message in error_of(response)["message"]
    async with client(guarded(GuardOptions(max_header_count=200, max_header_bytes=50_000))) as http:
        assert (await http.get("/predict", headers=headers)).status_code == 200


async def test_a_client_over_its_rate_gets_429_and_every_answer_carries_the_headers() -> None:
    clock = Clock()
    app = guarded(GuardOptions(rate_limit=RateLimit.parse("1/s burst 3")), clock)
    async with client(app, "203.0.113.1") as first, client(app, "203.0.113.2") as second:
        answers = [await first.get("/predict") for _ in range(5)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
        assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
        assert all(r.headers["ratelimit-limit"] == "3" for r in answers)
        refused = answers[-1]
        assert refused.headers["retry-after"] == "1"
        assert error_of(refused)["message"] == (
            "rate limit exceeded for client 203.0.113.1 (1/s burst 3); retry after 1 s"
        )
        assert refused.json()["error"]["retry_after_s"] == pytest.approx(1.0)
        assert (await second.get("/predict")).status_code == 200
        clock.now = 1.0
        assert (await first.get("/predict")).status_code == 200
        assert (await first.get("/healthz")).status_code == 200  # probes are never limited
        assert "ratelimit-limit" not in (await first.get("/healthz")).headers


async def test_a_keys_own_limit_wins_and_buckets_are_per_key() -> None:
    app = guarded(with_keys(rate_limit=RateLimit.parse("100/s")))
    async with client(app, "203.0.113.1") as one, client(app, "203.0.113.2") as two:
        ops = [await c.get("/-/status", headers={"x-api-key": ADMIN_KEY}) for c in (one, two, one)]
        assert [r.status_code for r in ops] == [200, 200, 429]  # 'ops' has 1/h burst 2, from any address
        assert "for API key 'ops' (1/h burst 2); retry after 3600 s" in error_of(ops[-1])["message"]
        answered = await one.post("/predict", headers={"x-api-key": APP_KEY})
        assert answered.headers["ratelimit-limit"] == "100"


async def test_each_of_several_edges_enforces_its_share() -> None:
    app = guarded(GuardOptions(rate_limit=RateLimit.parse("10/h burst 6")), copies=3)
    async with client(app) as http:
        codes = [(await http.get("/predict")).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]


async def test_a_refused_websocket_is_closed_before_it_is_accepted() -> None:
    gate = Gate(guarded(GuardOptions()), with_keys())
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/predict", "headers": [], "client": ("127.0.0.1", 1)}
    await gate(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": sent[0]["reason"]}]
    assert "needs an API key" in str(sent[0]["reason"])


async def test_cors_preflight_is_answered_before_the_key_check_and_refusals_carry_cors() -> None:
    app = guarded(with_keys(cors=_cors()))
    async with client(app) as http:
        preflight = await http.options(
            "/predict",
            headers={
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = await http.post("/predict", headers={"origin": "https://app.example.com"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in refused.headers["access-control-expose-headers"]
        stranger = await http.options(
            "/predict", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
        assert stranger.status_code == 400


def _cors() -> object:
    from servekit._http.guards.cors import cors_of

    return cors_of(["https://app.example.com"])


async def test_refusals_count_against_the_clients_address() -> None:
    app = guarded(with_keys(rate_limit=RateLimit.parse("1/h burst 3")))
    async with client(app, "203.0.113.1") as prober, client(app, "203.0.113.2") as other:
        wrong = {"x-api-key": "sk_guessing_0000000000000000"}
        codes = [(await prober.post("/predict", headers=wrong)).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        assert (
            await prober.post("/predict", headers={"x-api-key": APP_KEY})
        ).status_code == 200  # the key's bucket
        assert (await other.post("/predict", headers=wrong)).status_code == 401
