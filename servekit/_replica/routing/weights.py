"""Weights: validating a weight map, and the deterministic weighted choice of an arm.

In: a weight map (arm -> non-negative number) and, per call, the arms that can take it.
Out: the arm for the call. `SmoothWeightedChoice` is smooth weighted round-robin (as in
nginx): over any run of calls each arm's share is within one call of its weight's share, and
arms interleave rather than come in bursts. Nothing here reads a clock or draws a random number.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from servekit._spec.routing import validate_weights


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Each arm's fraction of the traffic (the weights normalised to sum to 1)."""
    total = sum(weights.values())
    return {arm: (weight / total if total > 0 else 0.0) for arm, weight in weights.items()}


class SmoothWeightedChoice:
    """Smooth weighted round-robin over fixed weights: exact shares, interleaved, deterministic."""

    __slots__ = ("_arms", "_current", "_weights")

    def __init__(self, weights: Mapping[str, float]) -> None:
        self._arms = tuple(arm for arm, weight in weights.items() if weight > 0)
        self._weights = tuple(weights[arm] for arm in self._arms)
        self._current = [0.0] * len(self._arms)

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms with a positive weight, in the order given."""
        return self._arms

    def choose(self, allowed: Collection[str] | None = None) -> str | None:
        """The next arm (only among `allowed` when given); None when no weighted arm is allowed."""
        current, weights, arms = self._current, self._weights, self._arms
        best = -1
        total = 0.0
        for index, weight in enumerate(weights):
            if allowed is not None and arms[index] not in allowed:
                continue
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            return None
        current[best] -= total
        return arms[best]


__all__ = ["SmoothWeightedChoice", "shares", "validate_weights"]
