"""When a batch queue dispatches: queue state and learned estimates in, a decision out.

`BatchQueue` asks `decide` what to do whenever something changes (an item arrives while the
model is free, a batch finishes, a hold expires). The rules, in order:

1. busy: `max_concurrent_batches` batches run already, so arrivals wait and form the next one
   (batches grow with load);
2. full: `max_batch_size` items wait, or the window is over: `max_wait_ms` since the oldest
   item arrived or since the queue got room to run a batch, whichever is later (time spent
   waiting for a running batch is not the batcher's choice, and a model that blocks the event
   loop holds back the arrivals behind it);
3. coming: calls that entered this replica and have not reached the queue yet (a front end
   counts them: Ray Serve's HTTP path fetches each body from the proxy after the request
   entered) are known to be on their way: hold until the window ends or they are all in;
4. backlogged: the event loop ran the latest arrival's decision late (by `BACKLOG_LAG` of
   `max_wait_ms` or more), so other calls are being worked on in this process and reach the
   queue soon: hold until the window ends. Waiting idles nothing here, and every call that
   joins saves a batch's fixed cost. This is what fills batches behind a busy front end
   (Ray Serve's proxy and replica machinery deliver calls in bursts, each costing the loop
   milliseconds), where gaps alone cannot tell a burst from its end;
5. nothing learned yet (no batch cost, or no gap between queued arrivals seen): dispatch, so
   a lone caller pays no window;
6. with `wait="adaptive"`, hold only while waiting pays: the next arrival is expected sooner
   than the fixed cost of a batch it would otherwise pay for (`gap + per_item < fixed`), and
   only while the queue keeps growing: at most `HOLD_GAPS` typical gaps (and one fixed cost)
   after the last arrival, and never past the window;
7. with `wait="fill"`, hold until the window ends under load: when the last batch had more than
   one item, or the next arrival is expected within the window (`gap < max_wait`). Every
   batch then fills for its whole window, as Ray Serve's `@serve.batch` and Triton's queue
   delay do, while a lone caller (the last batch was one item and no gap, or only gaps longer
   than the window, were seen) still pays no window.

`CostModel` learns a batch's duration as `fixed + per_item * size` (an exponentially weighted
least-squares fit), and `ArrivalGap` the typical (median) time between arrivals while items
are queued, which a burst's silence does not inflate. Nothing
here reads a clock: callers pass `now`, so a test with a fake clock reproduces a run exactly.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

COST_WEIGHT = 0.1
"""Weight of the newest batch in the cost fit (older ones fade geometrically)."""
GAP_SAMPLES = 9
"""How many recent arrival gaps the typical gap is the median of."""
HOLD_GAPS = 8.0
"""A hold ends once no item arrived for this many typical gaps: the queue stopped growing."""
BACKLOG_LAG = 0.1
"""A decision that runs this share of `max_wait_s` late finds the event loop backlogged."""
_MIN_SIZE_VARIANCE = 0.25
"""Below this spread of batch sizes the fit cannot tell fixed from per-item cost."""


WAIT_MODES = ("adaptive", "fill")
"""How a batch holds for more items: only while it pays (`adaptive`), or for its whole window
whenever arrivals are dense enough to join it (`fill`)."""


@dataclass(frozen=True)
class BatchLimits:
    """The options one queue runs with (the decorator's, with a deployment's overrides)."""

    max_batch_size: int
    max_wait_s: float
    max_concurrent_batches: int = 1
    wait: str | None = None
    """One of `WAIT_MODES`; None until the queue applies its backend's default."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, in the options' own units."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": round(self.max_wait_s * 1000, 3),
            "max_concurrent_batches": self.max_concurrent_batches,
            "wait": self.wait,
        }


@dataclass(frozen=True)
class CostEstimate:
    """A batch of `n` items takes about `fixed_s + per_item_s * n` seconds."""

    fixed_s: float
    per_item_s: float


@dataclass(frozen=True)
class BatchInput:
    """What a decision sees: the clock, the queue and what was learned so far."""

    now: float
    queued: int
    """Items waiting (possibly including ones whose caller left; the queue skips those)."""
    oldest_arrival: float
    last_arrival: float
    running: int
    """Batches executing now."""
    limits: BatchLimits
    cost: CostEstimate | None = None
    arrival_gap_s: float | None = None
    """Typical (median) time between recent arrivals while items were queued; None before any."""
    room_since: float = 0.0
    """When the queue last got room to run a batch (a running one finished)."""
    loop_lag_s: float = 0.0
    """How late the event loop ran the latest arrival's decision: its backlog of other work."""
    on_their_way: int = 0
    """Calls inside this replica known to be coming (see `servekit._replica.arrivals`)."""
    last_batch_size: int = 0
    """Items in the batch started last (0 before the first)."""


@dataclass(frozen=True)
class BatchDecision:
    """Dispatch now, or hold until `hold_until` (None: until a batch finishes or items arrive)."""

    dispatch: bool
    hold_until: float | None
    reason: str


def decide(state: BatchInput) -> BatchDecision:
    """Whether the queue should start a batch now, and if not, until when it holds."""
    decision = _forced(state) or _more_known_to_come(state)
    if decision is not None:
        return decision
    return _hold_to_fill(state) if state.limits.wait == "fill" else _hold_if_it_pays(state)


