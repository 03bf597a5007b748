"""`job_context()`: what user code running as an async job knows about it, and its progress."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    """The job running the current call, set by the job runner."""

    job_id: str
    """The job's id, as in `/-/jobs/{id}`."""
    attempt: int
    """Which attempt this is, from 1. Above 1 after a failed attempt or a server restart."""
    report: Callable[[float], None]

    def progress(self, fraction: float) -> None:
        """Report how far the job got, from 0.0 to 1.0 (shown at `/-/jobs/{id}`)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress takes a fraction from 0.0 to 1.0, like 0.4; got {fraction!r}")
        self.report(float(fraction))


_current: ContextVar[JobContext | None] = ContextVar("servekit_job", default=None)


def job_context() -> JobContext:
    """The async job the calling code runs as.

    Call it inside a deployment method running as a job (`mode="async"`, `Prefer: respond-async`
    or `handle.method.submit(...)`); elsewhere it raises `RuntimeError`.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError("servekit.job_context() was called outside an async job")
    return context


def enter_job(context: JobContext) -> object:
    """Make `context` current; returns a token for `exit_job`."""
    return _current.set(context)


def exit_job(token: object) -> None:
    """Restore the job context that was current before `enter_job`."""
    _current.reset(token)  # type: ignore[arg-type]
