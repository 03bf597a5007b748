"""An app's routers as a runtime runs them: their state, their handles' routing, and operations.

`AppRouters` lives where a router's state is owned (the local runtime; on Ray, a named actor
holds the `RouterState`s and each process polls it, see `servekit._runtime.ray.routers`). It
makes one `Router` per split for calls made in this process, and carries out the operations the
admin API, the CLI and `AppHandle.router(name)` ask for: set weights, switch, switch back,
outcomes, status. `RouterControl` is the handle users get from `app.router(name)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

from servekit._replica.request_context import RequestContext, request_scope
from servekit._replica.routing.ab import ab_report
from servekit._replica.routing.evidence import Evidence
from servekit._replica.routing.rollouts import TICK_S, Rollouts, canary_from_body
from servekit._replica.routing.router import ArmCall, ArmStream, Available, Router
from servekit._replica.routing.state import RouterState, RouterTable
from servekit._runtime.handle import Dispatcher
from servekit._spec.canary import Canary
from servekit._spec.graph import AppGraph
from servekit._spec.routing import RouterNode
from servekit.errors import BadRequestError, DeploymentUnavailableError, NotFoundError

logger = logging.getLogger("servekit.rollouts")

READY_WAIT_S = 30.0
"""How long a switch waits for the target arm to have a running replica."""


class RouterOperations(Protocol):
    """What the admin API and `RouterControl` ask of a runtime's routers (every backend)."""

    def router_names(self) -> list[str]:
        """The app's router names."""
        ...

    async def router_view(self, name: str | None = None) -> dict[str, Any]:
        """One router's state (`name`), or ``{"routers": {name: state}}`` for all."""
        ...

    async def set_weights(self, name: str, weights: object) -> dict[str, Any]:
        """Validate and apply `weights` to router `name` at once; returns its state."""
        ...

    async def switch(
        self, name: str, to_arm: str, warmup: Mapping[str, Any] | None, bake_s: float
    ) -> dict[str, Any]:
        """Blue/green: check `to_arm` is ready (and warm it up), send it all traffic, bake `bake_s`."""
        ...

    async def switch_back(self, name: str) -> dict[str, Any]:
        """Undo router `name`'s last switch at once."""
        ...

    async def post_outcome(
        self, name: str | None, request_id: str, outcome: str, value: float
    ) -> dict[str, Any]:
        """Credit an outcome to the arm(s) that served `request_id` (of router `name`, or any)."""
        ...

    async def rollout_view(self, name: str | None = None) -> dict[str, Any]:
        """Router `name`'s canary status (`NotFoundError` without one), or ``{"rollouts": {...}}``."""
        ...

    async def start_canary(self, name: str, canary: Canary | Mapping[str, Any]) -> dict[str, Any]:
        """Start a canary on router `name` (a `Canary`, or the admin API's JSON); its status."""
        ...

    async def canary_action(self, name: str, action: str, full: bool = False) -> dict[str, Any]:
        """'pause', 'resume', 'promote' (to 100% with `full`) or 'abort' router `name`'s canary."""
        ...


