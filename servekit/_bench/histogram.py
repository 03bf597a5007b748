"""A latency histogram in microseconds: fixed memory, mergeable across processes, percentiles
within 0.4% of the exact value (log-linear buckets, as HdrHistogram with 128 sub-buckets).

Values in (int microseconds), counts, percentiles and a serialisable form out; no clocks.
Values below 256 µs are kept exactly; above, each power of two is cut into 128 buckets,
so a bucket is at most 1/128 of its value wide and its midpoint is within 1/256.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SUB_BITS = 7
SUB = 1 << SUB_BITS
EXACT_BELOW = 2 * SUB
_BUCKETS = SUB * 32  # up to 2**31 µs (35 minutes); longer values land in the last bucket


def bucket_of(value_us: int) -> int:
    """The bucket index of `value_us` (negative values count as 0)."""
    if value_us < EXACT_BELOW:
        return max(value_us, 0)
    shift = value_us.bit_length() - SUB_BITS - 1
    return min(SUB * shift + (value_us >> shift), _BUCKETS - 1)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest microsecond value that land in bucket `index`."""
    if index < EXACT_BELOW:
        return index, index
    shift = (index >> SUB_BITS) - 1
    mantissa = index - SUB * shift
    return mantissa << shift, ((mantissa + 1) << shift) - 1


@dataclass
class Histogram:
    """Counts of latencies in microseconds; `record` is O(1), `merge` adds another's counts."""

    counts: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    total: int = 0
    sum_us: int = 0
    min_us: int = 0
    max_us: int = 0

    def record(self, value_us: int) -> None:
        """Count one latency."""
        self.counts[bucket_of(value_us)] += 1
        if self.total == 0 or value_us < self.min_us:
            self.min_us = value_us
        self.max_us = max(self.max_us, value_us)
        self.total += 1
        self.sum_us += value_us

    def merge(self, other: Histogram) -> None:
        """Add `other`'s counts to these."""
        if other.total == 0:
            return
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.sum_us += other.sum_us

    @property
    def mean_us(self) -> float | None:
        """The mean latency, or None when nothing was recorded."""
        return self.sum_us / self.total if self.total else None

    def percentile(self, q: float) -> float | None:
        """The value at percentile `q` (0 to 100, nearest rank), or None when nothing was recorded.

        The value is its bucket's midpoint, clamped to the smallest and largest value recorded.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be between 0 and 100, not {q}")
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q / 100 * self.total))
        seen = 0
        for index, count in self._nonzero():
            seen += count
            if seen >= rank:
                low, high = bucket_bounds(index)
                return float(min(max((low + high) / 2, self.min_us), self.max_us))
        return float(self.max_us)

    def percentiles(self, qs: Iterable[float]) -> dict[float, float | None]:
        """`percentile(q)` for each of `qs`."""
        return {q: self.percentile(q) for q in qs}

    def _nonzero(self) -> Iterator[tuple[int, int]]:
        return ((index, count) for index, count in enumerate(self.counts) if count)

    def to_sparse(self) -> dict[str, object]:
        """A compact JSON-ready form (only the non-empty buckets), read back by `from_sparse`."""
        return {
            "buckets": {str(index): count for index, count in self._nonzero()},
            "total": self.total,
            "sum_us": self.sum_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_sparse(cls, data: dict[str, object]) -> Histogram:
        """The histogram `to_sparse` wrote."""
        histogram = cls()
        buckets = data.get("buckets", {})
        assert isinstance(buckets, dict)
        for index, count in buckets.items():
            histogram.counts[int(index)] = int(count)
        histogram.total = int(str(data.get("total", 0)))
        histogram.sum_us = int(str(data.get("sum_us", 0)))
        histogram.min_us = int(str(data.get("min_us", 0)))
        histogram.max_us = int(str(data.get("max_us", 0)))
        return histogram
