"""servekit's metric families: their catalogue, the accumulators behind them, and their exposition.

In: observations recorded where they happen (`Buckets`, `CallStats`: a bisect and two additions,
no lock, for code on one event loop) and state read at scrape time. Out: prometheus_client
metric families (`Metric`), merged across sources and processes by `merge_families`, rendered
in the Prometheus text format (or OpenMetrics, when asked) by `render`. `SnapshotDeltas` turns
successive snapshots into increments for a backend that takes observations one by one (Ray).
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

logger = logging.getLogger("servekit.metrics")

Kind = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds of request and call latency histograms (seconds); +Inf is implied."""
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
"""Upper bounds of the batch-size histogram (items)."""
BATCH_WAIT_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Upper bounds of the batch-wait histogram (seconds an item waited for its batch to start)."""
MAX_METHODS = 256
"""Distinct method labels kept per deployment; calls of further names count as `OTHER`."""
OTHER = "<other>"


@dataclass(frozen=True)
class FamilyInfo:
    """One metric family servekit exposes: its name, type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def _info(name: str, kind: Kind, text: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, kind, text, labels)


FAMILIES: dict[str, FamilyInfo] = {
    info.name: info
    for info in (
        _info(
            "servekit_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status code.",
            "route",
            "method",
            "status",
        ),
        _info(
            "servekit_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to the end of its response, by route template and method.",
            "route",
            "method",
        ),
        _info("servekit_http_requests_in_progress", "gauge", "HTTP requests being served now."),
        _info(
            "servekit_deployment_requests_total",
            "counter",
            "Calls to a deployment's methods (HTTP and handle calls), by outcome: ok or error.",
            "deployment",
            "method",
            "outcome",
        ),
        _info(
            "servekit_deployment_request_duration_seconds",
            "histogram",
            "Time a call to a deployment's method took, queueing included (streams: to the last chunk).",
            "deployment",
            "method",
        ),
        _info(
            "servekit_deployment_ongoing_requests",
            "gauge",
            "Requests running on the deployment's replicas.",
            "deployment",
        ),
        _info(
            "servekit_deployment_queued_requests",
            "gauge",
            "Requests waiting for a replica with room.",
            "deployment",
        ),
        _info(
            "servekit_deployment_rejected_requests_total",
            "counter",
            "Requests refused with 503 because the deployment's queue was full.",
            "deployment",
        ),
        _info(
            "servekit_deployment_target_replicas",
            "gauge",
            "Replicas the deployment should run.",
            "deployment",
        ),
        _info("servekit_deployment_running_replicas", "gauge", "Replicas taking requests.", "deployment"),
        _info("servekit_deployment_starting_replicas", "gauge", "Replicas being started.", "deployment"),
        _info(
            "servekit_deployment_replica_restarts_total",
            "counter",
            "Replicas started to replace ones that died or failed their health check.",
            "deployment",
        ),
        _info(
            "servekit_deployment_health_check_failures_total",
            "counter",
            "Health checks that failed or timed out (each replaces its replica).",
            "deployment",
        ),
        _info(
            "servekit_autoscaling_decisions_total",
            "counter",
            "Autoscaling decisions that changed the target, by direction: up or down.",
            "deployment",
            "direction",
        ),
        _info(
            "servekit_autoscaling_desired_replicas",
            "gauge",
            "Replicas the autoscaler's last decision asked for.",
            "deployment",
        ),
        _info(
            "servekit_replica_ongoing_requests",
            "gauge",
            "Requests running on one replica.",
            "deployment",
            "replica",
        ),
        _info(
            "servekit_replica_info",
            "gauge",
            "One per running replica (value 1), with the device it was given.",
            "deployment",
            "replica",
            "device",
        ),
        _info(
            "servekit_batch_size",
            "histogram",
            "Items per batch formed by a @batch method.",
            "deployment",
            "replica",
            "method",
        ),
        _info(
            "servekit_batch_wait_seconds",
            "histogram",
            "Time an item waited in a @batch queue before its batch started.",
            "deployment",
            "replica",
            "method",
        ),
        _info(
            "servekit_batch_queued_items",
            "gauge",
            "Items waiting in a @batch queue.",
            "deployment",
            "replica",
            "method",
        ),
        _info("servekit_router_weight", "gauge", "A router arm's live weight.", "router", "arm"),
        _info(
            "servekit_router_requests_total",
            "counter",
            "Calls a router sent to an arm (shadow calls excluded), by outcome: ok or error.",
            "router",
            "arm",
            "outcome",
        ),
        _info(
            "servekit_rollout_state",
            "gauge",
            "A canary rollout's state: 1 for its current state, one series per router.",
            "router",
            "state",
        ),
        _info(
            "servekit_rollout_candidate_percent",
            "gauge",
            "The share of traffic a canary rollout gives its candidate now (percent).",
            "router",
        ),
        _info("servekit_app_ready", "gauge", "1 when every deployment runs its replicas, else 0."),
    )
}
"""Every family servekit exposes (docs/observability.md lists each one; a test pins the list)."""


