"""`servekit batch` and `sk.batch_score` on real files (pyarrow) with real replicas and the CLI.

The resume test kills the CLI (kill -9) once half of a 100,000-row run is checkpointed, resumes
it, and compares the result with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import servekit as sk

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from scoring_app import app

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SOURCE_TREE = Path(sk.__file__).resolve().parents[1]


def write_parquet(path: Path, rows: int) -> Path:
    pq.write_table(pa.table({"x": [float(i) for i in range(rows)], "id": list(range(rows))}), path)
    return path


def test_scores_in_input_order_with_failed_and_malformed_rows_in_the_errors_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"value": i}) for i in range(20)]
    lines[5] = "{not json"
    source.write_text("\n".join(lines) + "\n")
    report = sk.batch_score(app, source, tmp_path / "out.parquet", endpoint="/score", mapping={"value": "x"},
                            chunk_rows=6, progress=False)  # fmt: skip
    assert (report.rows, report.succeeded, report.failed) == (20, 18, 2)
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["row"] for r in out] == [i for i in range(20) if i not in (5, 13)]
    assert all(r["y"] == 2 * r["row"] for r in out)
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["error"]) for e in errors] == [(5, "malformed_row"), (13, "ValueError")]
    assert "line 6 is not valid JSON" in errors[0]["message"]
    assert "13 is unlucky" in errors[1]["message"]
    assert not (tmp_path / "out.parquet.parts").exists()


def test_a_value_of_the_wrong_type_fails_its_row_as_the_http_edge_would(tmp_path: Path) -> None:
    """`score(x: float)` gets floats or nothing: a row with a string x goes to the errors file
    naming the field (over HTTP the same request is a 422), a numeric string is coerced."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"x": 1}\n{"x": "bad"}\n{"x": "2.5"}\n')
    report = sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/score", progress=False)
    assert (report.succeeded, report.failed) == (2, 1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"row": 0, "y": 2.0}, {"row": 2, "y": 5.0}]
    (error,) = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert (error["row"], error["error"]) == (1, "ValidationError")
    assert "x" in error["message"]
    assert "float" in error["message"]


def test_a_batched_method_checks_each_item_against_its_list_type(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"xs": 1}\n{"xs": "nan-ish"}\n{"xs": 3}\n')
    report = sk.batch_score(app, source, tmp_path / "out.jsonl", method="double", progress=False)
    assert (report.succeeded, report.failed) == (2, 1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"row": 0, "y": 2.0}, {"row": 2, "y": 6.0}]


def test_a_model_parameter_takes_the_columns_and_csv_in_jsonl_out(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text("body,stars\nlovely,5\nmeh,2\ntoo,many,fields\n")
    report = sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/review", mapping={"body": "text"},
                            progress=False)  # fmt: skip
    assert (report.succeeded, report.failed) == (2, 1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"row": 1, "length": 6, "good": True}, {"row": 2, "length": 3, "good": False}]
    (error,) = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert error == {
        "row": 0,
        "error": "malformed_row",
        "message": "a line has 3 fields, not 2: 'too,many,fields'",
    }


def test_bad_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", 3)
    with pytest.raises(
        sk.DeploymentOptionError, match=r"needs \['text', 'stars'\], which no input column gives"
    ):
        sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/review", progress=False)
    with pytest.raises(sk.DeploymentOptionError, match=r"--map names input columns \['nope'\]"):
        sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/score", mapping={"nope": "x"})
    with pytest.raises(sk.DeploymentOptionError, match="has no such endpoint"):
        sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/missing")
    (tmp_path / "out.jsonl").write_text("")
    with pytest.raises(sk.DeploymentOptionError, match="exists; pass --overwrite"):
        sk.batch_score(app, source, tmp_path / "out.jsonl", endpoint="/score")


