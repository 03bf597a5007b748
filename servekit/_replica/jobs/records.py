"""What a job is: its states, its stored record, its outcome, and the pure retry/expiry rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class NewJob:
    """A job to store: what runs it (`kind`, `target`), its input and its settings."""

    id: str
    kind: str
    """Which executor runs it: "http" (a stored request) or "python" (pickled handle arguments)."""
    target: str
    """What it calls, like "POST /summarize" or "Api.summarize"; limits and listings group by it."""
    payload: bytes
    priority: int = 0
    max_attempts: int = 1
    concurrency: int = 8
    max_queued: int = 10_000
    result_ttl_s: float = 86_400.0
    idempotency_key: str | None = None
    webhook_url: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """Retry backoff and webhook settings, kept with the job so a restarted server uses them."""


@dataclass(frozen=True)
class JobRecord:
    """A stored job as it is now (without its payload and result bytes)."""

    id: str
    kind: str
    target: str
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    concurrency: int = 8
    result_ttl_s: float = 86_400.0
    settings: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    result_status: int | None = None
    result_type: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """The JSON status document served at `/-/jobs/{id}`."""
        return {
            "id": self.id,
            "state": self.state,
            "target": self.target,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "progress": self.progress,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "links": {"self": f"/-/jobs/{self.id}", "result": f"/-/jobs/{self.id}/result"},
        }


@dataclass(frozen=True)
class JobResult:
    """A finished job's result as the client gets it: an HTTP status, a media type and the body."""

    status: int
    media_type: str
    body: bytes


def iso(timestamp: float | None) -> str | None:
    """`timestamp` (seconds since the epoch) as an ISO 8601 UTC string."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def retry_delay_s(attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    """The wait before the attempt after failed attempt number `attempt` (1-based): doubling."""
    return float(min(max_backoff_s, backoff_s * 2 ** max(0, attempt - 1)))


def should_retry(attempt: int, max_attempts: int, retryable: bool) -> bool:
    """Whether a job whose attempt number `attempt` failed runs again."""
    return retryable and attempt < max_attempts
