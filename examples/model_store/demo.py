"""The model store end to end, with the real CLI: push two versions, serve `production`,
promote v2, roll back to v1, and print what the classifier answers at each step.

Run it with `python examples/model_store/demo.py`; it keeps its store in a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REVIEW = {"text": "the food was fine but the service was slow"}
V1 = {"great": 2, "fine": 1, "slow": -1, "awful": -2}
V2 = {"great": 2, "fine": 1, "slow": -3, "awful": -2}  # v2 minds slow service more


def servekit(*args: str, env: dict[str, str]) -> str:
    """Run `servekit ARGS` and return its output (what you would type in a shell)."""
    done = subprocess.run(
        [sys.executable, "-m", "servekit", *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def classify(url: str) -> dict[str, object]:
    """`curl -s -X POST URL/classify -d '{"text": ...}'`."""
    body = json.dumps(REVIEW).encode()
    request = urllib.request.Request(url + "/classify", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_for(url: str, version: str, process: subprocess.Popen[str]) -> dict[str, object]:
    """Poll until both replicas answer with `version` (the tag's move reaches them within ~1 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            answers = [classify(url) for _ in range(6)]
        except OSError:
            answers = []
        if answers and all(answer["model_version"] == version for answer in answers):
            return answers[0]
        time.sleep(0.2)
    raise SystemExit(f"the classifier did not move to {version}")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env = {
            **os.environ,
            "SERVEKIT_MODEL_STORE": str(root / "store"),
            "SERVEKIT_MODEL_CACHE": str(root / "cache"),
        }
        for version, weights in (("v1", V1), ("v2", V2)):
            (root / f"weights-{version}.json").write_text(json.dumps(weights))
            print(
                "push:",
                servekit(
                    "models",
                    "push",
                    "sentiment",
                    str(root / f"weights-{version}.json"),
                    "--version",
                    version,
                    "--meta",
                    "task=sentiment",
                    env=env,
                ),
            )
        print("tag:", servekit("models", "tag", "sentiment", "v1", "production", env=env))
        port = "8765" if len(sys.argv) < 2 else sys.argv[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "servekit", "serve", f"{HERE / 'app.py'}:app", "--port", port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            print("production=v1:", json.dumps(wait_for(url, "v1", server)))
            print("tag:", servekit("models", "tag", "sentiment", "v2", "production", env=env))
            print("production=v2:", json.dumps(wait_for(url, "v2", server)))
            print("rollback:", servekit("models", "rollback", "sentiment", "production", env=env))
            print("production=v1 again:", json.dumps(wait_for(url, "v1", server)))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
