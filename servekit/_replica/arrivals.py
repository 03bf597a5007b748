"""Calls on their way to a batch queue: inside this replica, not queued yet.

In: a front end whose calls spend time in the replica before they reach an `@batch` method
wraps each call in `incoming(calls)` (Ray Serve's HTTP path, where each request body is
fetched from the proxy by an actor call after the request entered the replica). A batch
queue's `submit` calls `arrived()`. Out: `Incoming.count`, the calls that entered and have
neither reached a batch queue nor left, which the batcher holds a forming batch for (see
`batch_policy`), since they are known to be coming rather than guessed from gaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Incoming:
    """The count of one replica's calls that entered and have not reached a batch queue."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Ticket:
    __slots__ = ("calls", "open")

    def __init__(self, calls: Incoming) -> None:
        self.calls = calls
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.calls.count -= 1


_ticket: ContextVar[_Ticket | None] = ContextVar("servekit_incoming", default=None)


@contextmanager
def incoming(calls: Incoming) -> Iterator[None]:
    """Count the call running in this block as on its way until it reaches a batch queue."""
    ticket = _Ticket(calls)
    calls.count += 1
    token = _ticket.set(ticket)
    try:
        yield
    finally:
        ticket.close()
        _ticket.reset(token)


def arrived() -> Incoming | None:
    """The current call reached a batch queue: it is no longer on its way. Returns the counter
    it was counted in (None for a call no front end counted)."""
    ticket = _ticket.get()
    if ticket is None:
        return None
    ticket.close()
    return ticket.calls
