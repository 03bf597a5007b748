"""`servekit batch --backend ray`: a small file scored on Ray Data, on the session's cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from behaviour_support import RayCluster

import servekit as sk

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parents[1] / "integration" / "apps"
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]


def test_batch_on_ray_data_scores_every_row_in_order(ray_cluster: RayCluster, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": [float(i) for i in range(200)]}), source)
    output = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "servekit", "batch", "scoring_app.py:app", "--endpoint", "/score",
               "--input", str(source), "--output", str(output), "--backend", "ray",
               "--address", ray_cluster.address, "--batch-size", "50", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SOURCE_TREE)}
    done = subprocess.run(
        command, cwd=APPS, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(output).to_pylist()  # a folder of parts, in input order
    assert [r["y"] for r in rows] == [2.0 * i if i != 13 else None for i in range(200)]
    assert rows[13]["error"] == "ValueError: deployment 'Scorer': 13 is unlucky"
    assert rows[0]["error"] is None
