"""`LatencyWindow`: the latencies of recent calls, bounded in count whatever the request rate.

Calls add (time, latency) pairs; the oldest fall out once `capacity` are kept. The local
controller drains it into each autoscaling sample; a Ray replica reads the p95 of the last
`span_s` seconds for Ray's autoscaler. Nothing here reads a clock: callers pass `now`.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_CAPACITY = 4096
"""Latencies kept at most: enough for a p95, and flat memory at any request rate."""


class LatencyWindow:
    """Recent call latencies in milliseconds, at most `capacity` of them."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._entries: deque[tuple[float, float]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, now: float, latency_ms: float) -> None:
        """Record one call that took `latency_ms` and ended at `now`."""
        self._entries.append((now, latency_ms))

    def drain(self) -> tuple[float, ...]:
        """The latencies recorded since the last drain (the most recent `capacity`), oldest first."""
        latencies = tuple(latency for _, latency in self._entries)
        self._entries.clear()
        return latencies

    def p95(self, now: float, span_s: float) -> float | None:
        """The 95th percentile (nearest rank) of calls that ended in the last `span_s`; None if none."""
        while self._entries and self._entries[0][0] < now - span_s:
            self._entries.popleft()
        if not self._entries:
            return None
        latencies = sorted(latency for _, latency in self._entries)
        return latencies[min(len(latencies), math.ceil(0.95 * len(latencies))) - 1]
