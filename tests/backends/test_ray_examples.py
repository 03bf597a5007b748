"""The Ray example runs as the docs say, against the session's cluster (joined via RAY_ADDRESS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from behaviour_support import RayCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_ray_backend_example_classifies_on_the_cluster(ray_cluster: RayCluster) -> None:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_backend.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = dict(line.partition(": ")[::2] for line in completed.stdout.splitlines() if ": " in line)
    assert lines["Is this thing on?"] == "question"
    assert lines["WE ARE LIVE!"] == "exclamation"
    assert lines["The sky is blue."] == "statement"
    for deployment in ("Preprocess", "Classifier", "Postprocess", "Pipeline"):
        assert lines[deployment].startswith("1 replica(s) on ")


MAIN_SCRIPT = """
from __future__ import annotations

import sys

import httpx
from pydantic import BaseModel

import servekit as sk


class Question(BaseModel):  # a model named only in annotations, defined in __main__
    text: str


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Shout:
    def __call__(self, text: str) -> str:
        return text.upper()


@sk.deployment(resources=sk.Resources(cpus=0.1))
class Api:
    def __init__(self, shout: sk.DeploymentHandle) -> None:
        self.shout = shout

    @sk.endpoint("/ask")
    async def ask(self, question: Question) -> dict[str, str]:
        return {"answer": await self.shout(question.text)}


with sk.serve(Api.bind(Shout.bind()), port=int(sys.argv[1]), backend="ray", blocking=False) as server:
    print("http:", httpx.post(server.url + "/ask", json={"text": "hi"}, timeout=30).json()["answer"])
    print("handle:", server.handle.ask(Question(text="there")).result(timeout=30)["answer"])
"""


def test_an_app_defined_in_main_runs_on_the_cluster(ray_cluster: RayCluster, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), str(ray_cluster.http_port)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "http: HI" in completed.stdout
    assert "handle: THERE" in completed.stdout
