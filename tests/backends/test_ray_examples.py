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
