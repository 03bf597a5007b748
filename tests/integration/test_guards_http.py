"""Guards over real HTTP: who may call every class of route with which key, keys reloaded without
a restart, a flood refused while a calm client is served, CORS, TLS, header limits, and the admin
API kept to this machine when no keys are configured.

Clients on 127.0.0.1 stand for other machines with ``X-Forwarded-For``: uvicorn trusts it from
127.0.0.1 (its default ``forwarded_allow_ips``), as it would from a reverse proxy on this machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import servekit as sk
from servekit._http.guards.keyfile import create_key, revoke_key

pytestmark = pytest.mark.integration

KEYS = {
    "invoke": "sk_http_invoke_predict_key_00000001",
    "admin": "sk_http_admin_key_000000000000000001",
    "metrics": "sk_http_metrics_key_0000000000000001",
    "expired": "sk_http_expired_key_0000000000000001",
}


@sk.deployment
class Arm:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def __call__(self, x: int) -> str:
        return self.tag


class Payload(BaseModel):
    x: int


@sk.deployment
class Api:
    def __init__(self, arm: sk.DeploymentHandle) -> None:
        self.arm = arm

    @sk.endpoint("/predict")
    async def predict(self, payload: Payload) -> dict[str, str]:
        return {"arm": await self.arm(payload.x)}

    @sk.endpoint("/embed")
    async def embed(self, payload: Payload) -> list[int]:
        return [payload.x]

    @sk.endpoint("/later", mode="async")
    async def later(self, payload: Payload) -> int:
        return payload.x


def guarded_app() -> sk.Application:
    arms = {"a": Arm.options(name="ArmA").bind("a"), "b": Arm.options(name="ArmB").bind("b")}
    return Api.bind(sk.split(arms, weights={"a": 50, "b": 50}, name="clf"))


def keys_file(path: Path) -> Path:
    from servekit._http.guards.keys import hash_key

    entries = [
        {"name": "invoke", "hash": hash_key(KEYS["invoke"]), "scopes": ["invoke:/predict*", "invoke:/later"]},
        {"name": "admin", "hash": hash_key(KEYS["admin"]), "scopes": ["admin"]},
        {"name": "metrics", "hash": hash_key(KEYS["metrics"]), "scopes": ["metrics"]},
        {
            "name": "expired",
            "hash": hash_key(KEYS["expired"]),
            "scopes": ["invoke", "admin"],
            "expires": "2020-01-01",
        },
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sk.Server]:
    """The app behind keys, a generous rate limit and CORS for one origin."""
    path = keys_file(tmp_path_factory.mktemp("keys") / "keys.json")
    server = sk.serve(
        guarded_app(),
        port=0,
        blocking=False,
        api_keys=path,
        rate_limit="1000/s burst 1000",
        cors="https://app.example.com",
    )
    yield server
    server.shutdown(grace_s=2)


OK = "ok"
"""Served: 2xx for a route of this branch; for one another branch adds (metrics, docs, dashboard),
anything but 401/403 (404 until it lands)."""

# (method, path, body, in this branch, {credential: expected}); credentials not listed get 401.
POLICY = {
    "app": {"invoke": OK, "admin": 403, "metrics": 403},
    "app-unscoped": {"invoke": 403, "admin": 403, "metrics": 403},
    "admin": {"invoke": 403, "admin": OK, "metrics": 403},
    "metrics": {"invoke": 403, "admin": 403, "metrics": OK},
    "job": {"invoke": OK, "admin": OK, "metrics": 403},
    "public": {"none": OK, "invoke": OK, "admin": OK, "metrics": OK},
    "health": dict.fromkeys(["none", "invoke", "admin", "metrics", "wrong", "expired", "malformed"], OK),
}
ROUTES = [
    ("POST", "/predict", {"x": 1}, True, "app"),
    ("POST", "/embed", {"x": 1}, True, "app-unscoped"),
    ("POST", "/later", {"x": 1}, True, "app"),
    ("GET", "/healthz", None, True, "health"),
    ("GET", "/readyz", None, True, "health"),
    ("GET", "/-/healthz", None, False, "health"),
    ("GET", "/-/readyz", None, False, "health"),
    ("GET", "/openapi.json", None, True, "public"),
    ("GET", "/docs", None, True, "public"),
    ("GET", "/-/status", None, True, "admin"),
    ("GET", "/-/routers", None, True, "admin"),
    ("GET", "/-/routers/clf", None, True, "admin"),
    ("POST", "/-/routers/clf/weights", {"weights": {"a": 50, "b": 50}}, True, "admin"),
    ("GET", "/-/rollouts", None, True, "admin"),
    ("GET", "/-/jobs", None, True, "admin"),
    ("GET", "/-/jobs/{job}", None, True, "job"),
    ("GET", "/-/dashboard", None, True, "admin"),
    ("GET", "/metrics", None, True, "metrics"),
]
CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "invoke": {"authorization": f"Bearer {KEYS['invoke']}"},
    "admin": {"x-api-key": KEYS["admin"]},
    "metrics": {"authorization": f"Bearer {KEYS['metrics']}"},
    "wrong": {"authorization": "Bearer sk_http_unknown_key_00000000000001"},
    "expired": {"x-api-key": KEYS["expired"]},
    "malformed": {"authorization": f"Token {KEYS['admin']}"},
}
CASES = [
    pytest.param(
        method, path, body, here, credential, POLICY[kind].get(credential, 401), id=f"{path}-{credential}"
    )
    for method, path, body, here, kind in ROUTES
    for credential in CREDENTIALS
]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the whole table (making one loads the CA bundle: tenths of a second)."""
    with httpx.Client(timeout=30) as made:
        yield made


