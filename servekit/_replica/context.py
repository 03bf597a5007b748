"""`replica_context()`: what a replica knows about itself (deployment, id, device)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaContext:
    """Facts about the replica running the current code, set by the runtime."""

    deployment: str
    """The deployment's name in the app graph."""
    replica_id: str
    """Unique id of this replica, like ``"Classifier#0"``."""
    device: str = "cpu"
    """The torch device this replica should use: ``"cpu"`` or ``"cuda:N"``."""
    gpu_ids: tuple[int, ...] = field(default_factory=tuple)
    """GPU ids assigned to this replica (empty without GPUs)."""
    model_version: str | None = None
    """The version of the model bound with `servekit.model(...)` that this replica serves now
    (the first one, when several are bound); None without one."""


_current: ContextVar[ReplicaContext | None] = ContextVar("servekit_replica", default=None)


def replica_context() -> ReplicaContext:
    """The context of the replica running the calling code.

    Call it in a deployment's `__init__` or methods; outside a replica it raises `RuntimeError`.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError(
            "servekit.replica_context() was called outside a replica; call it inside a "
            "deployment's __init__ or methods"
        )
    return context


def current_replica() -> ReplicaContext | None:
    """The current replica's context, or None outside a replica."""
    return _current.get()


def enter_replica(context: ReplicaContext) -> object:
    """Make `context` current; returns a token for `exit_replica`."""
    return _current.set(context)


def exit_replica(token: object) -> None:
    """Restore the context that was current before `enter_replica`."""
    _current.reset(token)  # type: ignore[arg-type]
