"""`Router`: routes one caller's handle calls through a split, in the caller's process.

In: a `RouterNode` (arms, sticky, shadows), the table of live weights (read per call from a
`TableSource`: the runtime's `RouterState` in-process, a copy polled from the state's owner
elsewhere), the backend's way to call a deployment, and whether each arm has a running replica.
Out: each call goes to one arm (sticky key, else smooth weighted round-robin among available
arms); a share of unary calls is mirrored to shadow arms in the background, never awaited by the
caller and bounded in number (the excess is dropped and counted); every finished call through an
arm becomes an `ArmSample` in the router's `Evidence`. No extra hop: the arm's handle call is the
only one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from servekit._replica.request_context import RequestContext, current_request, request_scope
from servekit._replica.routing.ab import ab_state
from servekit._replica.routing.analysis import ShadowComparison
from servekit._replica.routing.evidence import Evidence
from servekit._replica.routing.state import RouterTable
from servekit._replica.routing.sticky import sticky_arm
from servekit._replica.routing.weights import SmoothWeightedChoice
from servekit._spec.routing import RouterNode, sticky_source
from servekit.errors import DeploymentUnavailableError

logger = logging.getLogger("servekit.routing")

ArmCall = Callable[[str, str, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
"""Calls (deployment, method, args, kwargs) on the backend and returns the result."""
ArmStream = Callable[[str, str, tuple[Any, ...], dict[str, Any]], AsyncIterator[Any]]
TableSource = Callable[[], RouterTable]
Available = Callable[[str], bool]
"""Whether a deployment has a running replica now."""

SHADOW_CAPACITY = 64
"""Mirrored calls in flight at most per router; more are dropped (and counted)."""
AVAILABILITY_TTL_S = 0.1
"""How long the router trusts its view of which arms have a running replica."""
UNAVAILABLE_HOLD_S = 1.0
"""How long an arm that answered 'unavailable' gets no share (with on_unavailable='redistribute')."""


class Router:
    """The routing side of one split, in one process."""

    def __init__(
        self,
        node: RouterNode,
        table: TableSource,
        call: ArmCall,
        stream: ArmStream,
        *,
        available: Available | None = None,
        shadow_capacity: int = SHADOW_CAPACITY,
    ) -> None:
        self.node = node
        self.evidence = Evidence()
        self._table = table
        self._call = call
        self._stream = stream
        self._available = available
        self._version = -1
        self._choice = SmoothWeightedChoice({})
        self._weights: dict[str, float] = {}
        self._sticky_source = sticky_source(node.sticky)
        self._held_until: dict[str, float] = {}
        self._shadow_credit = 0.0
        self._shadow_capacity = shadow_capacity
        self._shadows_in_flight: set[asyncio.Task[None]] = set()
        self._shadowed = bool(node.shadows)
        self._allowed_at = -1.0
        self._allowed_now: set[str] | None = None
        self.shadow_drops = 0
        self.unavailable_redirects = 0

    # -- routing ----------------------------------------------------------------------------
    def choose(self, args: tuple[Any, ...], kwargs: dict[str, Any], context: RequestContext | None) -> str:
        """The arm for a call with these arguments, in the request `context`."""
        table = self._table()
        if table.version != self._version:
            self._version = table.version
            self._weights = dict(table.weights)
            self._choice = SmoothWeightedChoice(self._weights)
        now = time.perf_counter()
        if now - self._allowed_at > AVAILABILITY_TTL_S:  # which arms may take calls: checked 10x a second
            self._allowed_now = self._allowed()
            self._allowed_at = now
        allowed = self._allowed_now
        key = self._key(args, kwargs, context) if self.node.sticky is not None else None
        arm = sticky_arm(key, self._weights, allowed) if key is not None else self._choice.choose(allowed)
        if arm is None:
            arm = self._fallback(allowed)
        available = self._available
        if (
            self.node.on_unavailable == "fail"
            and available is not None
            and not available(self.node.arms[arm])
        ):
            raise DeploymentUnavailableError(
                f"router {self.node.name!r}: arm {arm!r} has no running replica (on_unavailable='fail')"
            )
        return arm

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `method` on the chosen arm (and mirror it to shadows when due); return the arm's result."""
        context = current_request()
        arm = self.choose(args, kwargs, context)
        if self._shadowed and self._mirror_due():
            self._mirror(method, args, kwargs, context)
        started = time.perf_counter()
        try:
            result = await self._call(self.node.arms[arm], method, args, kwargs)
        except DeploymentUnavailableError as exc:
            self._record(arm, False, started, None, context, shadow=False)
            other = self._redirect_after(arm, exc)
            return await self._timed(other, method, args, kwargs, context)
        except BaseException:
            self._record(arm, False, started, None, context, shadow=False)
            raise
        self._record(arm, True, started, result, context, shadow=False)
        return result

    async def stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Stream `method` from the chosen arm (streams are not mirrored)."""
        context = current_request()
        arm = self.choose(args, kwargs, context)
        started = time.perf_counter()
        ok = False
        try:
            async for chunk in self._stream(self.node.arms[arm], method, args, kwargs):
                yield chunk
            ok = True
        finally:
            self._record(arm, ok, started, None, context, shadow=False)

    async def _timed(
        self,
        arm: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None,
    ) -> Any:
        started = time.perf_counter()
        ok = False
        result = None
        try:
            result = await self._call(self.node.arms[arm], method, args, kwargs)
            ok = True
            return result
        finally:
            self._record(arm, ok, started, result, context, shadow=False)

    def _key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], context: RequestContext | None
    ) -> str | None:
        sticky = self.node.sticky
        if sticky is None:
            return None
        if self._sticky_source is not None:
            return context.key(self._sticky_source) if context is not None else None
        key = sticky(*args, **kwargs)  # type: ignore[operator]
        return None if key is None else str(key)

    def _allowed(self) -> set[str] | None:
        """The arms that may take calls now, or None when all may (the common case: no set is built)."""
        if self.node.on_unavailable == "fail":
            return None
        now = time.monotonic()
        held = self._held_until
        available = self._available
        down = [
            arm
            for arm, deployment in self.node.arms.items()
            if (held and held.get(arm, 0.0) > now) or (available is not None and not available(deployment))
        ]
        if not down:
            return None
        up = {arm for arm in self.node.arms if arm not in down}
        return up or None

    def _fallback(self, allowed: set[str] | None) -> str:
        """An arm when no weighted arm may take the call: any allowed arm, else the heaviest."""
        if allowed:
            return sorted(allowed)[0]
        return max(self._weights, key=lambda arm: self._weights[arm])

    def _redirect_after(self, arm: str, exc: DeploymentUnavailableError) -> str:
        """The arm to retry on after `arm` said it has no replica; re-raises when none or 'fail'."""
        if self.node.on_unavailable == "fail" or type(exc) is not DeploymentUnavailableError:
            raise exc
        self._held_until[arm] = time.monotonic() + UNAVAILABLE_HOLD_S
        others = self._allowed_now = self._allowed()
        self._allowed_at = time.perf_counter()
        if others is None or arm in others or not others:
            raise exc
        self.unavailable_redirects += 1
        return self.choose((), {}, None) if self.node.sticky is None else sorted(others)[0]

    # -- shadows ----------------------------------------------------------------------------
    def _mirror_due(self) -> bool:
        self._shadow_credit += self.node.shadow_fraction
        if self._shadow_credit >= 1.0:
            self._shadow_credit -= 1.0
            return True
        return False

    def _mirror(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], context: RequestContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for arm in self.node.shadows:
            if len(self._shadows_in_flight) >= self._shadow_capacity:
                self.shadow_drops += 1
                continue
            task = loop.create_task(self._shadow_call(arm, method, args, kwargs, context))
            self._shadows_in_flight.add(task)
            task.add_done_callback(self._shadows_in_flight.discard)

    async def _shadow_call(
        self,
        arm: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: RequestContext | None,
    ) -> None:
        started = time.perf_counter()
        ok = False
        result = None
        try:
            with request_scope(context):
                result = await self._call(self.node.shadows[arm], method, args, kwargs)
            ok = True
        except asyncio.CancelledError:
            return
        except Exception:  # a shadow's failure is evidence, never the caller's problem
            logger.debug("shadow arm %r of router %r failed", arm, self.node.name, exc_info=True)
        finally:
            self._record(arm, ok, started, result, context, shadow=True)

    def close(self) -> None:
        """Cancel mirrored calls still in flight."""
        for task in list(self._shadows_in_flight):
            task.cancel()

    # -- evidence ---------------------------------------------------------------------------
    def _record(
        self, arm: str, ok: bool, started: float, result: Any, context: RequestContext | None, *, shadow: bool
    ) -> None:
        ended = time.perf_counter()  # CLOCK_MONOTONIC, like time.monotonic(), on Linux and macOS
        self.evidence.record_call(
            arm,
            ok,
            ended - started,
            ended,
            self._output(result) if ok else None,
            context.request_id if context is not None else None,
            shadow,
        )

    def _output(self, result: Any) -> Any:
        extract = self.node.output
        if extract is None:
            return result if isinstance(result, str | int | float | bool) else None
        try:
            return extract(result)
        except Exception:
            return None

    def _shadow_comparison(self) -> dict[str, Any]:
        """Each shadow arm against the primary answers to the same requests (`ShadowComparison`)."""
        if not self.node.shadows:
            return {}
        samples = self.evidence.samples()
        reports = {}
        for arm in self.node.shadows:
            comparison = ShadowComparison(arm)
            for sample in samples:
                comparison.observe(sample)
            reports[arm] = comparison.report().to_dict()
        return reports

    def view(self, table: RouterTable) -> dict[str, Any]:
        """JSON-ready: this router's arms with weights, availability and counters, shadows, outcomes."""
        allowed = self._allowed()
        arms = {}
        for arm, deployment in self.node.arms.items():
            available = allowed is None or arm in allowed
            arms[arm] = {
                "deployment": deployment,
                "weight": table.weights.get(arm, 0.0),
                "available": available,
                **self.evidence.arm_view(arm),
            }
        shadows = {
            arm: {"deployment": deployment, **self.evidence.arm_view(arm, shadow=True)}
            for arm, deployment in self.node.shadows.items()
        }
        down = [arm for arm, view in arms.items() if not view["available"]]
        notes = []
        if down:
            notes.append(f"arms {down} have no running replica: their share goes to the other arms")
        return {
            "name": self.node.name,
            **table.view(),
            "sticky": self.node.sticky
            if isinstance(self.node.sticky, str) or self.node.sticky is None
            else "function",
            "on_unavailable": self.node.on_unavailable,
            "arms": arms,
            "shadow_fraction": self.node.shadow_fraction,
            "shadows": shadows,
            "shadow_drops": self.shadow_drops,
            "shadows_in_flight": len(self._shadows_in_flight),
            "shadow_comparison": self._shadow_comparison(),
            "unavailable_redirects": self.unavailable_redirects,
            "unmatched_outcomes": self.evidence.unmatched_outcomes,
            "notes": notes,
            "ab_state": ab_state(self.evidence, list(self.node.arms)),
        }
