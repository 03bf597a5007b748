"""The open-loop schedule and coordinated-omission-correct latency, as pure functions.

An open-loop run at `rate` requests/s sends request k at its intended time `start + k / rate`,
whatever the server does. When every connection is busy at that time, the request waits for one,
and its latency counts from the intended time, so a stalled server shows in the percentiles
instead of silently slowing the sender down (coordinated omission). A request that a free
connection sends a little late only because a timer fired late counts from when it was sent:
that delay is the load generator's, not the server's. Several processes share one schedule by
taking every `stride`-th request, starting at their `offset`. Times are seconds on one
monotonic clock; nothing here reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Request k of this process is the global request `offset + k * stride` of a run at `rate`."""

    start: float
    rate: float
    offset: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be above 0 requests/s, not {self.rate}")
        if self.stride < 1 or not 0 <= self.offset < self.stride:
            raise ValueError(f"offset {self.offset} and stride {self.stride}: need 0 <= offset < stride")

    def intended(self, k: int) -> float:
        """When this process's request `k` is meant to be sent."""
        return self.start + (self.offset + k * self.stride) / self.rate

    def count_before(self, deadline: float) -> int:
        """How many of this process's requests are meant to be sent before `deadline`."""
        global_count = math.ceil((deadline - self.start) * self.rate - 1e-9)
        if global_count <= self.offset:
            return 0
        return (global_count - self.offset + self.stride - 1) // self.stride


def latency_start(intended: float, picked_at: float, sent_at: float) -> float:
    """When a request's latency starts: its intended time if it waited for a connection
    (picked up at or after it was due), else when it was sent (a free connection was waiting)."""
    return intended if picked_at >= intended else sent_at


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole shares that differ by at most one, largest first."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, not {parts}")
    share, extra = divmod(total, parts)
    return [share + (1 if index < extra else 0) for index in range(parts)]