class AppRouters:
    """The routers of one app whose state this process owns (the local runtime)."""

    def __init__(self, call: ArmCall, stream: ArmStream, available: Available | None = None) -> None:
        self._call = call
        self._stream = stream
        self._available = available
        self.states: dict[str, RouterState] = {}
        self.routers: dict[str, Router] = {}
        self.rollouts = Rollouts()
        """The routers' canaries, fed from their `Evidence` and ticked every `TICK_S` by `start`."""
        self._ticker: asyncio.Task[None] | None = None

    def load(self, graph: AppGraph) -> None:
        """Route by `graph`'s splits; a router whose arms are unchanged keeps its live weights."""
        states: dict[str, RouterState] = {}
        routers: dict[str, Router] = {}
        for name, node in graph.routers.items():
            old = self.states.get(name)
            arms = tuple(node.arms)
            state = old if old is not None and old.arms == arms else RouterState(name, arms, node.weights)
            states[name] = state
            previous = self.routers.get(name)
            router = Router(node, _table_of(state), self._call, self._stream, available=self._available)
            if previous is not None and previous.node.all_arms == node.all_arms:
                router.evidence = previous.evidence
            routers[name] = router
        for name, router in self.routers.items():
            if routers.get(name) is not router:
                router.close()
        kept = [name for name, state in states.items() if self.states.get(name) is state]
        self.rollouts.keep(kept)
        self.states, self.routers = states, routers
        now = time.perf_counter()  # the clock of the routers' samples
        for name, node in graph.routers.items():
            if node.canary is not None and not self.rollouts.has(name):
                self.rollouts.start(states[name], node.canary, now)

    def start(self) -> None:
        """Tick the canaries about once a second (call on the runtime's event loop)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick_rollouts(time.perf_counter())
            except Exception:  # a bug in one tick must not stop the next
                logger.exception("ticking the canaries failed")

    def tick_rollouts(self, now: float) -> None:
        """Feed each active canary its router's calls since the last feed, then run its rules."""
        for name in self.rollouts.wanted():
            router = self.routers.get(name)
            if router is not None:
                since = self.rollouts.fed_until(name)
                fresh = [s for s in router.evidence.samples(since=since, shadow=False) if s.at > since]
                self.rollouts.observe(name, fresh)
        self.rollouts.tick(self.states, now)

    def close(self) -> None:
        """Stop ticking and the mirrored calls in flight."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for router in self.routers.values():
            router.close()

    def state(self, name: str) -> RouterState:
        """Router `name`'s state; `NotFoundError` (404) naming the routers there are."""
        state = self.states.get(name)
        if state is None:
            raise NotFoundError(f"no router named {name!r}; routers: {sorted(self.states)}")
        return state

    def router_names(self) -> list[str]:
        """The app's router names."""
        return sorted(self.states)

    def evidence(self, name: str) -> Evidence:
        """Router `name`'s evidence: the samples and outcomes a rollout controller analyses."""
        self.state(name)
        return self.routers[name].evidence

    async def router_view(self, name: str | None = None) -> dict[str, Any]:
        """One router's state, or all of them."""
        if name is not None:
            return self.view(name)
        return {"routers": {router: self.view(router) for router in sorted(self.states)}}

    def view(self, name: str) -> dict[str, Any]:
        """Router `name`: live weights, mode, arms with counters, shadows and their comparison."""
        table = self.state(name).tick(time.monotonic())
        view = {**self.routers[name].view(table), "applied_everywhere": True}
        view["canary"] = self.rollouts.view(name, time.perf_counter())
        return finish_view(view)

    async def rollout_view(self, name: str | None = None) -> dict[str, Any]:
        """Router `name`'s canary status, or every canary's."""
        now = time.perf_counter()
        if name is None:
            return {"rollouts": self.rollouts.views(now)}
        self.state(name)
        return self.rollouts.controller(name).status(now)

    async def start_canary(self, name: str, canary: Canary | Mapping[str, Any]) -> dict[str, Any]:
        """Start a canary on router `name` now; its status."""
        state = self.state(name)
        config = canary if isinstance(canary, Canary) else canary_from_body(canary, state)
        self.tick_rollouts(time.perf_counter())  # the old canary's last evidence, before it is replaced
        self.rollouts.start(state, config, time.perf_counter())
        return await self.rollout_view(name)

    async def canary_action(self, name: str, action: str, full: bool = False) -> dict[str, Any]:
        """An operator's action on router `name`'s canary; its status after it."""
        state = self.state(name)
        self.tick_rollouts(time.perf_counter())
        return self.rollouts.act(state, action, time.perf_counter(), full=full)

    async def set_weights(self, name: str, weights: object) -> dict[str, Any]:
        """Validate and apply `weights` (a 400 naming the problem leaves the router as it was)."""
        self.state(name).set_weights(weights)
        return self.view(name)

    async def switch(
        self, name: str, to_arm: str, warmup: Mapping[str, Any] | None = None, bake_s: float = 60.0
    ) -> dict[str, Any]:
        """Blue/green: wait for `to_arm` to run a replica, warm it up, switch all traffic, bake."""
        state = self.state(name)
        node = self.routers[name].node
        if to_arm not in node.arms:
            raise BadRequestError(f"router {name!r} has no arm {to_arm!r}; its arms are {sorted(node.arms)}")
        if isinstance(bake_s, bool) or not isinstance(bake_s, int | float) or bake_s < 0:
            raise BadRequestError(f"router {name!r}: bake_s must be a number >= 0; got {bake_s!r}")
        await self._ready(node, to_arm)
        if warmup is not None:
            await warm_up(self._call, node, to_arm, warmup)
        state.switch(to_arm, time.monotonic(), float(bake_s))
        asyncio.get_running_loop().call_later(float(bake_s), self._tick, name)
        return self.view(name)

    async def switch_back(self, name: str) -> dict[str, Any]:
        """Route by the weights the last switch replaced, at once."""
        self.state(name).switch_back()
        return self.view(name)

    async def post_outcome(
        self, name: str | None, request_id: str, outcome: str, value: float
    ) -> dict[str, Any]:
        """Credit `outcome` to the arm that served `request_id` in router `name` (or every router)."""
        check_outcome(request_id, outcome, value)
        names = [name] if name is not None else sorted(self.routers)
        if name is not None:
            self.state(name)
        credited = {}
        for router in names:
            arm = self.routers[router].evidence.record_outcome(request_id, outcome, float(value))
            if arm is not None:
                credited[router] = arm
        return {"request_id": request_id, "outcome": outcome, "credited": credited}

    async def _ready(self, node: RouterNode, arm: str) -> None:
        if self._available is None:
            return
        deployment = node.arms[arm]
        deadline = time.monotonic() + READY_WAIT_S
        while not self._available(deployment):
            if time.monotonic() > deadline:
                raise DeploymentUnavailableError(
                    f"router {node.name!r}: arm {arm!r} ({deployment!r}) has no running replica after "
                    f"{READY_WAIT_S:g} s; the switch was not made"
                )
            await asyncio.sleep(0.05)

    def _tick(self, name: str) -> None:
        state = self.states.get(name)
        if state is not None:
            state.tick(time.monotonic())