def test_too_many_failures_stop_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"x": 13 if i % 4 == 0 else i + 100}) + "\n" for i in range(40)))
    output = tmp_path / "out.jsonl"
    with pytest.raises(sk.errors.BatchAbortedError, match="more than max_failures=2"):
        sk.batch_score(app, source, output, endpoint="/score", max_failures=2, chunk_rows=8, progress=False)
    assert not output.exists()
    report = sk.batch_score(app, source, output, endpoint="/score", max_failures=100, chunk_rows=8,
                            resume=True, progress=False)  # fmt: skip
    assert report.chunks_skipped >= 1
    assert (report.succeeded, report.failed) == (30, 10)
    assert len(output.read_text().splitlines()) == 30


def test_a_batched_method_gets_whole_batches_and_a_failing_item_fails_alone(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", 100)
    report = sk.batch_score(app, source, tmp_path / "out.jsonl", method="double", mapping={"x": "xs"},
                            batch_size=16, progress=False)  # fmt: skip
    assert (report.succeeded, report.failed) == (100, 0)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"row": i, "y": 2.0 * i} for i in range(100)]


def test_process_replicas_score_a_parquet_file(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", 500)
    report = sk.batch_score(
        app, source, tmp_path / "out.parquet", endpoint="/score", replicas=2, progress=False
    )
    assert (report.succeeded, report.failed) == (499, 1)
    assert pq.read_table(tmp_path / "out.parquet").column("row").to_pylist() == [
        i for i in range(500) if i != 13
    ]


def _cli(*args: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SOURCE_TREE)}
    log = (tmp_path / "cli.log").open("ab")
    command = [sys.executable, "-m", "servekit", "batch", "apps/scoring_app.py:app", *args]
    process = subprocess.Popen(
        command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return process


def test_an_interrupted_run_resumes_to_the_same_output_as_an_uninterrupted_one(
    tmp_path: Path, wait_until: Callable[..., None]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", 100_000)
    common = ("--input", str(source), "--method", "double", "--map", "x=xs", "--batch-size", "8",
              "--chunk-rows", "5000", "--no-progress")  # fmt: skip
    whole = _cli(*common, "--output", str(tmp_path / "whole.parquet"), tmp_path=tmp_path)
    assert whole.wait(timeout=120) == 0, (tmp_path / "cli.log").read_text()
    interrupted = _cli(*common, "--output", str(tmp_path / "resumed.parquet"), tmp_path=tmp_path)
    parts = tmp_path / "resumed.parquet.parts"
    try:
        wait_until(lambda: len(list(parts.glob("*.parquet"))) >= 10, "half the chunks", 120)
    finally:
        os.killpg(interrupted.pid, signal.SIGKILL)
        interrupted.wait(timeout=10)
    assert not (tmp_path / "resumed.parquet").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    refused = _cli(*common, "--output", str(tmp_path / "whole.parquet"), tmp_path=tmp_path)
    assert refused.wait(timeout=60) == 1  # the finished output exists: neither --resume nor --overwrite
    resumed = _cli(*common, "--output", str(tmp_path / "resumed.parquet"), "--resume", tmp_path=tmp_path)
    assert resumed.wait(timeout=120) == 0, (tmp_path / "cli.log").read_text()
    log = (tmp_path / "cli.log").read_text()
    assert f"{len(done_before)} chunks already done" in log
    assert pq.read_table(tmp_path / "resumed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))
    assert (tmp_path / "resumed.errors.jsonl").read_bytes() == (tmp_path / "whole.errors.jsonl").read_bytes()


def test_the_batch_example_scores_with_the_classifier_and_resumes(tmp_path: Path) -> None:
    root = SOURCE_TREE
    done = subprocess.run(
        [sys.executable, "examples/batch/run.py", "--rows", "4000", "--workdir", str(tmp_path)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(SOURCE_TREE)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "interrupted (exit code 130); resuming:" in done.stdout
    assert "chunks already done" in done.stderr
    assert "row/s" in done.stderr  # the progress bar
    counts = dict(
        line.split(": ") for line in done.stdout.splitlines() if ": " in line and "exit" not in line
    )
    assert set(counts) == {"statement", "question", "exclamation"}
    assert sum(int(n) for n in counts.values()) == 4000
