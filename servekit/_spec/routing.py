"""`split()`: a traffic-split router as a node of the app graph, validated at bind time.

In: named arms (bound deployments, each possibly a whole sub-graph), weights, and how to keep
a user on one arm (`sticky`), what to mirror (`shadow`), and what to do when an arm cannot take
calls. Out: a `Split` to bind as an argument anywhere in a graph (whoever binds it gets a
handle whose calls go to one arm each), and, once the graph is built, a `RouterNode`: the
router's plan with each arm as the name of its deployment node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from servekit._spec.canary import Canary
from servekit._spec.deployment import Application, Deployment
from servekit.errors import BadRequestError, GraphError

Sticky = str | Callable[..., Any] | None
"""``"header:NAME"``, ``"cookie:NAME"``, ``"query:NAME"``, a function of the call's arguments
returning the key, or None (no stickiness)."""
OnUnavailable = Literal["redistribute", "fail"]
STICKY_SOURCES = ("header", "cookie", "query")


@dataclass(eq=False)
class Split:
    """A router between arms, made by `servekit.split`; bind it as an argument like a deployment."""

    name: str | None
    arms: dict[str, Application]
    weights: dict[str, float]
    sticky: Sticky = None
    shadow: dict[str, Application] = field(default_factory=dict)
    shadow_fraction: float = 0.0
    on_unavailable: OnUnavailable = "redistribute"
    output: Callable[[Any], Any] | None = None
    canary: Canary | None = None

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, arms={sorted(self.arms)})"


@dataclass(frozen=True)
class RouterNode:
    """A router of a built graph: its arms and shadows as deployment node names, and its options."""

    name: str
    arms: dict[str, str]
    """Arm name -> the deployment node its calls go to (the root of the arm's sub-graph)."""
    weights: dict[str, float]
    sticky: Sticky = None
    shadows: dict[str, str] = field(default_factory=dict)
    shadow_fraction: float = 0.0
    on_unavailable: OnUnavailable = "redistribute"
    output: Callable[[Any], Any] | None = None
    """Extracts the compared output (a label or number) from a result; None: scalars as they are."""
    canary: Canary | None = None
    """The progressive rollout the router starts with, if any."""

    @property
    def all_arms(self) -> dict[str, str]:
        """Primary arms and shadows together."""
        return {**self.arms, **self.shadows}


def split(
    arms: Mapping[str, Application],
    weights: Mapping[str, float] | None = None,
    *,
    name: str | None = None,
    sticky: Sticky = None,
    shadow: Mapping[str, Application] | None = None,
    shadow_fraction: float = 0.0,
    on_unavailable: OnUnavailable = "redistribute",
    output: Callable[[Any], Any] | None = None,
    canary: Canary | None = None,
) -> Split:
    """A traffic-split router between `arms`, to bind as an argument anywhere in a graph.

    ```python
    router = sk.split({"v1": Clf.options(name="ClfV1").bind("v1.pt"),
                       "v2": Clf.options(name="ClfV2").bind("v2.pt")},
                      weights={"v1": 90, "v2": 10}, name="clf", sticky="header:x-user-id")
    app = Api.bind(router)
    ```

    Each call through the router's handle goes to one arm, by smooth weighted round-robin
    (exact shares over many calls) or, with `sticky`, by weighted rendezvous hashing of the key:
    ``"header:NAME"``, ``"cookie:NAME"`` or ``"query:NAME"`` of the HTTP request the call serves
    (at any depth of the graph), or a function of the call's arguments. `weights` default to
    equal; arms not named get 0. `shadow` arms get a copy of `shadow_fraction` of the calls,
    whose results are dropped. With `on_unavailable="redistribute"` (default) an arm without a
    running replica has its share sent to the others; ``"fail"`` fails those calls instead.
    `output` extracts the label or number that shadow comparisons use (default: the result, when
    it is a plain scalar). With `canary` (an `sk.Canary` between two arms) the router starts a
    progressive rollout when the app starts: the candidate gets `canary.steps[0]` percent at
    once (the `weights` given are replaced), and the canary's `output` (when `output` is not
    given) declares what its output check and shadow comparisons read. A bad argument raises
    `GraphError` naming it.
    """
    where = f"split {name!r}" if name else "split()"
    checked_arms = _check_arms(arms, where, "arms")
    if not checked_arms:
        raise GraphError(f"{where} has no arms; pass at least one, like {{'v1': Model.bind()}}")
    checked_shadow = _check_arms(shadow or {}, where, "shadow")
    overlap = sorted(set(checked_arms) & set(checked_shadow))
    if overlap:
        raise GraphError(f"{where}: {overlap} are both arms and shadows; give shadows names of their own")
    chosen = dict.fromkeys(checked_arms, 1.0) if weights is None else weights
    try:
        checked_weights = validate_weights(chosen, tuple(checked_arms), name or "split")
    except BadRequestError as exc:
        raise GraphError(exc.message) from None
    if (
        isinstance(shadow_fraction, bool)
        or not isinstance(shadow_fraction, int | float)
        or not 0 <= shadow_fraction <= 1
    ):
        raise GraphError(f"{where}: shadow_fraction must be a number in [0, 1]; got {shadow_fraction!r}")
    if on_unavailable not in ("redistribute", "fail"):
        raise GraphError(f"{where}: on_unavailable must be 'redistribute' or 'fail'; got {on_unavailable!r}")
    check_sticky(sticky, where)
    if output is not None and not callable(output):
        raise GraphError(f"{where}: output must be a function of a result; got {output!r}")
    if canary is not None:
        if not isinstance(canary, Canary):
            raise GraphError(f"{where}: canary must be a servekit.Canary(...); got {type(canary).__name__}")
        canary.validate_arms(checked_arms)
        first = canary.steps[0]
        checked_weights = dict.fromkeys(checked_arms, 0.0)
        checked_weights.update({canary.baseline: 100.0 - first, canary.candidate: first})
        output = output if output is not None else canary.output
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise GraphError(f"split name must be a non-empty string without '/', like 'clf'; got {name!r}")
    return Split(
        name,
        checked_arms,
        checked_weights,
        sticky,
        checked_shadow,
        float(shadow_fraction),
        on_unavailable,
        output,
        canary,
    )


def _check_arms(arms: object, where: str, what: str) -> dict[str, Application]:
    if not isinstance(arms, Mapping):
        raise GraphError(
            f"{where}: {what} must be a dict of name to bound deployment; got {type(arms).__name__}"
        )
    checked: dict[str, Application] = {}
    for arm, app in arms.items():
        if not isinstance(arm, str) or not arm:
            raise GraphError(f"{where}: {what} names must be non-empty strings; got {arm!r}")
        if isinstance(app, Deployment):
            raise GraphError(
                f"{where}: {what} {arm!r} is the unbound deployment {app.name!r}; pass {app.name}.bind(...)"
            )
        if not isinstance(app, Application):
            raise GraphError(
                f"{where}: {what} {arm!r} must be a bound deployment (Model.bind(...)); "
                f"got {type(app).__name__}"
            )
        checked[arm] = app
    return checked


def check_sticky(sticky: Sticky, where: str) -> None:
    """Raise `GraphError` unless `sticky` is None, a function, or ``"header|cookie|query:NAME"``."""
    if sticky is None or callable(sticky):
        return
    source, _, key = sticky.partition(":") if isinstance(sticky, str) else ("", "", "")
    if source not in STICKY_SOURCES or not key:
        raise GraphError(
            f"{where}: sticky must be 'header:NAME', 'cookie:NAME', 'query:NAME' or a function of the "
            f"call's arguments; got {sticky!r}"
        )


def sticky_source(sticky: Sticky) -> str | None:
    """The request-context key of a string `sticky` (header names lowercased), else None."""
    if not isinstance(sticky, str):
        return None
    source, _, key = sticky.partition(":")
    return f"header:{key.lower()}" if source == "header" else sticky


def validate_weights(weights: object, arms: Collection[str], router: str) -> dict[str, float]:
    """`weights` as a complete arm -> float map (arms not named get 0); raises `BadRequestError`.

    Refused: a map that is not a dict or is empty, names an arm the router lacks, has a negative,
    non-number or non-finite weight, or whose weights are all zero. The message names the problem.
    """
    example = ", ".join(f'"{arm}": {100 if i == 0 else 0}' for i, arm in enumerate(sorted(arms)))
    if not isinstance(weights, Mapping) or not weights:
        raise BadRequestError(
            f"router {router!r}: weights must be a non-empty map of arm to weight, like {{{example}}}; "
            f"got {weights!r}"
        )
    unknown = sorted(str(arm) for arm in weights if arm not in arms)
    if unknown:
        raise BadRequestError(
            f"router {router!r} has no arm {', '.join(map(repr, unknown))}; its arms are {sorted(arms)}"
        )
    result = dict.fromkeys(arms, 0.0)
    for arm, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise BadRequestError(
                f"router {router!r}: the weight of arm {arm!r} must be a number; got {weight!r}"
            )
        if weight < 0:
            raise BadRequestError(f"router {router!r}: the weight of arm {arm!r} is negative ({weight!r})")
        result[arm] = float(weight)
    if sum(result.values()) <= 0:
        raise BadRequestError(f"router {router!r}: the weights are all zero; give some arm a positive weight")
    return result