def new_family(name: str) -> Metric:
    """An empty family of `FAMILIES[name]`, to add samples to."""
    info = FAMILIES[name]
    labels = list(info.labels)
    if info.kind == "counter":
        return CounterMetricFamily(name, info.help, labels=labels)
    if info.kind == "gauge":
        return GaugeMetricFamily(name, info.help, labels=labels)
    return HistogramMetricFamily(name, info.help, labels=labels)


class Buckets:
    """A histogram's counts per upper bound (the last slot is +Inf) and the sum of what it saw."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value in the first bucket whose bound is at least `value`."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, value: float, times: int) -> None:
        """Count `value` `times` times."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        """Values seen."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, values at or below it) per bound and +Inf, as a histogram sample takes them."""
        found: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            found.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: bounds, per-bucket counts (the last: above every bound), sum."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Buckets:
        """The histogram `to_dict` described."""
        found = cls(data["bounds"])
        counts = [int(count) for count in data["counts"]]
        if len(counts) != len(found.counts):
            raise ValueError(f"{len(counts)} counts for {len(found.bounds)} bounds")
        found.counts = counts
        found.sum = float(data["sum"])
        return found


def size_buckets(sizes: Mapping[Any, int]) -> Buckets:
    """The batch-size histogram of a queue's `sizes` ({items: batches})."""
    buckets = Buckets(BATCH_SIZE_BUCKETS)
    for size, count in sizes.items():
        buckets.observe_many(float(size), int(count))
    return buckets


class CallStats:
    """The calls of one method: their latency histogram and how many failed."""

    __slots__ = ("errors", "latency")

    def __init__(self) -> None:
        self.latency = Buckets(LATENCY_BUCKETS_S)
        self.errors = 0

    def record(self, seconds: float, ok: bool) -> None:
        """Count one call that took `seconds`."""
        self.latency.observe(seconds)
        if not ok:
            self.errors += 1


class MethodCalls:
    """`CallStats` per method of one deployment, at most `MAX_METHODS` names (then `OTHER`)."""

    __slots__ = ("methods",)

    def __init__(self) -> None:
        self.methods: dict[str, CallStats] = {}

    def record(self, method: str, seconds: float, ok: bool) -> None:
        """Count one call of `method`."""
        stats = self.methods.get(method)
        if stats is None:
            stats = self._new(method)
        stats.latency.observe(seconds)
        if not ok:
            stats.errors += 1

    def _new(self, method: str) -> CallStats:
        name = method if len(self.methods) < MAX_METHODS - 1 else OTHER
        return self.methods.setdefault(name, CallStats())

    def add_to(
        self, deployment: str, requests: CounterMetricFamily, durations: HistogramMetricFamily
    ) -> None:
        """Add this deployment's samples to the `servekit_deployment_requests_total` and
        `servekit_deployment_request_duration_seconds` families."""
        for method, stats in sorted(self.methods.items()):
            count = stats.latency.count
            requests.add_metric([deployment, method, "ok"], count - stats.errors)
            requests.add_metric([deployment, method, "error"], stats.errors)
            durations.add_metric([deployment, method], stats.latency.cumulative(), stats.latency.sum)


def call_families(calls: Mapping[str, MethodCalls]) -> list[Metric]:
    """The per-method request counter and latency histogram of each deployment in `calls`."""
    requests = cast(CounterMetricFamily, new_family("servekit_deployment_requests_total"))
    durations = cast(HistogramMetricFamily, new_family("servekit_deployment_request_duration_seconds"))
    for deployment, table in sorted(calls.items()):
        table.add_to(deployment, requests, durations)
    return [requests, durations]


def merge_families(*sources: Iterable[Metric]) -> list[Metric]:
    """One family per name, with the samples of every source (in order).

    A family whose type differs from an earlier one of the same name is left out (logged): two
    processes defined the same user metric differently.
    """
    merged: dict[str, Metric] = {}
    for source in sources:
        for family in source:
            known = merged.get(family.name)
            if known is None:
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = list(family.samples)
                merged[family.name] = copy
            elif known.type != family.type:
                logger.warning(
                    "metric %r is a %s in one process and a %s in another; showing the first",
                    family.name,
                    known.type,
                    family.type,
                )
            else:
                known.samples.extend(family.samples)
    return list(merged.values())


class _Families:
    """A prometheus_client collector over a fixed list of families."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: Sequence[Metric], accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of `families` in the format the `accept` header asks for: the
    Prometheus text format, or OpenMetrics when the scraper prefers it."""
    encode, content_type = choose_encoder(accept)
    return encode(_Families(families)), content_type


def with_labels(families: Iterable[Metric], extra: Mapping[str, str]) -> list[Metric]:
    """`families` with the labels `extra` added to every sample that lacks them."""
    found = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [sample._replace(labels={**extra, **sample.labels}) for sample in family.samples]
        found.append(copy)
    return found


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Increment:
    """What changed in one series since the last snapshot, as a backend that records one value at a
    time takes it: a counter's increase, a gauge's value, or a histogram's new observations."""

    family: str
    kind: Kind
    help: str
    labels: dict[str, str]
    value: float = 0.0
    """The counter's increase or the gauge's value."""
    observations: tuple[tuple[float, int], ...] = ()
    """For a histogram: (value, how many times) to observe, in its buckets, adding up to its sum."""
    bounds: tuple[float, ...] = ()
    """For a histogram: its finite bucket bounds."""


