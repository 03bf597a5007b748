"""Batch scoring with the classifier example: make a parquet file, score it, stop, resume.

    python examples/batch/run.py [--rows 20000] [--workdir /tmp/servekit-batch]

1. writes `reviews.parquet` (generated sentences, column `review`);
2. starts `servekit batch examples/classifier/app.py:app ... --endpoint /classify
   --map review=text` (the progress bar shows rows/s and the time left), and interrupts it
   (Ctrl-C) once half of the chunks are written;
3. runs the same command with `--resume`: it skips the finished chunks;
4. prints how many reviews got each label.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "model", "works", "really", "well", "is", "this", "fast", "we", "love", "it", "ready"]
ENDINGS = [".", "?", "!"]
CHUNK_ROWS = 1000


def make_input(path: Path, rows: int) -> None:
    """`rows` short sentences, ending in '.', '?' or '!', as a parquet file."""
    rng = random.Random(0)
    reviews = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) + rng.choice(ENDINGS) for _ in range(rows)]
    pq.write_table(pa.table({"id": list(range(rows)), "review": reviews}), path, row_group_size=5000)


def batch_command(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "servekit", "batch", "examples/classifier/app.py:app",
        "--input", str(source), "--output", str(output), "--endpoint", "/classify",
        "--map", "review=text", "--chunk-rows", str(CHUNK_ROWS), *extra,
    ]  # fmt: skip


def interrupt_at_half(source: Path, output: Path, rows: int) -> None:
    """Run the scoring and press Ctrl-C (SIGINT) once half of the chunks are checkpointed."""
    parts = output.with_name(output.name + ".parts")
    half = max(1, rows // CHUNK_ROWS // 2)
    process = subprocess.Popen(batch_command(source, output, "--overwrite"), cwd=ROOT)
    deadline = time.monotonic() + 300
    while len(list(parts.glob("*.parquet"))) < half and process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    print(f"\ninterrupted (exit code {process.wait(timeout=60)}); resuming:", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/servekit-batch"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, output = args.workdir / "reviews.parquet", args.workdir / "scored.parquet"
    make_input(source, args.rows)
    interrupt_at_half(source, output, args.rows)
    subprocess.run(batch_command(source, output, "--resume"), cwd=ROOT, check=True)
    labels = collections.Counter(pq.read_table(output, columns=["label"]).column("label").to_pylist())
    for label, count in sorted(labels.items()):
        print(f"{label}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