async def warm_up(call: ArmCall, node: RouterNode, arm: str, warmup: Mapping[str, Any]) -> None:
    """Call `warmup["method"]` (default ``__call__``) with `warmup["args"]` on `arm`; 503 if it fails."""
    if not isinstance(warmup, Mapping):
        raise BadRequestError(f"warmup must be like {{'method': 'predict', 'args': [1]}}; got {warmup!r}")
    method = warmup.get("method", "__call__")
    args = warmup.get("args", [])
    kwargs = warmup.get("kwargs", {})
    if not isinstance(method, str) or not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise BadRequestError(f"warmup must be like {{'method': 'predict', 'args': [1]}}; got {warmup!r}")
    try:
        with request_scope(RequestContext("warmup")):
            await call(node.arms[arm], method, tuple(args), kwargs)
    except Exception as exc:
        raise DeploymentUnavailableError(
            f"router {node.name!r}: the warm-up call {method}(...) on arm {arm!r} failed ({exc}); "
            "the switch was not made"
        ) from exc


def finish_view(view: dict[str, Any]) -> dict[str, Any]:
    """A router's status view with its A/B report made from the mergeable `ab_state` it carries."""
    state = view.pop("ab_state", None)
    if state is not None:
        view["ab"] = ab_report(list(view.get("arms", {})), [state])
    return view


def check_outcome(request_id: object, outcome: object, value: object) -> None:
    """Raise `BadRequestError` naming the problem with a posted outcome."""
    if not isinstance(request_id, str) or not request_id:
        raise BadRequestError(f"an outcome needs the request's id (its x-request-id); got {request_id!r}")
    if not isinstance(outcome, str) or not outcome:
        raise BadRequestError(f"an outcome needs a non-empty name, like 'clicked'; got {outcome!r}")
    if not isinstance(value, int | float):
        raise BadRequestError(f"outcome {outcome!r} must be a number; got {value!r}")


def _table_of(state: RouterState) -> Callable[[], RouterTable]:
    return lambda: state.table