class SnapshotDeltas:
    """Turns successive snapshots of the same families into `Increment`s since the previous one.

    Counters give their increase (a counter that went down restarted: its whole value), gauges
    their value, histograms one observation value per bucket with new counts, chosen inside the
    bucket so that their total matches the histogram's new sum where the buckets allow it.
    """

    def __init__(self) -> None:
        self._last: dict[SeriesKey, Any] = {}

    def increments(self, families: Iterable[Metric]) -> list[Increment]:
        """What changed since the last call (every series is new on the first)."""
        found: list[Increment] = []
        for family in families:
            if family.type == "counter":
                found += self._counters(family)
            elif family.type == "gauge":
                found += [
                    Increment(family.name, "gauge", family.documentation, dict(s.labels), s.value)
                    for s in family.samples
                ]
            elif family.type == "histogram":
                found += self._histograms(family)
        return found

    def _counters(self, family: Metric) -> list[Increment]:
        found = []
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = (family.name, tuple(sorted(sample.labels.items())))
            last = self._last.get(key, 0.0)
            self._last[key] = sample.value
            delta = sample.value - last if sample.value >= last else sample.value
            if delta > 0:
                found.append(
                    Increment(family.name, "counter", family.documentation, dict(sample.labels), delta)
                )
        return found

    def _histograms(self, family: Metric) -> list[Increment]:
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            entry = series.setdefault(tuple(sorted(labels.items())), {"labels": labels, "buckets": []})
            if sample.name.endswith("_bucket"):
                entry["buckets"].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
        found = []
        for key, entry in series.items():
            cumulative = sorted(entry["buckets"])
            previous = [0.0] + [count for _, count in cumulative[:-1]]
            counts = [int(count - before) for (_, count), before in zip(cumulative, previous, strict=True)]
            bounds = tuple(bound for bound, _ in cumulative if not math.isinf(bound))
            now = (counts, float(entry.get("sum", 0.0)))
            last_counts, last_sum = self._last.get((family.name, key), ([0] * len(counts), 0.0))
            self._last[(family.name, key)] = now
            if _restarted(counts, last_counts):
                last_counts, last_sum = [0] * len(counts), 0.0
            new = [n - o for n, o in zip(counts, last_counts, strict=True)]
            if any(new):
                values = replay_values(bounds, new, now[1] - last_sum)
                observations = tuple((value, n) for value, n in zip(values, new, strict=True) if n)
                found.append(
                    Increment(
                        family.name,
                        "histogram",
                        family.documentation,
                        entry["labels"],
                        observations=observations,
                        bounds=bounds,
                    )
                )
        return found


def _restarted(counts: Sequence[int], last: Sequence[int]) -> bool:
    """Whether a histogram's counts went down (its process restarted) or its buckets changed."""
    return len(last) != len(counts) or any(now < before for now, before in zip(counts, last, strict=True))


def replay_values(bounds: Sequence[float], counts: Sequence[int], total: float) -> list[float]:
    """One value per bucket (`counts[i]` observations in bucket i: above `bounds[i-1]`, at most
    `bounds[i]`; the last bucket is above every bound) whose weighted sum is `total` when the
    buckets allow it, else as near as they allow.

    Each value starts at its bucket's middle and moves by the same fraction of the way to its
    lower or upper edge; the open last bucket takes what is left over.
    """
    edges = [0.0, *bounds]
    middles, room_up, room_down = [], [], []
    for index in range(len(counts)):
        if index < len(bounds):
            low, high = edges[index], bounds[index]
            middle = (low + high) / 2
            middles.append(middle)
            room_up.append(high - middle)
            room_down.append(middle - low)
        else:
            middles.append(edges[-1] * 1.5 if edges[-1] > 0 else 1.0)
            room_up.append(0.0)
            room_down.append(0.0)
    estimate = sum(n * m for n, m in zip(counts, middles, strict=True))
    gap = total - estimate
    room = sum(n * (up if gap > 0 else down) for n, up, down in zip(counts, room_up, room_down, strict=True))
    fraction = 0.0 if room <= 0 else max(-0.999, min(1.0, gap / room))
    values = [
        middle + fraction * (up if fraction > 0 else down)
        for middle, up, down in zip(middles, room_up, room_down, strict=True)
    ]
    last = len(counts) - 1
    if counts[last] and last == len(bounds):  # the open bucket absorbs what the others could not
        rest = total - sum(n * v for n, v in zip(counts[:last], values[:last], strict=True))
        values[last] = max(rest / counts[last], math.nextafter(edges[-1], math.inf))
    return values


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The `q`-quantile (0..1) of a histogram's per-bucket `counts`, interpolated inside its bucket
    as Prometheus' `histogram_quantile` does (the open last bucket answers its lower bound).
    None when the histogram is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1] if bounds else None
            low = bounds[index - 1] if index else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return bounds[-1] if bounds else None
