"""The guards on Ray: the same Starlette edge runs in the ingress replicas behind Ray Serve's proxy,
with keys (reloaded from the file), scopes, each replica's share of the rate limit, and the admin
API kept to this machine without keys (the proxy hands the replica the client's address)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from behaviour_support import RayCluster
from pydantic import BaseModel

import servekit as sk
from servekit._http.guards.keyfile import create_key
from servekit._http.guards.keys import hash_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

INVOKE = "sk_ray_invoke_key_00000000000000001"
ADMIN = "sk_ray_admin_key_000000000000000001"


class Payload(BaseModel):
    x: int


@sk.deployment
class GuardedApi:
    @sk.endpoint("/predict")
    async def predict(self, payload: Payload) -> list[int]:
        return [payload.x]


def test_keys_scopes_reloads_and_each_replicas_share_of_the_limit_on_ray(
    ray_cluster: RayCluster, tmp_path: Path, client: httpx.Client, wait_until: Callable[..., None]
) -> None:
    path = tmp_path / "keys.json"
    entries = [
        {"name": "invoke", "hash": hash_key(INVOKE), "scopes": ["invoke"], "rate_limit": "1/h burst 4"},
        {"name": "admin", "hash": hash_key(ADMIN), "scopes": ["admin"]},
    ]
    path.write_text(json.dumps({"keys": entries}))
    app = GuardedApi.options(num_replicas=2).bind()
    server = sk.serve(app, port=ray_cluster.http_port, blocking=False, backend="ray", api_keys=path)
    try:
        url = server.url

        def predict(key: str | None = None) -> httpx.Response:
            headers = {"x-api-key": key} if key else {}
            return client.post(url + "/predict", json={"x": 1}, headers=headers)

        missing = predict()
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "unauthorized"
        assert missing.headers["www-authenticate"] == 'Bearer realm="servekit"'
        assert "x-request-id" in missing.headers
        assert client.get(url + "/-/status", headers={"x-api-key": INVOKE}).status_code == 403
        assert client.get(url + "/-/status", headers={"x-api-key": ADMIN}).status_code == 200
        assert client.get(url + "/healthz").status_code == 200
        codes = [predict(INVOKE).status_code for _ in range(12)]
        assert set(codes) == {200, 429}
        assert 2 <= codes.count(200) <= 4  # each of the 2 replicas admits its half of the burst of 4
        key = create_key(path, "added", ["invoke"])
        wait_until(lambda: predict(key).status_code == 200, "the added key to work on both replicas", 60)
    finally:
        server.shutdown(grace_s=5)


def test_without_keys_the_ray_ingress_keeps_the_admin_api_to_this_machine(
    ray_cluster: RayCluster, client: httpx.Client
) -> None:
    server = sk.serve(GuardedApi.bind(), port=ray_cluster.http_port, blocking=False, backend="ray")
    try:
        assert client.get(server.url + "/-/status").status_code == 200
        remote = client.get(server.url + "/-/status", headers={"x-forwarded-for": "203.0.113.9"})
        assert remote.status_code == 403
        assert "only clients on this machine" in remote.json()["error"]["message"]
        assert client.post(
            server.url + "/predict", json={"x": 2}, headers={"x-forwarded-for": "203.0.113.9"}
        ).json() == [2]
    finally:
        server.shutdown(grace_s=5)


def test_tls_asked_of_a_running_plain_http_proxy_fails_naming_the_fix(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_text("a certificate")  # never read: the running proxy's TLS cannot change
    keyfile.write_text("a key")
    with pytest.raises(sk.errors.DeploymentStartError, match="its proxy serves plain HTTP"):
        sk.serve(
            GuardedApi.bind(),
            port=ray_cluster.http_port,
            blocking=False,
            backend="ray",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
