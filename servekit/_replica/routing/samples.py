"""What a router saw of one finished call: the evidence every rollout decision is made from.

In: the router records one `ArmSample` per call it routed (primary and shadow arms alike).
Out: rollout analysis (canary checks, A/B reports, shadow comparisons) reads windows of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ArmSample:
    """One call that went through a router arm and finished (answered or failed)."""

    arm: str
    """The arm's name in the router (a key of `sk.split`'s arms or shadows)."""
    ok: bool
    """False when the call raised (any error the caller saw, timeouts included)."""
    latency_s: float
    """Seconds from the router's dispatch to the call's end."""
    at: float
    """When the call ended, on the router's monotonic clock (seconds)."""
    output: object | None = None
    """The declared output extracted from the result (a label or a number), None if unknown."""
    request_id: str | None = None
    """The request's id, so shadow and primary answers to one request can be paired."""
    shadow: bool = False
    """True for a mirrored call whose result was never returned to the caller."""
