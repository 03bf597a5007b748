"""Build the textstats example's bundle into a Docker image for real, run it, and call it.

Run by `nox -s bundle_image` where a container engine answers. servekit goes into the image from
a wheel of this checkout, served over HTTP on the host to the build (the Dockerfile's
`SERVEKIT_SPEC` build argument; servekit is not on the package registry).
"""

from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TAG = "servekit-textstats:nox"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="servekit-image-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "wheel"), str(ROOT)],
                       check=True)  # fmt: skip
        wheel = next((work / "wheel").glob("servekit-*.whl")).name
        built = subprocess.run(
            [sys.executable, "-m", "servekit", "build", f"{ROOT}/examples/textstats/app.py:app",
             "-o", str(work / "dist"), "--no-store"], check=True, capture_output=True, text=True,
        )  # fmt: skip
        with tarfile.open(built.stdout.splitlines()[0]) as tar:
            tar.extractall(work / "bundle", filter="data")
        server, port = _serve_folder(work / "wheel")
        try:
            subprocess.run(
                ["docker", "build", "--network", "host", "-t", TAG,
                 "--build-arg", f"SERVEKIT_SPEC=http://127.0.0.1:{port}/{wheel}", str(work / "bundle")],
                check=True,
            )  # fmt: skip
        finally:
            server.shutdown()
    host_port = _free_port()
    container = subprocess.run(
        ["docker", "run", "-d", "-p", f"127.0.0.1:{host_port}:8000", TAG],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        url = f"http://127.0.0.1:{host_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the container did not get ready within 120 s")
            time.sleep(0.5)
        answer = httpx.post(
            f"{url}/stats", json={"text": "the cat saw the dog and the cat ran"}, timeout=10
        ).json()
        assert answer == {"words": 9, "unique": 6, "top": ["the", "cat", "and"]}, answer
        print(f"the image serves the bundle: {answer}")
    finally:
        subprocess.run(["docker", "rm", "-f", container], check=False, capture_output=True)


if __name__ == "__main__":
    main()
