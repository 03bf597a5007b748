"""`Rollouts`: the canary controllers of an app's routers, where their evidence is complete.

In: a `Canary` per router (declared in `sk.split(..., canary=...)` or started on a running app),
the `ArmSample`s every routing process saw (fed by the runtime: from the local routers'
`Evidence`, or pushed to the Ray state actor each poll), a clock reading per `tick` and
operators' actions. Out: the controllers' decisions applied to the routers' `RouterState`s
(one atomic `set_weights` each), one log line per event, and JSON views for status and the
admin API. The runtime owns the clock (it ticks about once a second); nothing here sleeps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from servekit._replica.routing.canary import CanaryController, CanaryDecision
from servekit._replica.routing.samples import ArmSample
from servekit._replica.routing.state import RouterState
from servekit._spec.canary import Canary
from servekit.errors import BadRequestError, GraphError, NotFoundError, RolloutStateError

logger = logging.getLogger("servekit.rollouts")

TICK_S = 1.0
"""How often the runtime ticks the controllers (seconds)."""
CanaryAction = Literal["pause", "resume", "promote", "abort"]
ACTIONS: tuple[CanaryAction, ...] = ("pause", "resume", "promote", "abort")
_ACTIVE = ("running", "paused")


def canary_from_body(body: Mapping[str, Any], state: RouterState) -> Canary:
    """A `Canary` from an admin request's JSON (`baseline` defaults to the heaviest other arm).

    Raises `BadRequestError` naming the problem: a missing or unknown candidate, bad options.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("candidate"), str):
        raise BadRequestError(
            'a canary needs a candidate arm, like {"candidate": "v2", "steps": [10, 50, 100], '
            f'"bake_s": 60}}; got {body!r}'
        )
    options = dict(body)
    if options.get("baseline") is None:
        weights = state.table.weights
        others = [arm for arm in state.arms if arm != options["candidate"]]
        if not others:
            raise BadRequestError(f"router {state.name!r} has no arm besides {options['candidate']!r}")
        options["baseline"] = max(others, key=lambda arm: weights.get(arm, 0.0))
    if "output" in options:
        raise BadRequestError("a canary started over HTTP cannot declare an output function")
    try:
        return Canary(**options)
    except (ValidationError, TypeError) as exc:
        raise BadRequestError(f"router {state.name!r}: bad canary options: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "canary"
        return f"{where}: {first['msg']}"
    return str(exc)


def no_canary(router: str) -> NotFoundError:
    """The 404 for a canary action on `router`, which has none: it says how to start one."""
    return NotFoundError(
        f"router {router!r} has no canary; start one with sk.split(..., canary=sk.Canary(...)), "
        f"`servekit rollout canary {router} --candidate ARM` or POST /-/rollouts/{router}/canary"
    )


class Rollouts:
    """Each router's canary controller (at most one, the latest), its feed position and its log."""

    def __init__(self) -> None:
        self._controllers: dict[str, CanaryController] = {}
        self._fed_until: dict[str, float] = {}
        self._logged: dict[str, int] = {}

    def start(self, state: RouterState, canary: Canary, now: float) -> CanaryController:
        """Start `canary` on `state`'s router: its first step's weights apply at once.

        `BadRequestError` when its baseline or candidate is not an arm; `RolloutStateError` (409)
        when a canary is still running or paused there.
        """
        try:
            canary.validate_arms(state.arms)
        except GraphError as exc:
            raise BadRequestError(f"router {state.name!r}: {exc.message}") from None
        current = self._controllers.get(state.name)
        if current is not None and current.state in _ACTIVE:
            raise RolloutStateError(
                f"router {state.name!r} already runs a canary {current.config.baseline!r} -> "
                f"{current.config.candidate!r} ({current.state}); abort it first"
            )
        controller = CanaryController(canary, now)
        self._controllers[state.name] = controller
        self._fed_until[state.name] = now
        self._logged[state.name] = 0
        state.set_weights(controller.weights)
        self._log(state.name, controller)
        return controller

    def keep(self, names: Iterable[str]) -> None:
        """Forget the controllers of routers not in `names` (a redeploy removed or remade them)."""
        kept = set(names)
        for name in [name for name in self._controllers if name not in kept]:
            del self._controllers[name]

    def has(self, name: str) -> bool:
        """Whether router `name` has (or had) a canary."""
        return name in self._controllers

    def wanted(self) -> list[str]:
        """The routers whose canary still takes samples (running or paused)."""
        return [name for name, controller in self._controllers.items() if controller.state in _ACTIVE]

    def fed_until(self, name: str) -> float:
        """The end time of the newest sample fed to router `name`'s canary (its start before any)."""
        return self._fed_until.get(name, float("inf"))

    def observe(self, name: str, samples: Iterable[ArmSample]) -> None:
        """Feed router `name`'s canary the calls that ended since its last feed."""
        controller = self._controllers.get(name)
        if controller is None:
            return
        newest = self._fed_until[name]
        for sample in samples:
            controller.observe(sample)
            newest = max(newest, sample.at)
        self._fed_until[name] = newest

    def tick(self, states: Mapping[str, RouterState], now: float) -> list[CanaryDecision]:
        """Run every active canary's rules at `now`; apply the weights of each change of course."""
        decisions = []
        for name in self.wanted():
            controller = self._controllers[name]
            decision = controller.tick(now)
            if decision is not None and decision.kind != "hold" and name in states:
                states[name].set_weights(decision.weights)
            if decision is not None:
                decisions.append(decision)
            self._log(name, controller)
        return decisions

    def act(self, state: RouterState, action: str, now: float, *, full: bool = False) -> dict[str, Any]:
        """An operator's `action` on router `state.name`'s canary; returns the canary's view.

        `NotFoundError` without a canary, `BadRequestError` for an unknown action,
        `RolloutStateError` (409) when the canary has ended.
        """
        controller = self.controller(state.name)
        if action == "pause":
            controller.pause(now)
        elif action == "resume":
            controller.resume(now)
        elif action in ("promote", "abort"):
            decision = (
                controller.promote_now(now, full=full) if action == "promote" else controller.abort(now)
            )
            state.set_weights(decision.weights)
        else:
            raise BadRequestError(f"unknown canary action {action!r}; one of {list(ACTIONS)}")
        self._log(state.name, controller)
        return controller.status(now)

    def controller(self, name: str) -> CanaryController:
        """Router `name`'s canary; `NotFoundError` naming how to start one when it has none."""
        controller = self._controllers.get(name)
        if controller is None:
            raise no_canary(name)
        return controller

    def view(self, name: str, now: float) -> dict[str, Any] | None:
        """Router `name`'s canary status (None without one)."""
        controller = self._controllers.get(name)
        return None if controller is None else controller.status(now)

    def views(self, now: float) -> dict[str, dict[str, Any]]:
        """Every canary's status, by router name."""
        return {name: controller.status(now) for name, controller in sorted(self._controllers.items())}

    def _log(self, name: str, controller: CanaryController) -> None:
        """Log the events recorded since the last call, one line each with its figures."""
        recorded = controller.events_recorded
        new = recorded - self._logged.get(name, 0)
        if new <= 0:
            return
        self._logged[name] = recorded
        for event in controller.recent_events(new):
            logger.info(
                "router %r canary %s (%s): %s; weights %s; checks %s",
                name,
                event["kind"],
                event["by"],
                event["reason"],
                json.dumps(event["weights"]),
                json.dumps(event["checks"], default=str),
            )