class RouterControl:
    """Operates one router of a running app from Python: `app.router("clf").set_weights({...})`."""

    def __init__(
        self, operations: RouterOperations, name: str, run: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._operations = operations
        self.name = name
        self._run = run

    def status(self) -> dict[str, Any]:
        """The router's live weights, mode, arms with counters, shadows and their comparison."""
        return dict(self._run(self._operations.router_view(self.name)))

    def set_weights(self, weights: Mapping[str, float]) -> dict[str, Any]:
        """Route by `weights` from now on (arms not named get 0); a bad map raises and changes nothing."""
        return dict(self._run(self._operations.set_weights(self.name, weights)))

    def switch(
        self, to_arm: str, *, warmup: Mapping[str, Any] | None = None, bake_s: float = 60.0
    ) -> dict[str, Any]:
        """Blue/green: once `to_arm` runs a replica (and `warmup`, like
        ``{"method": "predict", "args": [x]}``,
        succeeded on it), send it all traffic at once; `switch_back()` undoes it until `bake_s` passed,
        then the other arms retire (weight 0)."""
        return dict(self._run(self._operations.switch(self.name, to_arm, warmup, bake_s)))

    def switch_back(self) -> dict[str, Any]:
        """Undo the last switch at once."""
        return dict(self._run(self._operations.switch_back(self.name)))

    @property
    def canary(self) -> CanaryControl:
        """The router's canary: `status()`, `pause()`, `resume()`, `promote()`, `abort()`."""
        return CanaryControl(self._operations, self.name, self._run)

    def start_canary(self, canary: Canary) -> dict[str, Any]:
        """Start `canary` (an `sk.Canary` between two of the router's arms) now; its status."""
        return dict(self._run(self._operations.start_canary(self.name, canary)))

    def __repr__(self) -> str:
        return f"RouterControl(name={self.name!r})"


class CanaryControl:
    """Operates one router's canary from Python: `app.router("clf").canary.pause()`.

    Each method returns the canary's status; on a canary that has ended, `pause`, `resume`,
    `promote` and `abort` raise `RolloutStateError`, and on a router without one `NotFoundError`.
    """

    def __init__(
        self, operations: RouterOperations, name: str, run: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._operations = operations
        self.name = name
        self._run = run

    def status(self) -> dict[str, Any]:
        """State, step, weights, the step's window, the last checks and every event with its figures."""
        return dict(self._run(self._operations.rollout_view(self.name)))

    def pause(self) -> dict[str, Any]:
        """Hold the current step (a conclusive failure still rolls back) until `resume()`."""
        return self._act("pause")

    def resume(self) -> dict[str, Any]:
        """Let the canary promote again after `pause()`."""
        return self._act("resume")

    def promote(self, *, full: bool = False) -> dict[str, Any]:
        """Move to the next step now (to 100% with `full`), without waiting for the checks."""
        return self._act("promote", full)

    def abort(self) -> dict[str, Any]:
        """Roll back to 100% baseline now."""
        return self._act("abort")

    def _act(self, action: str, full: bool = False) -> dict[str, Any]:
        return dict(self._run(self._operations.canary_action(self.name, action, full)))

    def __repr__(self) -> str:
        return f"CanaryControl(router={self.name!r})"


def routed_method_table(
    graph: AppGraph, table: Mapping[str, Mapping[str, bool]]
) -> dict[str, dict[str, bool]]:
    """`table` (each deployment's methods) plus each router, which has its first arm's methods."""
    routed = {name: dict(methods) for name, methods in table.items()}
    for name, node in graph.routers.items():
        first = next(iter(node.arms.values()))
        routed[name] = dict(table.get(first, {}))
    return routed


class RoutingDispatcher:
    """A `Dispatcher` that sends calls to a router's name through that router, others to `inner`."""

    def __init__(self, inner: Dispatcher, routers: Mapping[str, Router]) -> None:
        self._inner = inner
        self._routers = routers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The inner dispatcher's loop."""
        return self._inner.loop

    async def call(self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Route a unary call (through a router when `deployment` names one)."""
        router = self._routers.get(deployment)
        if router is not None:
            return await router.call(method, args, kwargs)
        return await self._inner.call(deployment, method, args, kwargs)

    def stream(
        self, deployment: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        """Route a streaming call."""
        router = self._routers.get(deployment)
        if router is not None:
            return router.stream(method, args, kwargs)
        return self._inner.stream(deployment, method, args, kwargs)

    def is_streaming(self, deployment: str, method: str) -> bool:
        """Whether `method` streams (a router's: its first arm's)."""
        router = self._routers.get(deployment)
        if router is not None:
            deployment = next(iter(router.node.arms.values()))
        return self._inner.is_streaming(deployment, method)
