"""Read an input file as fixed-size chunks of rows (dicts), streaming: JSONL, CSV or Parquet.

A JSONL line that is not a JSON object, or a CSV line with the wrong number of fields, becomes
a `Malformed` row (an errors-file entry), not a failure of the run (a CSV one takes the place
of the first row of the block pyarrow read it in). Chunk `i` always holds rows from
`i * chunk_rows` up to the next chunk, so a resumed run meets the same chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servekit.errors import DeploymentOptionError

INPUT_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class Malformed:
    """An input row that could not be read, with the reason."""

    reason: str


Row = dict[str, Any] | Malformed


def input_format(path: Path) -> str:
    """ "jsonl", "csv" or "parquet", from the file's suffix."""
    kind = INPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DeploymentOptionError(
            f"input {str(path)!r}: unknown format {path.suffix!r}; use .jsonl, .csv or .parquet"
        )
    if not path.is_file():
        raise DeploymentOptionError(f"input {str(path)!r} does not exist")
    return kind


def count_rows(path: Path) -> int:
    """How many rows the input holds (Parquet: its metadata; text: its lines, read in blocks)."""
    kind = input_format(path)
    if kind == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        return int(pq.ParquetFile(path).metadata.num_rows)
    lines = 0
    last = b"\n"
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return lines - 1 if kind == "csv" else lines


def columns(path: Path) -> list[str]:
    """The input's column names (JSONL: the keys of its first row)."""
    kind = input_format(path)
    if kind == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        return list(pq.ParquetFile(path).schema_arrow.names)
    if kind == "csv":
        return list(_open_csv(path, lambda row: "skip").schema.names)
    for row in _jsonl_rows(path):
        return list(row) if isinstance(row, dict) else []
    return []


def read_chunks(path: Path, chunk_rows: int) -> Iterator[list[Row]]:
    """The input's rows, `chunk_rows` at a time (the last chunk may be shorter)."""
    chunk: list[Row] = []
    for rows in _row_blocks(path, chunk_rows):
        for row in rows:
            chunk.append(row)
            if len(chunk) == chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _row_blocks(path: Path, block_rows: int) -> Iterator[list[Row]]:
    kind = input_format(path)
    if kind == "jsonl":
        block: list[Row] = []
        for row in _jsonl_rows(path):
            block.append(row)
            if len(block) >= block_rows:
                yield block
                block = []
        yield block
        return
    if kind == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        for batch in pq.ParquetFile(path).iter_batches(batch_size=block_rows):
            yield list(batch.to_pylist())
        return
    skipped: list[Row] = []

    def skip(row: Any) -> str:
        line = f"line {row.number}" if row.number is not None and row.number > 0 else "a line"
        fields = f"{row.actual_columns} fields, not {row.expected_columns}"
        skipped.append(Malformed(f"{line} has {fields}: {row.text!r}"))
        return "skip"

    for batch in _open_csv(path, skip):
        rows: list[Row] = [*skipped, *batch.to_pylist()]  # a malformed line goes first in its block
        skipped.clear()
        yield rows
    yield list(skipped)


def _open_csv(path: Path, on_invalid: Any) -> Any:
    import pyarrow.csv as pcsv  # noqa: PLC0415

    return pcsv.open_csv(path, parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid))


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                yield Malformed(f"line {number} is empty")
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield Malformed(f"line {number} is not valid JSON: {exc}")
                continue
            yield value if isinstance(value, dict) else Malformed(f"line {number} is not a JSON object")
