"""`batch_score`: score a file with an app on the local runtime (or on Ray Data), resumably.

Rows go to the ingress method through its handle, at most `replicas * batch_size * 2` at once,
so `@sk.batch` methods see full batches; two chunks are in flight, so replicas stay busy across
chunk boundaries. Each chunk is written when its last row answers (the checkpoint), in order.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from servekit._runtime.app import RunningApp
from servekit._runtime.backends import get_backend
from servekit._runtime.batch.calls import CallPlan, output_row, plan_calls
from servekit._runtime.batch.inputs import Malformed, Row, columns, count_rows, input_format, read_chunks
from servekit._runtime.batch.outputs import Checkpoint, errors_path, output_format, parts_dir
from servekit._runtime.batch.whole_batches import SCORE_ROWS, batched_method, with_whole_batches
from servekit._runtime.options import run_options
from servekit._spec.deployment import Application
from servekit._spec.graph import AppGraph, build_graph
from servekit.errors import BatchAbortedError, DeploymentOptionError

DEFAULT_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class BatchReport:
    """What a batch run did."""

    output: str
    errors: str
    rows: int
    succeeded: int
    failed: int
    chunks_skipped: int
    """Chunks a resumed run found finished and did not score again."""
    seconds: float


@dataclass(frozen=True)
class BatchJob:
    """One batch run's settings, checked."""

    input: Path
    output: Path
    plan: CallPlan
    replicas: int
    batch_size: int
    max_failures: int
    chunk_rows: int
    progress: bool


class DatasetBackend(Protocol):
    """A backend that scores files with its own data engine (Ray Data)."""

    def score_dataset(self, graph: AppGraph, job: BatchJob, address: str | None) -> BatchReport:
        """Score `job.input` into `job.output` with `graph`'s ingress class."""
        ...


def batch_score(
    app: Application,
    input: str | Path,
    output: str | Path,
    *,
    endpoint: str | None = None,
    method: str | None = None,
    mapping: dict[str, str] | None = None,
    replicas: int = 1,
    batch_size: int = 32,
    resume: bool = False,
    overwrite: bool = False,
    max_failures: int = 100,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    backend: str = "local",
    address: str | None = None,
    gpus: str | None = None,
) -> BatchReport:
    """Score every row of `input` (.jsonl, .csv, .parquet) with `app`, writing `output` (.jsonl, .parquet).

    Each row calls the ingress's method chosen by `endpoint` (an `@endpoint` path) or `method`
    (default: its only endpoint, else `__call__`); columns become its keyword arguments or the
    fields of its one pydantic parameter, renamed by `mapping` (column -> field). Output rows
    come in input order (`row` is the input row number, then the result's fields); rows that
    fail go to `<output stem>.errors.jsonl` with the reason, and past `max_failures` of them the
    run stops (`BatchAbortedError`), keeping what it finished. `replicas` > 1 runs every
    deployment in that many worker processes; up to `replicas * batch_size * 2` rows are in
    flight. Finished chunks of `chunk_rows` rows are checkpointed: `resume=True` continues an
    interrupted run without redoing them. An existing output is refused unless `overwrite` or
    `resume`. `backend="ray"` runs on Ray Data at `address` instead (see docs/batch-scoring.md).
    """
    sizes = {
        "replicas": replicas,
        "batch_size": batch_size,
        "max_failures": max_failures,
        "chunk_rows": chunk_rows,
    }
    plan = _check(app, (Path(input), Path(output)), (endpoint, method), mapping or {}, sizes)
    job = BatchJob(Path(input), Path(output), plan, replicas, batch_size, max_failures, chunk_rows, progress)
    graph = build_graph(app)
    if backend != "local":
        run_options(backend=backend, address=address)  # a clear error for an unknown backend
        return cast(DatasetBackend, get_backend(backend)).score_dataset(graph, job, address)
    finished = _prepare_output(job.output, resume, overwrite)
    if finished is not None:
        return finished
    return _score_locally(graph, job, resume, gpus)


