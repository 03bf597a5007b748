"""Where a replica runs a plain `def` method: inline on the event loop, or on a worker thread.

A handoff to a thread costs tens of microseconds, more than many model stages take, so a short
method runs inline on the loop; a slow, blocking or unknown one runs on a thread, where it
cannot stall the loop. `SyncCallPolicy` decides per method: durations in (measured by the
replica, with the time they ended), `inline` out. Nothing here reads a clock, so the policy is
tested with a fake one.

The rules (`InlineLimits` holds the numbers):

- a new method runs on threads for its first `warmup_calls` calls, measured there;
- it moves inline once its typical duration (an exponentially weighted average; on threads,
  of the CPU time, since waits for the GIL inflate the wall time) is under `inline_below_s`,
  and one of its thread calls took under `inline_below_s` of wall time (a method that sleeps
  or waits on I/O uses no CPU, but is not short);
- an inline call that takes longer than `demote_above_s` sends it back to threads at once,
  for `backoff_s` or `1 / stall_share` times the stall, whichever is longer (so one method
  stalls the loop for at most about `stall_share` of the time), doubling with each demotion
  up to `max_backoff_s`. After `forgive_after_calls` calls or `forgive_after_s` inline, the
  next demotion starts again from the bottom: a rare stall, like the process being
  descheduled, costs little. A typical duration that creeps over `inline_below_s` sends it
  back too;
- on threads it is still measured, so a method that became fast again returns inline (the
  re-probe) once its backoff has passed;
- a method that waits on a handle (`.result()`, `for chunk in stream`) needs a thread, since
  waiting on the loop would deadlock it: it stays on threads for good.

`threaded` and `inline` (public as `sk.threaded`, `sk.inline`) force a mode for a method, a
class or a function deployment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

SyncMode = Literal["auto", "thread", "inline"]
"""How a deployment's sync methods run: measured (`auto`, the default), or forced."""

T = TypeVar("T", bound=Callable[..., Any] | type)

_MODE_ATTR = "__servekit_sync_mode__"


@dataclass(frozen=True)
class InlineLimits:
    """The numbers behind `SyncCallPolicy`."""

    inline_below_s: float = 0.001
    """A method whose typical duration is under this runs inline."""
    demote_above_s: float = 0.005
    """One inline call longer than this sends the method back to threads at once."""
    warmup_calls: int = 3
    """Calls measured on threads before a method may run inline."""
    smoothing: float = 0.2
    """Weight of the newest duration in the typical duration."""
    backoff_s: float = 0.1
    """Time on threads after the first demotion; each further demotion doubles it."""
    max_backoff_s: float = 60.0
    """The longest time on threads after a demotion."""
    stall_share: float = 0.01
    """After a stall of d seconds, at least d / stall_share seconds on threads."""
    forgive_after_calls: int = 1000
    """A demotion after this many calls inline counts as the first again."""
    forgive_after_s: float = 60.0
    """A demotion after this long inline counts as the first again."""


DEFAULT_LIMITS = InlineLimits()