def _forced(state: BatchInput) -> BatchDecision | None:
    """The decisions the limits make: nothing to do, no room to run, or a batch that must go."""
    limits = state.limits
    if state.queued == 0:
        return BatchDecision(False, None, "empty")
    if state.running >= limits.max_concurrent_batches:
        return BatchDecision(False, None, "busy")
    if state.queued >= limits.max_batch_size:
        return BatchDecision(True, None, "full")
    if state.now >= window_end(state):
        return BatchDecision(True, None, "max_wait")
    return None


def window_end(state: BatchInput) -> float:
    """When the batch being formed must go: `max_wait_s` after its oldest item could first run."""
    return max(state.oldest_arrival, state.room_since) + state.limits.max_wait_s


def _more_known_to_come(state: BatchInput) -> BatchDecision | None:
    """A hold to the window's end while calls are known to be coming (or the loop is backlogged)."""
    if state.on_their_way > 0:
        return BatchDecision(False, window_end(state), "calls are on their way")
    if state.loop_lag_s >= BACKLOG_LAG * state.limits.max_wait_s:
        return BatchDecision(False, window_end(state), "the event loop is backlogged")
    return None


def _hold_to_fill(state: BatchInput) -> BatchDecision:
    """Hold to the window's end under load (calls overlapped in the last batch, or arrive within
    a window of each other), else go."""
    if state.last_batch_size > 1:
        return BatchDecision(False, window_end(state), "filling the window")
    gap = state.arrival_gap_s
    if gap is None:
        return BatchDecision(True, None, "nothing learned")
    if gap >= state.limits.max_wait_s:
        return BatchDecision(True, None, "arrivals too sparse to fill the window")
    return BatchDecision(False, window_end(state), "filling the window")


def _hold_if_it_pays(state: BatchInput) -> BatchDecision:
    """Hold for the next arrival while it is due sooner than the fixed cost it saves, else go."""
    cost, gap = state.cost, state.arrival_gap_s
    if cost is None or gap is None:
        return BatchDecision(True, None, "nothing learned")
    saving = cost.fixed_s - cost.per_item_s
    if gap >= saving:
        return BatchDecision(True, None, "arrivals too sparse to pay for a wait")
    quiet_since = max(state.last_arrival, state.room_since)  # a batch that blocked the loop is no silence
    hold_until = min(window_end(state), quiet_since + min(saving, HOLD_GAPS * gap))
    if state.now >= hold_until:
        return BatchDecision(True, None, "the queue stopped growing")
    return BatchDecision(False, hold_until, "holding for the next arrival")


class CostModel:
    """Learns `CostEstimate` from (batch size, duration) pairs."""

    def __init__(self, weight: float = COST_WEIGHT) -> None:
        self._weight = weight
        self._mean_n = 0.0
        self._mean_d = 0.0
        self._mean_nn = 0.0
        self._mean_nd = 0.0
        self._per_item_s = 0.0
        self.estimate: CostEstimate | None = None
        """The current fit; None before the first batch."""

    def observe(self, size: int, duration_s: float) -> None:
        """Fold in one finished batch of `size` items that took `duration_s`."""
        if self.estimate is None:
            self._mean_n, self._mean_d = float(size), duration_s
            self._mean_nn, self._mean_nd = float(size * size), size * duration_s
        else:
            w = self._weight
            self._mean_n += w * (size - self._mean_n)
            self._mean_d += w * (duration_s - self._mean_d)
            self._mean_nn += w * (size * size - self._mean_nn)
            self._mean_nd += w * (size * duration_s - self._mean_nd)
        variance = self._mean_nn - self._mean_n * self._mean_n
        if variance >= _MIN_SIZE_VARIANCE:
            slope = (self._mean_nd - self._mean_n * self._mean_d) / variance
            self._per_item_s = max(0.0, slope)
        fixed = max(0.0, self._mean_d - self._per_item_s * self._mean_n)
        self.estimate = CostEstimate(fixed, self._per_item_s)


class ArrivalGap:
    """The typical time between arrivals while items are queued (arrivals to an empty queue start
    no gap): the median of the last `GAP_SAMPLES` gaps.

    A median, not a mean: arrivals through a busy proxy (Ray Serve's, say) come in bursts with
    long silences between them, and one silence must not make the batcher stop holding inside
    the next burst. Where gaps are long most of the time, the median is long too.
    """

    def __init__(self, samples: int = GAP_SAMPLES) -> None:
        self._recent: deque[float] = deque(maxlen=samples)
        self.typical_s: float | None = None

    def observe(self, gap_s: float) -> None:
        """Fold in one gap between two queued arrivals."""
        self._recent.append(gap_s)
        self.typical_s = statistics.median(self._recent)

    def observe_silence(self, waited_s: float) -> None:
        """A hold ended with no arrival for `waited_s`: the gap is at least that long.

        The expected gap given that it exceeds `waited_s` is `waited_s` plus the typical gap
        (arrivals without memory), so a run of silent holds (half the samples) moves the median
        past what pays for a wait.
        """
        self.observe(waited_s + (self.typical_s or 0.0))
