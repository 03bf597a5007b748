"""The open-loop schedule and coordinated-omission-correct latency, as pure functions.

An open-loop run at `rate` requests/s sends request k at its intended time `start + k / rate`,
whatever the server does. When every connection is busy at that time, the request waits for one,
and its latency counts from the intended time, so a stalled server shows in the percentiles
instead of silently slowing the sender down (coordinated omission). A request that a free
connection sends a little late only because a timer fired late counts from when it was sent:
that delay is the load generator's, not the server's. Several processes share one schedule by
taking every `stride`-th request, starting at their `offset`. With Poisson arrivals
(`PoissonSchedule`) the gaps between requests are random (exponential, seeded), as from many
independent clients; each of `stride` processes then runs its own Poisson process at
`rate / stride`, and together they make one at `rate`. Times are seconds on one monotonic clock;
nothing here reads it.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

ARRIVALS = ("constant", "poisson")


class Arrivals(Protocol):
    """When each of a process's requests is due."""

    def intended(self, k: int) -> float:
        """When this process's request `k` is meant to be sent."""
        ...

    def count_before(self, deadline: float) -> int:
        """How many of this process's requests are meant to be sent before `deadline`."""
        ...


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


@dataclass
class PoissonSchedule:
    """This process's requests at random times: exponential gaps averaging `stride / rate`."""

    start: float
    rate: float
    offset: int = 0
    stride: int = 1
    seed: int = 0
    _times: list[float] = field(default_factory=list, repr=False)
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        Schedule(self.start, self.rate, self.offset, self.stride)  # the same checks
        self._random = random.Random(self.seed * 1_000_003 + self.offset)

    def _extend_past(self, k: int | None = None, deadline: float | None = None) -> None:
        rate = self.rate / self.stride
        while (k is not None and len(self._times) <= k) or (
            deadline is not None and (not self._times or self._times[-1] < deadline)
        ):
            last = self._times[-1] if self._times else self.start
            self._times.append(last + self._random.expovariate(rate))

    def intended(self, k: int) -> float:
        """When this process's request `k` is meant to be sent."""
        self._extend_past(k=k)
        return self._times[k]

    def count_before(self, deadline: float) -> int:
        """How many of this process's requests are meant to be sent before `deadline`."""
        self._extend_past(deadline=deadline)
        return bisect.bisect_left(self._times, deadline)


def arrivals(kind: str, start: float, rate: float, offset: int = 0, stride: int = 1) -> Arrivals:
    """The schedule of `kind` ("constant" or "poisson")."""
    if kind == "constant":
        return Schedule(start, rate, offset, stride)
    if kind == "poisson":
        return PoissonSchedule(start, rate, offset, stride)
    raise ValueError(f"unknown arrival process {kind!r}; one of {', '.join(ARRIVALS)}")


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
