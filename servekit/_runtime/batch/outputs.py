"""Write scored chunks as part files (the checkpoint), then merge them into the output.

`OUTPUT.parts/` holds `manifest.json` (what the run is: input, chunking, method, mapping) and,
per finished chunk `i`, `i.errors.jsonl` then `i.jsonl` or `i.parquet`, each written to a
temporary name and renamed: a chunk is done exactly when its data part exists, so a run killed at
any moment resumes without redoing finished chunks. The merge streams the parts in order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from servekit.errors import DeploymentOptionError

OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: Path) -> str:
    """ "jsonl" or "parquet", from the output's suffix."""
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DeploymentOptionError(
            f"output {str(path)!r}: unknown format {path.suffix!r}; use .jsonl or .parquet"
        )
    return kind


def errors_path(output: Path) -> Path:
    """Where failed rows go: beside the output, like `scored.errors.jsonl`."""
    return output.with_name(output.stem + ".errors.jsonl")


def parts_dir(output: Path) -> Path:
    """The checkpoint folder of a run writing `output`."""
    return output.with_name(output.name + ".parts")


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".tmp")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


class Checkpoint:
    """The part files of one run."""

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.output = output
        self.kind = output_format(output)
        self.folder = parts_dir(output)
        self.manifest = manifest

    def start(self, resume: bool) -> None:
        """Open the checkpoint: resume one made for the same run, or start empty."""
        found = self.folder / "manifest.json"
        if resume and found.exists():
            if json.loads(found.read_text()) != self.manifest:
                raise DeploymentOptionError(
                    f"the checkpoint in {str(self.folder)!r} was made for another input, method, mapping or "
                    "chunk size; run with --overwrite to start again"
                )
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        _atomic_write(found, json.dumps(self.manifest).encode())

    def done(self, chunk: int) -> bool:
        """Whether chunk `chunk` was written."""
        return self._part(chunk).exists()

    def failures(self, chunk: int) -> int:
        """How many rows of finished chunk `chunk` failed."""
        path = self._errors(chunk)
        if not path.exists():
            return 0
        with path.open("rb") as lines:
            return sum(1 for _ in lines)

    def write(self, chunk: int, rows: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        """Record chunk `chunk`: its errors first, then its rows (which mark it done)."""
        _atomic_write(self._errors(chunk), b"".join(json.dumps(e).encode() + b"\n" for e in errors))
        if self.kind == "jsonl":
            _atomic_write(self._part(chunk), b"".join(json.dumps(r).encode() + b"\n" for r in rows))
            return
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        partial = self._part(chunk).with_name(self._part(chunk).name + ".tmp")
        pq.write_table(pa.Table.from_pylist(rows), partial)
        partial.replace(self._part(chunk))

    def merge(self, chunks: int) -> None:
        """Write the output and the errors file from the parts (in order), then drop the parts."""
        _concatenate((self._errors(i) for i in range(chunks)), errors_path(self.output))
        if self.kind == "jsonl":
            _concatenate((self._part(i) for i in range(chunks)), self.output)
        else:
            self._merge_parquet(chunks)
        shutil.rmtree(self.folder)

    def _merge_parquet(self, chunks: int) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        partial = self.output.with_name(self.output.name + ".tmp")
        writer = None
        try:
            for i in range(chunks):
                table = pq.read_table(self._part(i))
                if table.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema)
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no row succeeded: an empty file with no columns
            import pyarrow as pa  # noqa: PLC0415

            pq.write_table(pa.table({}), partial)
        partial.replace(self.output)

    def _part(self, chunk: int) -> Path:
        return self.folder / f"{chunk:08d}.{self.kind}"

    def _errors(self, chunk: int) -> Path:
        return self.folder / f"{chunk:08d}.errors.jsonl"


def _concatenate(parts: Iterable[Path], target: Path) -> None:
    partial = target.with_name(target.name + ".tmp")
    with partial.open("wb") as out:
        for part in parts:
            if part.exists():
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out)
    partial.replace(target)
