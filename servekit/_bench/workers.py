"""Load from several processes at once: a pool of worker processes, each running its share of a
phase (`servekit._bench.load`), started together and merged into one result.

Phases go to the workers over pipes; each connects, says it is ready, gets one common start time,
reports its progress five times a second, and sends back its `PhaseResult`. Workers stay up
between the phases of a run and are spawned (not forked), so they hold nothing of the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from types import TracebackType
from typing import Any

from servekit._bench.load import BenchError, PhasePlan, PhaseResult, PhaseRunner, clock

ProgressCallback = Callable[[int, int], None]
"""Called with (requests finished, requests failed) so far in the phase, warm-up included."""

_PROGRESS_INTERVAL_S = 0.2
_START_MARGIN_S = 0.1


class WorkerPool:
    """`processes` load worker processes; `run(plans)` runs one phase on them."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise BenchError(f"--processes must be at least 1, not {processes}")
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Pipe] = []
        self._processes: list[Any] = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    @property
    def size(self) -> int:
        """How many worker processes there are."""
        return len(self._processes)

    def run(self, plans: Sequence[PhasePlan | None], on_progress: ProgressCallback) -> PhaseResult:
        """Run one phase: `plans[i]` on worker i (None: that worker sits this phase out)."""
        active = [(pipe, plan) for pipe, plan in zip(self._pipes, plans, strict=True) if plan is not None]
        for pipe, plan in active:
            pipe.send(("phase", plan))
        pipes = [pipe for pipe, _ in active]
        self._await_all(pipes, "ready")
        start_at = clock() + _START_MARGIN_S
        for pipe in pipes:
            pipe.send(("start", start_at))
        return self._collect(pipes, on_progress)

    def _await_all(self, pipes: list[Pipe], expected: str) -> None:
        """Wait until every worker said `expected`; if any failed, release the others and raise."""
        errors, waiting = [], []
        for pipe in pipes:
            message = self._receive(pipe)
            if message[0] == "error":
                errors.append(message[1])
            elif message[0] == expected:
                waiting.append(pipe)
            else:
                raise BenchError(f"a load worker said {message[0]!r} where {expected!r} was due")
        if errors:
            for pipe in waiting:  # they wait for a start: tell them there is none
                pipe.send(("abort",))
            for pipe in waiting:
                self._receive(pipe)  # "aborted"
            raise BenchError(errors[0])

    def _collect(self, pipes: list[Pipe], on_progress: ProgressCallback) -> PhaseResult:
        progress = {id(pipe): (0, 0) for pipe in pipes}
        merged = PhaseResult()
        pending = list(pipes)
        while pending:
            for ready in wait(pending, timeout=1.0):
                pipe = ready if isinstance(ready, Pipe) else None
                assert pipe is not None
                message = self._receive(pipe)
                if message[0] == "progress":
                    progress[id(pipe)] = (message[1], message[2])
                    on_progress(sum(p[0] for p in progress.values()), sum(p[1] for p in progress.values()))
                elif message[0] == "result":
                    merged.merge(message[1])
                    pending.remove(pipe)
                else:
                    raise BenchError(str(message[1]))
            self._check_alive()
        return merged

    def _receive(self, pipe: Pipe) -> tuple[Any, ...]:
        while not pipe.poll(0.5):
            self._check_alive()
        try:
            message: tuple[Any, ...] = pipe.recv()
        except EOFError:
            raise BenchError("a load worker process exited unexpectedly") from None
        return message

    def _check_alive(self) -> None:
        dead = [p for p in self._processes if not p.is_alive()]
        if dead:
            raise BenchError(f"a load worker process exited unexpectedly (exit code {dead[0].exitcode})")

    def close(self) -> None:
        """Stop every worker."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def worker_main(pipe: Pipe) -> None:
    """A worker process: run the phases the parent sends until it says stop."""
    gc.freeze()  # what the imports made is never garbage: full collections skip it (no ms pauses)
    loop = _new_loop()
    try:
        while True:
            message = pipe.recv()
            if message[0] == "stop":
                return
            if message[0] != "phase":
                continue
            try:
                result = loop.run_until_complete(_run_phase(message[1], pipe))
            except BenchError as exc:
                pipe.send(("error", str(exc)))
                continue
            if result is not None:
                pipe.send(("result", result))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        loop.close()


async def _run_phase(plan: PhasePlan, pipe: Pipe) -> PhaseResult | None:
    runner = PhaseRunner(plan)
    await runner.connect()
    try:
        pipe.send(("ready",))
        command = pipe.recv()  # the loop has nothing else to do until the start
        if command[0] != "start":
            pipe.send(("aborted",))
            return None
        reporter = asyncio.create_task(_report(runner, pipe))
        try:
            result = await runner.run(command[1])
        finally:
            reporter.cancel()
        pipe.send(("progress", runner.completed, runner.failed))
        return result
    finally:
        await runner.close()


async def _report(runner: PhaseRunner, pipe: Pipe) -> None:
    while True:
        await asyncio.sleep(_PROGRESS_INTERVAL_S)
        pipe.send(("progress", runner.completed, runner.failed))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 (optional: the fastest loop where it is installed)
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
