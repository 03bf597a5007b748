"""Routers on Ray: their state in a named actor, routing in each caller's process.

`RouterStateActor` (one per Serve app, named after it, detached so it outlives any replica and
the driver; deleted with the app) owns each router's `RouterState`. Every process that routes
(the ingress and other replicas, the driver) keeps a `RayRouters`: local `Router`s that read the
tables it polls from the actor every `POLL_S` (so a change applies everywhere within a second),
pushing its routers' status views and taking the outcomes posted since its last poll in the
same round trip. Admin operations (weights, switch, outcomes, status) are calls to the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any, cast

import ray

from servekit._replica.routing.ab import ab_report
from servekit._replica.routing.evidence import merge_views
from servekit._replica.routing.rollouts import TICK_S, Rollouts, canary_from_body, no_canary
from servekit._replica.routing.router import ArmCall, ArmStream, Router
from servekit._replica.routing.samples import ArmSample
from servekit._replica.routing.state import RouterState, RouterTable
from servekit._runtime.ray.dispatcher import translate
from servekit._runtime.routing import check_outcome, warm_up
from servekit._spec.canary import Canary
from servekit._spec.routing import RouterNode
from servekit.errors import BadRequestError, NotFoundError

logger = logging.getLogger("servekit.ray")

NAMESPACE = "servekit"
POLL_S = 0.5
"""How often each routing process reads the tables (a change applies within twice this)."""
OUTCOME_LOG = 10_000
VIEW_TTL_S = 10.0
"""A process's pushed status view counts for this long after its last poll."""
PUSH_SAMPLES = 5_000
"""Calls per router a process pushes per poll for a canary at most (beyond: an evenly spaced share)."""

Plan = dict[str, tuple[tuple[str, ...], dict[str, float], Canary | None]]
"""Each router's arm names, starting weights and declared canary."""
SampleRow = tuple[str, bool, float, float, object]
"""A pushed call: arm, ok, latency (s), age (s before the push), declared output. An age, not a
time: the processes' clocks differ, so the actor dates each call by its own clock."""


def actor_name(app_name: str) -> str:
    """The name of app `app_name`'s router state actor."""
    return f"servekit-routers:{app_name}"


class RouterStateActor:
    """Holds an app's router states; every routing process polls it (runs as a Ray actor)."""

    def __init__(self, routers: Plan) -> None:
        self._states: dict[str, RouterState] = {}
        self._views: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self._outcomes: deque[tuple[int, str | None, str, str, float]] = deque(maxlen=OUTCOME_LOG)
        self._seq = 0
        self._rollouts = Rollouts()
        self._ticked = time.monotonic()
        self.load(routers)

    def load(self, routers: Plan) -> None:
        """Take a redeployed app's routers; those whose arms are unchanged keep their live weights
        (and their canary); a declared canary starts on a new router."""
        states = {}
        for name, (arms, weights, _) in routers.items():
            old = self._states.get(name)
            states[name] = old if old is not None and old.arms == arms else RouterState(name, arms, weights)
        self._rollouts.keep([name for name, state in states.items() if self._states.get(name) is state])
        self._states = states
        now = time.monotonic()
        for name, (_, _, canary) in routers.items():
            if canary is not None and not self._rollouts.has(name):
                self._rollouts.start(states[name], canary, now)

    def sync(
        self,
        process: str,
        views: dict[str, dict[str, Any]],
        seen: int,
        samples: dict[str, list[SampleRow]] | None = None,
    ) -> tuple[dict[str, RouterTable], list[tuple[str | None, str, str, float]], int, list[str]]:
        """A process's poll: keep its views, feed its calls to the canaries (tick them about once a
        second); return the tables, the outcomes posted after `seen`, and the routers whose canary
        wants calls."""
        now = time.monotonic()
        if views:
            self._views[process] = (now, views)
        for name, rows in (samples or {}).items():
            fresh = (ArmSample(arm, ok, latency, now - age, output) for arm, ok, latency, age, output in rows)
            self._rollouts.observe(name, fresh)
        if now - self._ticked >= TICK_S:
            self._ticked = now
            self._rollouts.tick(self._states, now)
        tables = {name: state.tick(now) for name, state in self._states.items()}
        outcomes = [
            (router, rid, name, value) for seq, router, rid, name, value in self._outcomes if seq > seen
        ]
        return tables, outcomes, self._seq, self._rollouts.wanted()

    def rollout(self, name: str) -> dict[str, Any] | None:
        """Router `name`'s canary status (None without one)."""
        self._state(name)
        return self._rollouts.view(name, time.monotonic())

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """Every canary's status, by router."""
        return self._rollouts.views(time.monotonic())

    def start_canary(self, name: str, canary: Canary | dict[str, Any]) -> RouterTable:
        """Start a canary on router `name` (a `Canary` or the admin API's JSON)."""
        state = self._state(name)
        config = canary if isinstance(canary, Canary) else canary_from_body(canary, state)
        self._rollouts.start(state, config, time.monotonic())
        return state.table

    def canary_action(self, name: str, action: str, full: bool = False) -> RouterTable:
        """An operator's action on router `name`'s canary."""
        state = self._state(name)
        self._rollouts.act(state, action, time.monotonic(), full=full)
        return state.table

    def tables(self) -> dict[str, RouterTable]:
        """Every router's current table."""
        now = time.monotonic()
        return {name: state.tick(now) for name, state in self._states.items()}

    def set_weights(self, name: str, weights: object) -> RouterTable:
        """Validate and apply `weights` to router `name`."""
        return self._state(name).set_weights(weights)

    def switch(self, name: str, to_arm: str, bake_s: float) -> RouterTable:
        """Send all of router `name`'s traffic to `to_arm`, baking `bake_s`."""
        return self._state(name).switch(to_arm, time.monotonic(), bake_s)

    def switch_back(self, name: str) -> RouterTable:
        """Undo router `name`'s last switch."""
        return self._state(name).switch_back()

    def post_outcome(self, name: str | None, request_id: str, outcome: str, value: float) -> int:
        """Queue an outcome for the processes that routed `request_id`; returns its sequence number."""
        if name is not None:
            self._state(name)
        self._seq += 1
        self._outcomes.append((self._seq, name, request_id, outcome, value))
        return self._seq

    def views(self, name: str) -> list[dict[str, Any]]:
        """Router `name`'s status views from the processes that polled within `VIEW_TTL_S`."""
        self._state(name)
        now = time.monotonic()
        return [views[name] for at, views in self._views.values() if now - at < VIEW_TTL_S and name in views]

    def names(self) -> list[str]:
        """The app's router names."""
        return sorted(self._states)

    def _state(self, name: str) -> RouterState:
        state = self._states.get(name)
        if state is None:
            raise NotFoundError(f"no router named {name!r}; routers: {sorted(self._states)}")
        return state