def _check(
    app: Application,
    paths: tuple[Path, Path],
    chosen: tuple[str | None, str | None],
    mapping: dict[str, str],
    sizes: dict[str, int],
) -> CallPlan:
    """The call plan, once the paths, sizes and columns are valid; raises naming the problem."""
    (source, target), (endpoint, method) = paths, chosen
    try:
        import pyarrow  # noqa: F401, PLC0415
    except ImportError:
        raise ImportError(
            "batch scoring reads and writes files with pyarrow: pip install 'servekit[batch]'"
        ) from None
    input_format(source)
    output_format(target)
    for name, value in sizes.items():
        least = 0 if name == "max_failures" else 1
        if not isinstance(value, int) or value < least:
            raise DeploymentOptionError(f"{name}={value!r} must be a whole number of at least {least}")
    if endpoint is not None and method is not None:
        raise DeploymentOptionError("choose the method with endpoint or method, not both")
    plan = plan_calls(build_graph(app), endpoint, method, mapping)
    plan.check_columns(columns(source))
    return plan


def _prepare_output(output: Path, resume: bool, overwrite: bool) -> BatchReport | None:
    """Refuse an existing output unless told; a resumed run whose output is complete has nothing to do."""
    if overwrite:
        shutil.rmtree(parts_dir(output), ignore_errors=True)
        output.unlink(missing_ok=True)
        errors_path(output).unlink(missing_ok=True)
        return None
    if output.exists():
        if resume and not parts_dir(output).exists():
            return BatchReport(str(output), str(errors_path(output)), 0, 0, 0, 0, 0.0)
        if not resume:
            raise DeploymentOptionError(
                f"output {str(output)!r} exists; pass --overwrite to replace it or --resume to finish it"
            )
    return None


def _score_locally(graph: AppGraph, job: BatchJob, resume: bool, gpus: str | None) -> BatchReport:
    started = time.monotonic()
    manifest = {
        "input": str(job.input.resolve()),
        "input_bytes": job.input.stat().st_size,
        "input_mtime_ns": job.input.stat().st_mtime_ns,
        "chunk_rows": job.chunk_rows,
        "method": job.plan.method,
        "mapping": dict(job.plan.mapping),
    }
    checkpoint = Checkpoint(job.output, manifest)
    checkpoint.start(resume)
    options = run_options(isolation="process" if job.replicas > 1 else None, gpus=gpus)
    whole = batched_method(graph, job.plan.method) and job.plan.model is None and len(job.plan.fields) == 1
    running = RunningApp.start(with_whole_batches(graph, job.plan.method) if whole else graph, options)
    try:
        if job.replicas > 1:
            for name in graph.nodes:
                running.thread.run(running.runtime.scale(name, job.replicas))
        scorer = _Scorer(running, job, checkpoint, whole)
        chunks = _run_to_end(running, scorer)
    finally:
        running.stop(5)
    checkpoint.merge(chunks)
    rows = scorer.succeeded + scorer.failed
    return BatchReport(str(job.output), str(errors_path(job.output)), rows, scorer.succeeded, scorer.failed,
                       scorer.skipped, time.monotonic() - started)  # fmt: skip


