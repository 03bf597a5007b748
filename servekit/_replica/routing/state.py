"""`RouterState`: a router's live weights and mode, the one thing that sets them.

In: weight changes (`set_weights`), blue/green switches and switch-backs, pauses, from Python,
the admin API, the CLI or a rollout controller. Out: `RouterTable`, an immutable, versioned
snapshot every routing handle routes by (a new version replaces the old one in one step, so a
call sees either the old weights or the new ones). Nothing here reads a clock: callers pass `now`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from servekit._replica.routing.weights import shares
from servekit._spec.routing import validate_weights
from servekit.errors import BadRequestError


@dataclass(frozen=True)
class RouterTable:
    """One version of a router's weights and mode."""

    version: int
    weights: Mapping[str, float]
    mode: str = "weighted"
    """``"weighted"``, or ``"switched"`` while a blue/green switch bakes (switch-back possible)."""
    paused: bool = False
    """Set by a rollout controller that holds the weights where they are."""
    previous: Mapping[str, float] | None = None
    """The weights before the last switch, for an instant switch-back."""
    switched_to: str | None = None
    bake_until: float | None = None
    """When the switched-from arm retires (monotonic seconds), while baking."""
    retired: tuple[str, ...] = field(default_factory=tuple)

    def view(self) -> dict[str, Any]:
        """JSON-ready: weights, shares, mode and the switch's state."""
        return {
            "version": self.version,
            "weights": dict(self.weights),
            "shares": shares(self.weights),
            "mode": self.mode,
            "paused": self.paused,
            "switched_to": self.switched_to,
            "previous_weights": dict(self.previous) if self.previous is not None else None,
            "retired": list(self.retired),
        }


class RouterState:
    """The owner of one router's table: validated, atomic changes, each a new version."""

    def __init__(self, name: str, arms: tuple[str, ...], weights: Mapping[str, float]) -> None:
        self.name = name
        self.arms = arms
        self._table = RouterTable(1, validate_weights(weights, arms, name))

    @property
    def table(self) -> RouterTable:
        """The current table."""
        return self._table

    def set_weights(self, weights: object) -> RouterTable:
        """Route by `weights` from now on (validated first: on error nothing changes).

        Ends a blue/green switch's bake: the new weights are the plan now.
        """
        checked = validate_weights(weights, self.arms, self.name)
        return self._publish(RouterTable(self._table.version + 1, checked, paused=self._table.paused))

    def switch(self, to_arm: str, now: float, bake_s: float) -> RouterTable:
        """Send all traffic to `to_arm` at once; keep the previous weights for `bake_s` for a switch-back."""
        if to_arm not in self.arms:
            raise BadRequestError(
                f"router {self.name!r} has no arm {to_arm!r}; its arms are {list(self.arms)}"
            )
        if bake_s < 0:
            raise BadRequestError(f"router {self.name!r}: bake_s must be >= 0; got {bake_s!r}")
        current = self._table
        previous = current.previous if current.mode == "switched" else current.weights
        weights = {arm: (1.0 if arm == to_arm else 0.0) for arm in self.arms}
        return self._publish(
            RouterTable(
                current.version + 1,
                weights,
                mode="switched",
                paused=current.paused,
                previous=previous,
                switched_to=to_arm,
                bake_until=now + bake_s,
                retired=tuple(arm for arm in current.retired if arm != to_arm),
            )
        )

    def switch_back(self) -> RouterTable:
        """Undo the last switch: route by the weights it replaced, at once."""
        current = self._table
        if current.mode != "switched" or current.previous is None:
            raise BadRequestError(
                f"router {self.name!r} has no switch to undo (it routes by weights "
                f"{dict(current.weights)}); switch first, or set the weights"
            )
        return self._publish(
            RouterTable(current.version + 1, current.previous, paused=current.paused, retired=current.retired)
        )

    def tick(self, now: float) -> RouterTable:
        """Retire the switched-from arms once the bake is over (their weight stays 0; no switch-back)."""
        current = self._table
        if current.mode != "switched" or current.bake_until is None or now < current.bake_until:
            return current
        retired = tuple(arm for arm in self.arms if arm != current.switched_to)
        return self._publish(
            RouterTable(current.version + 1, current.weights, paused=current.paused, retired=retired)
        )

    def pause(self, paused: bool) -> RouterTable:
        """Mark the router paused (a rollout controller holds its weights) or running again."""
        return self._publish(replace(self._table, version=self._table.version + 1, paused=paused))

    def _publish(self, table: RouterTable) -> RouterTable:
        self._table = table
        return table