class SyncCallPolicy:
    """Whether the next call of one sync method runs inline, from how long its calls took."""

    __slots__ = (
        "_blocked_until",
        "_demotions",
        "_fastest_s",
        "_inline_calls",
        "_limits",
        "_pinned",
        "_promoted_at",
        "_samples",
        "inline",
        "mode",
        "typical_s",
    )

    def __init__(self, mode: SyncMode = "auto", limits: InlineLimits = DEFAULT_LIMITS) -> None:
        self.mode = mode
        self._limits = limits
        self.inline = mode == "inline"
        """Run the next call inline on the event loop (read on every call)."""
        self.typical_s: float | None = None
        """The typical duration (an exponentially weighted average), None before the first call."""
        self._samples = 0
        self._fastest_s = float("inf")
        self._demotions = 0
        self._promoted_at = float("-inf")
        self._inline_calls = 0
        self._blocked_until = 0.0
        self._pinned = False

    def record(self, duration_s: float, ran_inline: bool, now: float, cpu_s: float | None = None) -> None:
        """Take a call that ended at `now` into account: its wall time, and on a thread its CPU time.

        On a thread the wall time also counts waits for the GIL behind other threads, which
        say nothing about the method, so the typical duration follows the CPU time there, and
        the fastest wall time must be short too (a method that sleeps uses no CPU).
        """
        if self.mode != "auto":
            return
        limits = self._limits
        sample = duration_s if ran_inline or cpu_s is None else min(duration_s, cpu_s)
        typical = self.typical_s
        typical = sample if typical is None else typical + limits.smoothing * (sample - typical)
        self.typical_s = typical
        self._samples += 1
        if ran_inline:
            self._inline_calls += 1
            if duration_s > limits.demote_above_s:
                self._demote(now, duration_s)
            elif typical > limits.inline_below_s:
                self.inline = False
                self._fastest_s = float("inf")
            return
        self._fastest_s = min(self._fastest_s, duration_s)
        if (
            not self._pinned
            and self._samples >= limits.warmup_calls
            and typical < limits.inline_below_s
            and self._fastest_s < limits.inline_below_s
            and now >= self._blocked_until
        ):
            self.inline = True
            self._promoted_at = now
            self._inline_calls = 0

    def pin_thread(self) -> None:
        """Run this method on threads from now on (it waits on handles, which needs a thread)."""
        if self.mode == "auto":
            self._pinned = True
            self.inline = False

    @property
    def blocked_until(self) -> float:
        """The time before which the method stays on threads after a demotion."""
        return self._blocked_until

    def _demote(self, now: float, stall_s: float) -> None:
        limits = self._limits
        self.inline = False
        self._fastest_s = float("inf")
        if (
            self._inline_calls >= limits.forgive_after_calls
            or now - self._promoted_at > limits.forgive_after_s
        ):
            self._demotions = 0
        self._demotions += 1
        base = max(limits.backoff_s, stall_s / limits.stall_share)
        wait = base * 2 ** min(self._demotions - 1, 30)
        self._blocked_until = now + min(wait, limits.max_backoff_s)


def _mark(target: T, mode: SyncMode) -> T:
    setattr(getattr(target, "target", target), _MODE_ATTR, mode)  # a Deployment: mark its class
    return target


def threaded(target: T) -> T:
    """Always run this sync method (or every sync method of this class or function) on a thread.

    For code that blocks (sleep, I/O, a long model call) or waits on handles with
    `.result()` only now and then; servekit would move such code to a thread after the first
    slow call anyway, but this keeps even that one call off the event loop.
    """
    return _mark(target, "thread")


def inline(target: T) -> T:
    """Always run this sync method (or every sync method of this class) inline on the event loop.

    For tiny, never-blocking code (a tokenizer call, a reshape): it skips the warm-up on
    threads. A call that blocks stalls every request of the replica meanwhile, and an inline
    call cannot be cut off by `request_timeout_s` while it runs.
    """
    return _mark(target, "inline")


def sync_mode(method: Callable[..., Any], owner: object) -> SyncMode:
    """The mode forced on `method` or on its class / function `owner`, else "auto"."""
    for marked in (method, getattr(method, "__func__", None), owner):
        mode = getattr(marked, _MODE_ATTR, None)
        if mode in ("thread", "inline"):
            return mode  # type: ignore[no-any-return]
    return "auto"


_waits = threading.local()


def note_blocking_wait() -> None:
    """Record that the current thread is about to block on a handle (`.result()`, sync iteration)."""
    _waits.count = getattr(_waits, "count", 0) + 1


def blocking_waits() -> int:
    """How many blocking waits the current thread has recorded (compare before and after a call)."""
    count: int = getattr(_waits, "count", 0)
    return count