def _run_to_end(running: RunningApp, scorer: _Scorer) -> int:
    """Run `scorer` on the app's loop; interrupted (Ctrl-C), it stops before the app does, so no
    chunk is written with the errors of calls cut short by the shutdown."""
    future = asyncio.run_coroutine_threadsafe(scorer.run(), running.thread.loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        scorer.stopped.wait(30)
        raise


class _Scorer:
    """Scores chunks on the app's loop, two in flight, writing each in order as it completes."""

    def __init__(self, running: RunningApp, job: BatchJob, checkpoint: Checkpoint, whole: bool) -> None:
        self.job = job
        self.checkpoint = checkpoint
        self.whole = whole
        """Whether rows go `batch_size` at a time to `SCORE_ROWS` (an `@sk.batch` method's function)."""
        self.caller = running.runtime.handle().method(SCORE_ROWS if whole else job.plan.method)
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0
        self.bar: Any = None
        self.stopped = threading.Event()

    async def run(self) -> int:
        from tqdm import tqdm  # noqa: PLC0415

        total = await asyncio.to_thread(count_rows, self.job.input)
        self.bar = tqdm(total=total, unit="row", disable=not self.job.progress, file=sys.stderr,
                        desc=self.job.output.name, smoothing=0.05, dynamic_ncols=True)  # fmt: skip
        in_flight = self.job.replicas * 2 if self.whole else self.job.replicas * self.job.batch_size * 2
        self.limit = asyncio.Semaphore(in_flight)
        window: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        chunks = read_chunks(self.job.input, self.job.chunk_rows)
        index = 0
        try:
            while (rows := await asyncio.to_thread(next, chunks, None)) is not None:
                if self.checkpoint.done(index):
                    self._skip(index, len(rows))
                else:
                    window.append((index, self._chunk(index * self.job.chunk_rows, rows)))
                index += 1
                while len(window) >= 2:
                    await self._write(*window.popleft())
            while window:
                await self._write(*window.popleft())
        finally:
            for _, pending in window:
                pending.cancel()
            await asyncio.gather(*(pending for _, pending in window), return_exceptions=True)
            self.bar.close()
            self.stopped.set()
        return index

    def _skip(self, index: int, rows: int) -> None:
        failed = self.checkpoint.failures(index)
        self.skipped += 1
        self.failed += failed
        self.succeeded += rows - failed
        self.bar.update(rows)

    def _chunk(self, first: int, rows: list[Row]) -> asyncio.Future[list[Any]]:
        """The outcomes of a chunk's rows, in order: one call per row, or per group of rows."""
        if not self.whole:
            return asyncio.gather(*(self._one(first + k, row) for k, row in enumerate(rows)))
        size = self.job.batch_size
        groups = [
            self._group(first + start, rows[start : start + size]) for start in range(0, len(rows), size)
        ]
        return asyncio.ensure_future(_flattened(asyncio.gather(*groups)))

    async def _group(
        self, first: int, rows: list[Row]
    ) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        outcomes: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [(None, None)] * len(rows)
        items, places = [], []
        for k, row in enumerate(rows):
            if isinstance(row, Malformed):
                outcomes[k] = (None, {"row": first + k, "error": "malformed_row", "message": row.reason})
                continue
            try:
                items.append(next(iter(self.job.plan.arguments(row).values())))
            except Exception as exc:
                outcomes[k] = (None, _error(first + k, exc))
                continue
            places.append(k)
        if items:
            async with self.limit:
                try:
                    results = await self.caller(items)
                except Exception as exc:
                    results = [exc] * len(items)
            for k, result in zip(places, results, strict=True):
                failed = isinstance(result, Exception)
                outcomes[k] = (
                    (None, _error(first + k, result)) if failed else (output_row(first + k, result), None)
                )
        self.bar.update(len(rows))
        return outcomes

    async def _one(self, index: int, row: Row) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if isinstance(row, Malformed):
            self.bar.update(1)
            return None, {"row": index, "error": "malformed_row", "message": row.reason}
        async with self.limit:
            try:
                result = await self.caller(**self.job.plan.arguments(row))
            except Exception as exc:
                self.bar.update(1)
                return None, _error(index, exc)
        self.bar.update(1)
        return output_row(index, result), None

    async def _write(self, index: int, pending: asyncio.Future[list[Any]]) -> None:
        results: Sequence[tuple[dict[str, Any] | None, dict[str, Any] | None]] = await pending
        rows = [row for row, _ in results if row is not None]
        errors = [error for _, error in results if error is not None]
        await asyncio.to_thread(self.checkpoint.write, index, rows, errors)
        self.succeeded += len(rows)
        self.failed += len(errors)
        if self.failed > self.job.max_failures:
            raise BatchAbortedError(
                f"{self.failed} rows failed, more than max_failures={self.job.max_failures}; see "
                f"{str(self.checkpoint.folder)!r} for the finished chunks' errors, fix the cause and --resume"
            )


def _error(index: int, exc: BaseException) -> dict[str, Any]:
    return {"row": index, "error": type(exc).__name__, "message": str(exc)}


async def _flattened(groups: Awaitable[list[list[Any]]]) -> list[Any]:
    return [outcome for group in await groups for outcome in group]
