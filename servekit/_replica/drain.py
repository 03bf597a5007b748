"""How fast a deployment's queue drains: completion times in, completions per second and Retry-After out.

`DrainRate` counts completions over busy time only (while at least one request runs), so an idle
spell does not read as a slow model. A window that holds `window_s` of busy time closes when a
later completion comes (so requests finishing together, like a batch, fall in one window), and
its rate (completions / busy seconds) enters an exponentially weighted moving average. The open
window counts too once it holds `window_s` (so a model that slows down shows sooner), and stands
in alone before the first window closes. Nothing here reads a clock: callers pass `now`.
"""

from __future__ import annotations

import math

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60


class DrainRate:
    """Completions per second while busy, an EWMA over windows of `window_s` busy seconds."""

    def __init__(self, window_s: float = 1.0, weight: float = 0.5) -> None:
        self.window_s = window_s
        self.weight = weight
        """How much a closed window counts against the average of the ones before it."""
        self._since: float | None = None
        self._busy_s = 0.0
        self._count = 0
        self._rate: float | None = None

    @property
    def idle(self) -> bool:
        """Whether no busy spell is open (nothing ran since the last completion that left it idle)."""
        return self._since is None

    def busy(self, now: float) -> None:
        """A request started running; opens a busy spell if none is open."""
        if self._since is None:
            self._since = now

    def completed(self, now: float, idle: bool) -> None:
        """A request finished at `now`; `idle`: nothing runs any more, so the busy spell ends."""
        elapsed = max(0.0, now - self._since) if self._since is not None else 0.0
        if self._count and elapsed > 0 and self._busy_s + elapsed >= self.window_s:
            sample = self._count / max(self._busy_s, 1e-9)
            self._rate = sample if self._rate is None else self._blend(sample)
            self._busy_s = 0.0
            self._count = 0
        self._busy_s += elapsed
        self._count += 1
        self._since = None if idle else now

    def per_second(self, now: float) -> float | None:
        """Completions per busy second, or None before any completion."""
        busy_s = self._busy_s + (max(0.0, now - self._since) if self._since is not None else 0.0)
        open_rate = self._count / busy_s if busy_s > 0 else None
        if self._rate is None:
            return open_rate if self._count else None
        if open_rate is not None and busy_s >= self.window_s:
            return self._blend(open_rate)
        return self._rate

    def retry_after_s(self, queued: int, now: float) -> int:
        """Seconds until `queued` requests drain at the current rate, within [1, 60]; 1 when unknown."""
        rate = self.per_second(now)
        if rate is None or queued <= 0:
            return RETRY_AFTER_MIN_S
        if rate <= 0:
            return RETRY_AFTER_MAX_S
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(queued / rate - 1e-9)))

    def _blend(self, sample: float) -> float:
        assert self._rate is not None
        return self.weight * sample + (1 - self.weight) * self._rate
