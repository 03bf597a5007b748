"""A replica's bound models: references turned into local paths, and in-place swaps.

In: a replica's constructor arguments (with `ModelRef`s among them). Out: the same arguments
with each reference replaced by the local path of its version (from this node's verified
cache), and `BoundModel`s saying which versions those are. `ModelFollower` polls a bound
model's tag and, when it moves, loads the new version and hands its path to the user's
`reconfigure_model(path)` while the old one keeps serving; a version that fails to load
leaves the old one in place and is reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servekit._models.api import current_version, load_ref
from servekit._models.cache import ModelCache
from servekit._models.store import VersionInfo
from servekit._spec.models import ModelRef, iter_model_refs, replace_model_refs

logger = logging.getLogger("servekit.models")

DEFAULT_WATCH_S = 2.0


def watch_period_s(ref: ModelRef | None = None) -> float:
    """How often a tag is polled: the reference's `watch_s`, else ``SERVEKIT_MODEL_WATCH_S``, else 2 s."""
    if ref is not None and ref.watch_s is not None:
        return ref.watch_s
    return float(os.environ.get("SERVEKIT_MODEL_WATCH_S") or DEFAULT_WATCH_S)


@dataclass(frozen=True)
class BoundModel:
    """A model version a replica loaded: the reference, its manifest and local path."""

    ref: ModelRef
    info: VersionInfo
    path: Path


def has_models(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether any `ModelRef` is among the arguments."""
    return any(True for _ in iter_model_refs((args, kwargs)))


def resolve_models(
    args: tuple[Any, ...], kwargs: dict[str, Any], pin: str, cache: ModelCache | None = None
) -> tuple[tuple[Any, ...], dict[str, Any], list[BoundModel]]:
    """`args` and `kwargs` with each `ModelRef` replaced by its local path (a str), each copy
    pinned in the cache under `pin` (the replica's id); blocking I/O."""
    bound: list[BoundModel] = []

    def load(ref: ModelRef) -> str:
        path, info = load_ref(ref, cache, pin)
        bound.append(BoundModel(ref, info, path))
        return str(path)

    return replace_model_refs(args, load), replace_model_refs(kwargs, load), bound


def unpin(models: list[BoundModel], pin: str) -> None:
    """Let the cache evict these versions again, as far as the replica `pin` is concerned."""
    cache = ModelCache()
    for model in models:
        cache.unpin(model.info, pin)


def model_status(bound: list[BoundModel], error: str | None) -> dict[str, Any]:
    """A replica's models as `/-/status` shows them."""
    return {
        "version": bound[0].info.version if bound else None,
        "models": {
            model.ref.target: {"version": model.info.version, "sha256": model.info.sha256} for model in bound
        },
        "error": error,
    }


class ModelFollower:
    """Follows one bound model's tag for a replica whose class defines `reconfigure_model(path)`."""

    def __init__(
        self,
        bound: BoundModel,
        apply: Callable[[str], Awaitable[None]],
        on_swap: Callable[[BoundModel | None, str | None], None],
        pin: str,
        period_s: float | None = None,
    ) -> None:
        self.bound = bound
        self._pin = pin
        self._apply = apply
        self._on_swap = on_swap
        self._period_s = watch_period_s(bound.ref) if period_s is None else period_s
        self._failed: str | None = None

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self._period_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store that is briefly unreachable: try again next period
                logger.warning("cannot poll %s", self.bound.ref.target, exc_info=True)

    async def check(self) -> None:
        """Swap to the version the tag points to now, if it moved (and did not fail before)."""
        ref = self.bound.ref
        version = await asyncio.to_thread(current_version, ref)
        if version in (self.bound.info.version, self._failed):
            return
        loaded: BoundModel | None = None
        try:
            path, info = await asyncio.to_thread(load_ref, ref.pin(version), None, self._pin)
            loaded = BoundModel(ref.pin(version), info, path)
            await self._apply(str(path))
        except Exception as exc:
            if loaded is not None:
                unpin([loaded], self._pin)
            self._failed = version
            error = (
                f"model {ref.name!r} version {version!r} ({ref.target}) failed to load, so "
                f"{self.bound.info.version!r} keeps serving: {type(exc).__name__}: {exc}; "
                f"fix it, or move the tag back (`servekit models rollback {ref.name} {ref.tag}`)"
            )
            logger.error("%s", error)
            self._on_swap(None, error)
            return
        self._failed = None
        unpin([self.bound], self._pin)
        self.bound = loaded
        self._on_swap(self.bound, None)