def router_plan(routers: Mapping[str, RouterNode]) -> Plan:
    """What the actor needs of each router: its arm names, starting weights and canary."""
    return {name: (tuple(node.arms), dict(node.weights), node.canary) for name, node in routers.items()}


def ensure_actor(app_name: str, routers: Mapping[str, RouterNode]) -> Any:
    """Start app `app_name`'s state actor, or give a running one the routers (a redeploy)."""
    try:
        actor = ray.get_actor(actor_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return _start_actor(app_name, routers)
    ray.get(actor.load.remote(router_plan(routers)))
    return actor


def found_or_started(app_name: str, routers: Mapping[str, RouterNode]) -> Any:
    """App `app_name`'s state actor; started here when missing (an app Ray's `serve deploy` ran
    from a bundle has no driver that starts it)."""
    try:
        return ray.get_actor(actor_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return _start_actor(app_name, routers)


def _start_actor(app_name: str, routers: Mapping[str, RouterNode]) -> Any:
    remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(RouterStateActor)
    options = remote.options(
        name=actor_name(app_name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    )
    return options.remote(router_plan(routers))


def kill_actor(app_name: str) -> None:
    """Stop app `app_name`'s state actor, if it runs (and this process is connected to Ray)."""
    if not ray.is_initialized():
        return
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(actor_name(app_name), namespace=NAMESPACE))


def router_status(app_name: str, routers: Mapping[str, RouterNode] | None = None) -> dict[str, Any]:
    """Each router's state (all the actor holds when `routers` is None), merged over the processes
    routing through it (a blocking call; needs this process to have joined the cluster)."""
    if routers is not None and not routers:
        return {}
    try:
        actor = ray.get_actor(actor_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return {}
    try:
        names = list(routers) if routers is not None else cast(list[str], ray.get(actor.names.remote()))
        tables = cast(dict[str, RouterTable], ray.get(actor.tables.remote()))
        rollouts = cast(dict[str, dict[str, Any]], ray.get(actor.rollouts.remote()))
        return {
            name: _merged(name, tables[name], ray.get(actor.views.remote(name)), rollouts.get(name))
            for name in names
        }
    except Exception as exc:  # the actor is restarting or gone
        return {name: {"name": name, "error": f"router state unavailable: {exc}"} for name in routers or {}}


def cluster_operation(app_name: str, operation: str, name: str, *args: Any) -> dict[str, Any]:
    """Run `operation` ("set_weights", "switch", "switch_back", "start_canary", "canary_action")
    on router `name` of app `app_name` through its state actor, and return the router's state
    (a blocking call)."""
    try:
        actor = ray.get_actor(actor_name(app_name), namespace=NAMESPACE)
    except ValueError:
        raise NotFoundError(f"app {app_name!r} has no routers on this cluster") from None
    try:
        table = ray.get(getattr(actor, operation).remote(name, *args))
    except Exception as exc:
        raise translate(exc, f"routers of {app_name}") from None
    canary = cast(dict[str, Any] | None, ray.get(actor.rollout.remote(name)))
    return _merged(name, table, ray.get(actor.views.remote(name)), canary)


def _merged(
    name: str, table: RouterTable, views: list[dict[str, Any]], canary: dict[str, Any] | None
) -> dict[str, Any]:
    merged: dict[str, Any] = merge_views(views) if views else {"name": name, "arms": {}}
    merged.pop("ab_state", None)
    merged["ab"] = ab_report(list(merged["arms"]), [view["ab_state"] for view in views if "ab_state" in view])
    merged["canary"] = canary
    merged.update(table.view())
    merged["applied_everywhere"] = all(view.get("version") == table.version for view in views)
    for arm, info in merged.get("arms", {}).items():
        info["weight"] = table.weights.get(arm, 0.0)
    return merged


class RayRouters:
    """An app's routers as one Ray process sees them: local routing, operations through the actor."""

    def __init__(
        self,
        app_name: str,
        routers: Mapping[str, RouterNode],
        call: ArmCall,
        stream: ArmStream,
        routed: Collection[str] | None = None,
    ) -> None:
        """`routers`: the app's; `routed`: those this process routes through (default: all), which
        it polls for; operations work on every router of the app."""
        self._app_name = app_name
        self._nodes = dict(routers)
        self._call = call
        self._tables: dict[str, RouterTable] = {
            name: RouterTable(0, dict(node.weights)) for name, node in routers.items()
        }
        self.routers = {
            name: Router(node, self._table_source(name), call, stream)
            for name, node in routers.items()
            if routed is None or name in routed
        }
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seen = 0
        self._wanted: list[str] = []
        self._pushed: dict[str, float] = {}
        self._actor: Any = None
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling the actor (call on the process's event loop; a no-op without routers)."""
        if self.routers and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    def close(self) -> None:
        """Stop polling and cancel mirrored calls in flight."""
        if self._poller is not None:
            self._poller.cancel()
        for router in self.routers.values():
            router.close()

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor restarts or is gone: route by the last tables
                logger.debug("polling the router state actor failed: %s", exc)
                self._actor = None
            await asyncio.sleep(POLL_S)

    async def poll(self) -> None:
        """Read the tables, push this process's views, credit outcomes posted since the last poll."""
        views = {name: router.view(self._tables[name]) for name, router in self.routers.items()}
        samples = self._samples_to_push()
        tables, outcomes, seen, wanted = await self._remote("sync", self._process, views, self._seen, samples)
        self._tables.update(tables)
        self._seen = seen
        self._wanted = wanted
        for router_name, request_id, outcome, value in outcomes:
            for name, router in self.routers.items():
                if router_name in (None, name) and router.evidence.arm_of(request_id) is not None:
                    router.evidence.record_outcome(request_id, outcome, value)

    def _samples_to_push(self) -> dict[str, list[SampleRow]]:
        """The calls each router with a canary finished since the last push (at most `PUSH_SAMPLES`)."""
        now = time.perf_counter()  # the clock of the routers' samples
        pushed: dict[str, list[SampleRow]] = {}
        for name in self._wanted:
            router = self.routers.get(name)
            if router is None:
                continue
            since = self._pushed.get(name, now)
            fresh = [s for s in router.evidence.samples(since=since, shadow=False) if s.at > since]
            self._pushed[name] = max((s.at for s in fresh), default=since)
            if len(fresh) > PUSH_SAMPLES:
                fresh = fresh[:: -(-len(fresh) // PUSH_SAMPLES)]
            pushed[name] = [(s.arm, s.ok, s.latency_s, now - s.at, s.output) for s in fresh]
        return pushed

    # -- RouterOperations -------------------------------------------------------------------
    def router_names(self) -> list[str]:
        """The app's router names."""
        return sorted(self._nodes)

    async def router_view(self, name: str | None = None) -> dict[str, Any]:
        """One router's state, merged over the processes routing through it, or all of them."""
        if name is not None:
            return await self._view(name)
        return {"routers": {router: await self._view(router) for router in self.router_names()}}

    async def set_weights(self, name: str, weights: object) -> dict[str, Any]:
        """Validate and apply `weights` on the actor (every process reads them within a second)."""
        self._known(name)
        self._tables[name] = await self._remote("set_weights", name, weights)
        return await self._view(name)

    async def switch(
        self, name: str, to_arm: str, warmup: Mapping[str, Any] | None = None, bake_s: float = 60.0
    ) -> dict[str, Any]:
        """Blue/green: warm `to_arm` up (when asked), then switch all traffic to it on the actor."""
        node = self._known(name)
        if to_arm not in node.arms:
            raise BadRequestError(f"router {name!r} has no arm {to_arm!r}; its arms are {sorted(node.arms)}")
        if isinstance(bake_s, bool) or not isinstance(bake_s, int | float) or bake_s < 0:
            raise BadRequestError(f"router {name!r}: bake_s must be a number >= 0; got {bake_s!r}")
        if warmup is not None:
            await warm_up(self._call, node, to_arm, warmup)
        self._tables[name] = await self._remote("switch", name, to_arm, float(bake_s))
        return await self._view(name)

    async def switch_back(self, name: str) -> dict[str, Any]:
        """Undo router `name`'s last switch."""
        self._known(name)
        self._tables[name] = await self._remote("switch_back", name)
        return await self._view(name)

    async def post_outcome(
        self, name: str | None, request_id: str, outcome: str, value: float
    ) -> dict[str, Any]:
        """Queue an outcome; the process that routed `request_id` credits it at its next poll."""
        check_outcome(request_id, outcome, value)
        if name is not None:
            self._known(name)
        await self._remote("post_outcome", name, request_id, outcome, float(value))
        return {"request_id": request_id, "outcome": outcome, "credited": "queued"}

    async def rollout_view(self, name: str | None = None) -> dict[str, Any]:
        """Router `name`'s canary status (`NotFoundError` without one), or every canary's."""
        if name is None:
            return {"rollouts": await self._remote("rollouts")}
        self._known(name)
        found: dict[str, Any] | None = await self._remote("rollout", name)
        if found is None:
            raise no_canary(name)
        return dict(found)

    async def start_canary(self, name: str, canary: Canary | Mapping[str, Any]) -> dict[str, Any]:
        """Start a canary on router `name` on the actor; its status."""
        self._known(name)
        body = canary if isinstance(canary, Canary) else dict(canary)
        self._tables[name] = await self._remote("start_canary", name, body)
        return await self.rollout_view(name)

    async def canary_action(self, name: str, action: str, full: bool = False) -> dict[str, Any]:
        """An operator's action on router `name`'s canary, on the actor; its status."""
        self._known(name)
        self._tables[name] = await self._remote("canary_action", name, action, full)
        return await self.rollout_view(name)

    async def _view(self, name: str) -> dict[str, Any]:
        self._known(name)
        table = (await self._remote("tables"))[name]
        self._tables[name] = table
        views = await self._remote("views", name)
        local = [self.routers[name].view(table)] if name in self.routers else []
        return _merged(name, table, views or local, await self._remote("rollout", name))

    def _known(self, name: str) -> RouterNode:
        node = self._nodes.get(name)
        if node is None:
            raise NotFoundError(f"no router named {name!r}; routers: {self.router_names()}")
        return node

    def _table_source(self, name: str) -> Any:
        tables = self._tables
        return lambda: tables[name]

    async def _remote(self, method: str, *args: Any) -> Any:
        if self._actor is None:
            self._actor = await asyncio.to_thread(found_or_started, self._app_name, self._nodes)
        try:
            return await getattr(self._actor, method).remote(*args)
        except Exception as exc:
            raise translate(exc, f"routers of {self._app_name}") from None


def cluster_routers(
    address: str, app: str | None, operation: str, name: str | None, *args: Any
) -> dict[str, Any]:
    """Join the cluster at `address` (unless joined), run a router operation, leave again.

    `operation` is "status" (every router of the app, or `name`'s) or one of the actor's changes.
    `app` defaults to the only Serve app with routers on the cluster.
    """
    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        app_name = app if app is not None else _only_app_with_routers(address)
        if operation == "status":
            found = router_status(app_name)
            if name is None:
                return {"routers": found}
            if name not in found:
                raise NotFoundError(f"no router named {name!r} in app {app_name!r}; routers: {sorted(found)}")
            view: dict[str, Any] = found[name]
            return view
        if name is None:
            raise BadRequestError(f"router operation {operation!r} needs a router name")
        return cluster_operation(app_name, operation, name, *args)
    finally:
        if joined:
            ray.shutdown()


def _only_app_with_routers(address: str) -> str:
    prefix = actor_name("")
    apps: list[str] = sorted(
        str(actor["name"])[len(prefix) :]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix)
    )
    if len(apps) != 1:
        found = f"apps with routers: {apps}" if apps else "no app has routers"
        raise NotFoundError(f"pick the app with --app ({found} on the cluster at {address})")
    return apps[0]
