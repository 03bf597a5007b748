"""`ReplicaSet`: the replicas of one deployment, admission control and the bounded wait queue.

A request goes to the less loaded of two randomly chosen replicas that has room (fewer than
`max_ongoing_requests`). When none has room it waits in a FIFO queue of at most
`max_queued_requests`; beyond that it is refused with `OverloadedError` (HTTP 503), whose
`retry_after_s` is how long the queue takes to drain at the rate requests complete (`DrainRate`).

A replica's load is its ongoing requests plus its abandoned calls: sync calls whose caller gave
up (a timeout) while their thread runs on. Those keep their slot until the thread returns, so
a replica never runs more than `max_ongoing_requests` calls at once.

A request naming a multiplexed model (with `max_models` set) goes to a replica holding that
model when one has room (`choose_replica`); each slot remembers the ids sent to it, least
recently used first, as its replica's own LRU holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.drain import DrainRate
from servekit._replica.multiplex import choose_replica
from servekit._telemetry import tracing
from servekit.errors import DeploymentUnavailableError, OverloadedError, ServekitError


@dataclass(eq=False)
class ReplicaSlot:
    """A running replica (in-process `Replica` or `ProcessReplica`) and its current load."""

    replica: Any
    node: Any = None
    """The deployment node the replica was built from (a roll replaces those of the old one)."""
    ongoing: int = 0
    abandoned: int = 0
    """Calls still running on the replica after their caller gave up; they keep their slots."""
    drained: asyncio.Event | None = None
    healthy: bool = True
    last_probe: float = 0.0
    probing: bool = False
    models: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """The multiplexed model ids sent to this replica, least recently used first."""


class ReplicaSet:
    """Routes requests to the replicas of one deployment with bounded concurrency and queueing."""

    def __init__(
        self,
        deployment: str,
        max_ongoing_requests: int,
        max_queued_requests: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self._max_ongoing = max_ongoing_requests
        self._max_queued = max_queued_requests
        self._slots: list[ReplicaSlot] = []
        self._waiters: deque[asyncio.Future[ReplicaSlot]] = deque()
        self._rng = rng or random.Random()
        self._clock = clock
        self._drain = DrainRate()
        self._closed = False
        self._idle: asyncio.Event | None = None
        self.rejected = 0
        self.on_wait: Callable[[], None] | None = None
        """Called when a request starts waiting while no replica runs (to trigger a cold start)."""
        self.max_models: int | None = None
        """The deployment's `@multiplexed` max_models_per_replica (None: it multiplexes nothing)."""

    @property
    def slots(self) -> list[ReplicaSlot]:
        """The replicas taking requests."""
        return list(self._slots)

    @property
    def ongoing(self) -> int:
        """Requests running on some replica."""
        return sum(slot.ongoing for slot in self._slots)

    @property
    def abandoned(self) -> int:
        """Calls running on some replica after their caller gave up (they hold their slots)."""
        return sum(slot.abandoned for slot in self._slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a replica."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def add(self, replica: Any, now: float = 0.0, node: Any = None) -> ReplicaSlot:
        """Start sending requests to `replica` (built from `node`); it takes queued requests first."""
        slot = ReplicaSlot(replica, node, last_probe=now)
        watch = getattr(replica, "watch_abandoned", None)
        if watch is not None:
            watch(lambda: self._on_abandoned(slot))
        self._slots.append(slot)
        self._hand_over(slot)
        return slot

    def remove(self, slot: ReplicaSlot) -> None:
        """Stop routing to `slot` at once (its replica died; its requests fail on their own)."""
        if slot in self._slots:
            self._slots.remove(slot)
        slot.ongoing = slot.abandoned = 0
        if slot.drained is not None:
            slot.drained.set()

    def fail_waiting(self, error: ServekitError) -> int:
        """Fail every queued request with `error` (no replica will come soon); returns how many."""
        failed = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                failed += 1
        return failed

    def configure(self, max_ongoing_requests: int, max_queued_requests: int) -> None:
        """Apply new limits (a redeploy changed them)."""
        self._max_ongoing = max_ongoing_requests
        self._max_queued = max_queued_requests
        for slot in self._slots:
            self._hand_over(slot)

    async def acquire(self, model_id: str | None = None) -> ReplicaSlot:
        """A replica slot with room, waiting in the queue if none has room now.

        With a multiplexed `model_id`, a replica holding that model is preferred.
        """
        slot = await self._acquire(model_id)
        if model_id and self.max_models:
            self._note_model(slot, model_id, self.max_models)
        return slot

    @staticmethod
    def _note_model(slot: ReplicaSlot, model_id: str, max_models: int) -> None:
        slot.models[model_id] = None
        slot.models.move_to_end(model_id)
        while len(slot.models) > max_models:
            slot.models.popitem(last=False)

    async def _acquire(self, model_id: str | None) -> ReplicaSlot:
        if self._closed:
            raise DeploymentUnavailableError(f"deployment {self.deployment!r} is shutting down")
        if self._waiters:
            slot = None
        elif model_id and self.max_models:
            slot = self._choose_for_model(model_id)
        else:
            slot = self._choose()
        if slot is not None:
            slot.ongoing += 1
            if self._drain.idle:
                self._drain.busy(self._clock())
            return slot
        if len(self._waiters) >= self._max_queued:
            self.rejected += 1
            raise self._overloaded()
        return await self._wait_for_slot()

    async def _wait_for_slot(self) -> ReplicaSlot:
        """Queue until a replica has room (`_hand_over` gives it); while tracing, the wait is a span."""
        waiter: asyncio.Future[ReplicaSlot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._slots and self.on_wait is not None:
            self.on_wait()
        queued_at = time.time_ns()
        try:
            slot = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())
            raise
        active = tracing.active()
        if active is not None:  # the wait shows in the trace as a span of its own
            active.record(f"queue {self.deployment}", queued_at, {"servekit.deployment": self.deployment})
        return slot

    def release(self, slot: ReplicaSlot) -> None:
        """Give back the room taken by `acquire`; a queued request takes it at once."""
        slot.ongoing = max(0, slot.ongoing - 1)
        self._settled(slot)

    def _on_abandoned(self, slot: ReplicaSlot) -> None:
        slot.abandoned = slot.replica.abandoned
        self._settled(slot)

    def _settled(self, slot: ReplicaSlot) -> None:
        self._hand_over(slot)
        self._drain.completed(self._clock(), idle=self.ongoing == 0)
        if slot.drained is not None and slot.ongoing + slot.abandoned == 0:
            slot.drained.set()
        if self._idle is not None and self.ongoing + self.abandoned == 0:
            self._idle.set()

    async def retire(self, slot: ReplicaSlot, grace_s: float) -> Any:
        """Stop routing to `slot`, wait up to `grace_s` for its requests to finish.

        Returns the replica, which the caller stops.
        """
        if slot in self._slots:
            self._slots.remove(slot)
        if slot.ongoing + slot.abandoned:
            slot.drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.drained.wait(), grace_s)
        return slot.replica

    async def close(self, grace_s: float) -> list[Any]:
        """Refuse new requests, fail queued ones, wait up to `grace_s` for running ones to finish.

        Returns the replicas, which the caller stops.
        """
        self._closed = True
        error = DeploymentUnavailableError(f"deployment {self.deployment!r} is shutting down")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.ongoing + self.abandoned:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        replicas = [slot.replica for slot in self._slots]
        self._slots.clear()
        return replicas

    def retry_after_s(self) -> int:
        """Seconds until the queue drains at the measured completion rate, within [1, 60]."""
        return self._drain.retry_after_s(self.queued, self._clock())

    def _overloaded(self) -> OverloadedError:
        retry_after_s = self.retry_after_s()
        return OverloadedError(
            f"deployment {self.deployment!r} is overloaded: {len(self._slots)} replicas at "
            f"max_ongoing_requests={self._max_ongoing} and {len(self._waiters)} requests queued "
            f"(max_queued_requests={self._max_queued}); retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )

    def status(self) -> dict[str, Any]:
        """JSON-ready view: replicas with their load, totals, rejected count."""
        return {
            "replicas": [self._slot_status(slot) for slot in self._slots],
            "ongoing": self.ongoing,
            "abandoned": self.abandoned,
            "queued": self.queued,
            "rejected": self.rejected,
        }

    @staticmethod
    def _slot_status(slot: ReplicaSlot) -> dict[str, Any]:
        context = slot.replica.context
        return {
            "id": context.replica_id,
            "state": "running" if slot.healthy else "unhealthy",
            "ongoing": slot.ongoing,
            "abandoned": slot.abandoned,
            "device": context.device,
            "gpu_ids": list(context.gpu_ids),
            "pid": getattr(slot.replica, "pid", None),
            "batching": slot.replica.batch_stats(),
            "model": slot.replica.model_status(),
        }

    def _choose(self) -> ReplicaSlot | None:
        slots = self._slots
        count = len(slots)
        if count == 1:
            only = slots[0]
            return only if only.ongoing + only.abandoned < self._max_ongoing else None
        if count == 0:
            return None
        first = slots[self._rng.randrange(count)]
        second = slots[self._rng.randrange(count)]
        best = first if first.ongoing + first.abandoned <= second.ongoing + second.abandoned else second
        if best.ongoing + best.abandoned < self._max_ongoing:
            return best
        return min(slots, key=lambda slot: slot.ongoing + slot.abandoned) if self._any_room() else None

    def _choose_for_model(self, model_id: str) -> ReplicaSlot | None:
        slots = self._slots
        index = choose_replica(
            [slot.ongoing + slot.abandoned for slot in slots],
            [model_id in slot.models for slot in slots],
            [len(slot.models) for slot in slots],
            self._max_ongoing,
        )
        return None if index is None else slots[index]

    def _any_room(self) -> bool:
        return any(slot.ongoing + slot.abandoned < self._max_ongoing for slot in self._slots)

    def _hand_over(self, slot: ReplicaSlot) -> None:
        while self._waiters and slot.ongoing + slot.abandoned < self._max_ongoing and slot in self._slots:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            slot.ongoing += 1
            if self._drain.idle:
                self._drain.busy(self._clock())
            waiter.set_result(slot)
