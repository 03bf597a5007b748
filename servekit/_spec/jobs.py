"""`JobOptions`: how an endpoint's async jobs are queued, run, retried and kept (pure data)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JobOptions(BaseModel):
    """Per-endpoint settings of async jobs (`@endpoint(..., mode="async", jobs=JobOptions(...))`).

    Jobs of an endpoint without its own options use the defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    retries: int = Field(0, ge=0, le=100, description="Extra attempts after a failed one (0: run once).")
    backoff_s: float = Field(
        1.0, ge=0, description="Wait before the first retry; each later retry waits twice as long."
    )
    max_backoff_s: float = Field(300.0, ge=0, description="The longest wait between two attempts.")
    concurrency: int = Field(
        8, ge=1, description="Jobs of this endpoint that one server runs at once; the rest wait queued."
    )
    priority: int = Field(0, description="Higher runs first among queued jobs of every endpoint.")
    max_queued: int = Field(
        10_000,
        ge=1,
        description="Unfinished jobs (queued or running) the endpoint holds; past it submissions get 503.",
    )
    result_ttl_s: float = Field(
        86_400.0, gt=0, description="How long a finished job and its result are kept (then 404)."
    )
    webhook_url: str | None = Field(
        None,
        description=(
            "POSTed the job's status document when it finishes, signed with HMAC-SHA256 in "
            "`X-Servekit-Signature: sha256=<hex>`; retried on failure."
        ),
    )
    webhook_secret: str | None = Field(
        None, description="The HMAC key of webhook signatures; default: the SERVEKIT_WEBHOOK_SECRET variable."
    )
    webhook_attempts: int = Field(5, ge=1, le=20, description="How many times a webhook is tried.")
