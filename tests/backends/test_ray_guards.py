"""The guards on Ray: the same Starlette edge runs in the ingress replicas behind Ray Serve's proxy,
with keys (reloaded from the file), scopes, each replica's share of the rate limit, and the admin
API kept to this machine without keys (the proxy hands the replica the client's address)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from behaviour_support import RayCluster, free_port
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


ROOT = Path(__file__).resolve().parents[2]


def test_the_cli_serves_https_with_keys_from_a_ray_it_starts(tmp_path: Path) -> None:
    """Ray Serve's proxy, started by servekit with the certificate, serves HTTPS; keys come from the file."""
    certfile, keyfile = self_signed(tmp_path)
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps({"keys": [{"name": "invoke", "hash": hash_key(INVOKE), "scopes": ["invoke"]}]})
    )
    port, log = free_port(), tmp_path / "servekit.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        "serve",
        str(ROOT / "tests" / "backends" / "cli_app.py") + ":app",
        "--backend",
        "ray",
        "--port",
        str(port),
    ]
    args += ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), "--api-keys", str(keys)]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "servekit", *args], env=env, cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(certfile)), timeout=30) as https:

            def served() -> bool:
                assert process.poll() is None, log.read_text()
                if f"servekit: serving {args[1]} at {url}" not in log.read_text():
                    return False
                try:
                    return https.get(url + "/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            deadline = time.monotonic() + 180
            while not served():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert https.post(url + "/count", json={"text": "a b c"}).status_code == 401
            answer = https.post(url + "/count", json={"text": "a b c"}, headers={"x-api-key": INVOKE})
            assert answer.json()["words"] == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files in `folder`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(x509.random_serial_number()).add_extension(san, critical=False)
    builder = builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=1)
    )
    certificate = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keyfile.write_bytes(private)
    return certfile, keyfile
