"""Sticky assignment: weighted rendezvous (highest random weight) hashing of a key to an arm.

In: a routing key (a user id, say) and the weights. Out: the key's arm. Each (key, arm) pair
gets a fixed pseudo-random number u in (0, 1); the arm with the highest ``-weight / ln(u)``
wins, which gives each arm a share of keys equal to its weight's share. When the weights
change, a key moves only if its arm lost to an arm whose weight grew: the minimal movement.
Pure and deterministic across processes and runs (blake2b, not Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping

_SCALE = float(1 << 64)


def key_unit(key: str, arm: str) -> float:
    """The fixed number in (0, 1) of the pair (`key`, `arm`)."""
    digest = hashlib.blake2b(f"{arm}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def sticky_arm(key: str, weights: Mapping[str, float], allowed: Collection[str] | None = None) -> str | None:
    """The arm `key` sticks to under `weights` (only among `allowed` when given); None if none can."""
    best: str | None = None
    best_score = -math.inf
    for arm, weight in weights.items():
        if weight <= 0 or (allowed is not None and arm not in allowed):
            continue
        score = -weight / math.log(key_unit(key, arm))
        if score > best_score:
            best, best_score = arm, score
    return best