@pytest.fixture(scope="module")
def job_id(keyed: sk.Server) -> str:
    response = httpx.post(keyed.url + "/later", json={"x": 1}, headers=CREDENTIALS["invoke"], timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(("method", "path", "body", "here", "credential", "expected"), CASES)
def test_each_route_class_answers_each_credential_as_documented(
    keyed: sk.Server,
    job_id: str,
    http: httpx.Client,
    method: str,
    path: str,
    body: Any,
    here: bool,
    credential: str,
    expected: int | str,
) -> None:
    url = keyed.url + path.replace("{job}", job_id)
    response = http.request(method, url, json=body, headers=CREDENTIALS[credential])
    assert "x-request-id" in response.headers
    if expected == OK and here:
        assert 200 <= response.status_code < 300, response.text
    elif expected == OK:
        assert response.status_code not in (401, 403, 429), response.text
    else:
        assert response.status_code == expected, response.text
        assert response.json()["error"]["type"] == {401: "unauthorized", 403: "forbidden"}[expected]
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_admitted_responses_carry_the_rate_limit_headers(keyed: sk.Server, http: httpx.Client) -> None:
    response = http.post(keyed.url + "/predict", json={"x": 1}, headers=CREDENTIALS["invoke"])
    assert response.headers["ratelimit-limit"] == "1000"
    assert int(response.headers["ratelimit-remaining"]) < 1000


def test_cors_preflight_is_answered_for_the_allowed_origin_only(keyed: sk.Server, http: httpx.Client) -> None:
    asked = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    allowed = http.options(keyed.url + "/predict", headers={"origin": "https://app.example.com", **asked})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = http.options(keyed.url + "/predict", headers={"origin": "https://other.example", **asked})
    assert other.status_code == 400
    refused = http.post(keyed.url + "/predict", json={"x": 1}, headers={"origin": "https://app.example.com"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example.com"


def test_too_many_headers_get_431_over_http(keyed: sk.Server, http: httpx.Client) -> None:
    many = [(f"x-extra-{n}", "1") for n in range(120)]
    response = http.get(keyed.url + "/healthz", headers=many)
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "request_header_fields_too_large"


def test_keys_are_added_and_revoked_without_a_restart(
    tmp_path: Path, http: httpx.Client, wait_until: Callable[..., None]
) -> None:
    path = keys_file(tmp_path / "keys.yaml")
    with sk.serve(guarded_app(), port=0, blocking=False, api_keys=path) as server:
        key = create_key(path, "new", ["invoke"])

        def predict() -> int:
            return http.post(server.url + "/embed", json={"x": 1}, headers={"x-api-key": key}).status_code

        wait_until(lambda: predict() == 200, "the new key to be accepted")
        revoke_key(path, "new")
        wait_until(lambda: predict() == 401, "the revoked key to be refused")


async def test_a_flood_of_ten_times_the_limit_is_refused_while_a_calm_client_is_served(
    serve_app: Callable[..., sk.Server], async_client: httpx.AsyncClient
) -> None:
    server = serve_app(guarded_app(), rate_limit="5/h burst 5")

    async def call(address: str) -> httpx.Response:
        return await async_client.post(
            server.url + "/embed", json={"x": 1}, headers={"x-forwarded-for": address}
        )

    flood = [call("203.0.113.1") for _ in range(50)]
    calm = [call("203.0.113.2") for _ in range(5)]
    answers = await asyncio.gather(*flood, *calm)
    flooded, served = answers[:50], answers[50:]
    assert sorted(r.status_code for r in flooded) == [200] * 5 + [429] * 45
    assert [r.status_code for r in served] == [200] * 5
    refused = next(r for r in flooded if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert "client 203.0.113.1" in refused.json()["error"]["message"]


def test_without_keys_the_admin_api_answers_only_this_machine(
    serve_app: Callable[..., sk.Server], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "servekit.server"):
        server = serve_app(guarded_app())
    assert "admin API (/-/status, /-/routers, /-/rollouts" in caplog.text
    assert http.get(server.url + "/-/status").status_code == 200
    remote = {"x-forwarded-for": "203.0.113.9"}
    for path in ["/-/status", "/-/routers", "/-/rollouts", "/-/jobs"]:
        response = http.get(server.url + path, headers=remote)
        assert response.status_code == 403, path
        assert "only clients on this machine" in response.json()["error"]["message"]
    assert http.post(server.url + "/embed", json={"x": 1}, headers=remote).status_code == 200


def test_tls_serves_https_with_the_given_certificate(
    serve_app: Callable[..., sk.Server], tmp_path: Path
) -> None:
    certfile, keyfile = self_signed(tmp_path)
    server = serve_app(guarded_app(), ssl_certfile=certfile, ssl_keyfile=keyfile)
    assert server.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(certfile))
    with httpx.Client(verify=trusting, timeout=30) as https:
        assert https.post(server.url + "/embed", json={"x": 3}).json() == [3]
    with (
        httpx.Client(timeout=30) as untrusting,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        untrusting.get(server.url + "/healthz")


def test_tls_needs_both_files(tmp_path: Path) -> None:
    certfile, _ = self_signed(tmp_path)
    with pytest.raises(sk.errors.DeploymentOptionError, match="both ssl_certfile and ssl_keyfile"):
        sk.serve(guarded_app(), port=0, blocking=False, ssl_certfile=certfile)
    with pytest.raises(sk.errors.DeploymentOptionError, match="is not a readable file"):
        sk.serve(guarded_app(), port=0, blocking=False, ssl_certfile=certfile, ssl_keyfile=tmp_path / "none")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files in `folder`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "examples" / "security"


def test_the_security_example_shows_each_key_doing_what_its_scopes_allow() -> None:
    completed = subprocess.run(
        [sys.executable, str(SECURITY / "app.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = dict(line.split(": ", 1) for line in completed.stdout.splitlines() if ": " in line)
    assert out == {
        "no key on /predict": "401 unauthorized",
        "reader on /predict": "200 {'label': 'positive'}",
        "reader on /explain": "403 forbidden",
        "reader on /-/status": "403 forbidden",
        "ops on /-/status": "200",
        "expired on /predict": "401 unauthorized",
        "trial five times": "200 200 200 429 429",
        "reader's rate limit": "40 (40;w=2), used: True",
        "health without a key": "200",
    }


def test_the_cli_serves_the_example_with_keys_limits_cors_and_tls(
    processes: list[subprocess.Popen[str]], tmp_path: Path, wait_until: Callable[..., None]
) -> None:
    certfile, keyfile = self_signed(tmp_path)
    log = tmp_path / "servekit.log"
    args = [
        *("serve", f"{SECURITY / 'app.py'}:app", "--port", "0", "--api-keys", str(SECURITY / "keys.yaml")),
        *("--rate-limit", "20/s burst 40", "--cors-origin", "http://localhost:3000"),
        *("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), "--max-header-count", "50"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "servekit", *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    processes.append(process)
    pattern = re.compile(r"^servekit: serving \S+ at (https://\S+)$", re.MULTILINE)
    wait_until(lambda: pattern.search(log.read_text()) or process.poll() is not None, "the served URL")
    found = pattern.search(log.read_text())
    assert found is not None, log.read_text()
    url = found.group(1)
    assert "4 API keys from" in log.read_text()
    reader = {"authorization": "Bearer sk_demo_reader_key_only_for_this_example_01"}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(certfile)), timeout=30) as https:
        assert https.post(url + "/predict", json={"text": "a great film"}, headers=reader).status_code == 200
        assert https.post(url + "/predict", json={"text": "a great film"}).status_code == 401
        assert https.get(url + "/healthz", headers=[(f"x-{n}", "1") for n in range(60)]).status_code == 431
        preflight = https.options(
            url + "/predict",
            headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, log.read_text()


def test_the_client_commands_send_the_key_in_servekit_api_key(
    keyed: sk.Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from servekit._cli.main import main

    monkeypatch.delenv("SERVEKIT_API_KEY", raising=False)
    assert main(["status", "--url", keyed.url]) == 1
    assert "answered 401" in capsys.readouterr().err
    assert main(["rollout", "status", "clf", "--url", keyed.url]) == 1
    assert "answered 401: /-/routers/clf needs an API key" in capsys.readouterr().err
    monkeypatch.setenv("SERVEKIT_API_KEY", KEYS["admin"])
    assert main(["status", "--url", keyed.url]) == 0
    assert "Api" in capsys.readouterr().out
    assert main(["rollout", "status", "clf", "--url", keyed.url]) == 0
    assert "clf" in capsys.readouterr().out
