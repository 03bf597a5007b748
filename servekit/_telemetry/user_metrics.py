"""Metrics that user code defines and records: counters, gauges and histograms with checked labels.

In: definitions (a name, a description, label names, histogram bounds) and recordings with label
values. Out: prometheus_client metric families (`MetricRegistry.collect`). Every series also
carries the labels the registry adds from where it is recorded (the deployment and replica), so
snapshots from several processes merge without clashes. Bad names, labels and values raise
`ValueError` naming the problem, and a metric refuses new label sets past its cap, so a label
fed from user input can never grow memory without bound.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from servekit._telemetry.metrics import LATENCY_BUCKETS_S, Buckets, Kind

DEFAULT_MAX_LABEL_SETS = 1000
"""How many distinct label sets one metric may hold in one process unless it says otherwise."""
MAX_LABEL_VALUE_CHARS = 256
RESERVED_PREFIX = "servekit_"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = Mapping[str, str | int | bool] | None


class UserMetric(ABC):
    """One metric defined by user code; see `servekit.metrics.counter` and its siblings."""

    kind: Kind = "counter"

    def __init__(
        self,
        registry: MetricRegistry,
        name: str,
        description: str,
        labels: tuple[str, ...],
        max_label_sets: int,
    ) -> None:
        self.name = name
        self.description = description
        self.label_names = labels
        self.max_label_sets = max_label_sets
        self._registry = registry
        self._series: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def labels(self, **values: str | int | bool) -> BoundMetric:
        """This metric with its label values fixed (checked once, here): `.labels(model="a").inc()`."""
        return BoundMetric(self, self._values(values))

    def _values(self, given: LabelValues) -> tuple[str, ...]:
        given = given or {}
        if given.keys() != set(self.label_names):
            missing = [name for name in self.label_names if name not in given]
            unknown = sorted(set(given) - set(self.label_names))
            problems = []
            if missing:
                problems.append(f"missing {missing}")
            if unknown:
                problems.append(f"unknown {unknown}")
            raise ValueError(
                f"metric {self.name!r} takes labels {list(self.label_names)}: {' and '.join(problems)}"
            )
        return tuple(_label_value(self.name, name, given[name]) for name in self.label_names)

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        return self._registry.context() + values

    def _series_for(self, key: tuple[str, ...]) -> Any:
        """The series of `key`, made under the lock and refused past the cap."""
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_label_sets:
                    shown = dict(zip(self._registry.context_labels + self.label_names, key, strict=True))
                    raise ValueError(
                        f"metric {self.name!r} already has max_label_sets={self.max_label_sets} label "
                        f"sets; {shown} would add another. Label values must come from a small fixed "
                        "set (a model name, a status), never from ids, user input or timestamps; raise "
                        "the cap with max_label_sets= if the set really is larger"
                    )
                series = self._series[key] = self._new_series()
            return series

    def _new_series(self) -> Any:
        return [0.0]

    def forget(self, context: tuple[str, ...]) -> None:
        """Drop the series recorded where `context` says (a replica that stopped)."""
        size = len(context)
        with self._lock:
            for key in [key for key in self._series if key[:size] == context]:
                del self._series[key]

    def _snapshot(self) -> list[tuple[tuple[str, ...], Any]]:
        with self._lock:
            return [(key, self._copy(series)) for key, series in self._series.items()]

    def _copy(self, series: Any) -> Any:
        return series[0]

    @abstractmethod
    def _family(self) -> Metric:
        """An empty family of this metric's kind, which `collect` fills."""

    def collect(self) -> Metric:
        """This metric's family, one sample (set) per label set."""
        family = self._family()
        for key, value in self._snapshot():
            self._add(family, list(key), value)
        return family

    def _add(self, family: Metric, key: list[str], value: Any) -> None:
        family.add_metric(key, value)  # type: ignore[attr-defined]

    def same_definition(self, kind: Kind, labels: tuple[str, ...], extra: Any) -> bool:
        """Whether a new definition with these properties is this one again."""
        return kind == self.kind and labels == self.label_names

    def describe(self) -> str:
        """The definition, in words (for errors)."""
        return f"a {self.kind} with labels {list(self.label_names)}"


class Counter(UserMetric):
    """A value that only goes up: requests served, tokens generated."""

    kind: Kind = "counter"

    def inc(self, amount: float = 1.0, labels: LabelValues = None) -> None:
        """Add `amount` (>= 0) to the series of `labels`."""
        self._inc(self._values(labels), amount)

    def _inc(self, values: tuple[str, ...], amount: float) -> None:
        number = _number(self.name, amount)
        if number < 0 or math.isinf(number):
            raise ValueError(f"counter {self.name!r} can only go up by a finite amount >= 0, not {amount!r}")
        key = self._key(values)
        series = self._series.get(key)
        if series is None:
            series = self._series_for(key)
        with self._lock:
            series[0] += amount

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.description, labels=self._registry.label_names(self))


class Gauge(UserMetric):
    """A value that goes up and down: items in a cache, the loaded model's size."""

    kind: Kind = "gauge"

    def set(self, value: float, labels: LabelValues = None) -> None:
        """Set the series of `labels` to `value`."""
        number = _number(self.name, value)
        series = self._series_for(self._key(self._values(labels)))
        with self._lock:
            series[0] = number

    def inc(self, amount: float = 1.0, labels: LabelValues = None) -> None:
        """Add `amount` to the series of `labels`."""
        self._add_value(self._values(labels), _number(self.name, amount))

    def dec(self, amount: float = 1.0, labels: LabelValues = None) -> None:
        """Subtract `amount` from the series of `labels`."""
        self._add_value(self._values(labels), -_number(self.name, amount))

    def _add_value(self, values: tuple[str, ...], amount: float) -> None:
        series = self._series_for(self._key(values))
        with self._lock:
            series[0] += amount

    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.description, labels=self._registry.label_names(self))


class Histogram(UserMetric):
    """A distribution: latencies, sizes, scores, counted per bucket."""

    kind: Kind = "histogram"

    def __init__(
        self,
        registry: MetricRegistry,
        name: str,
        description: str,
        labels: tuple[str, ...],
        max_label_sets: int,
        *,
        buckets: tuple[float, ...],
    ) -> None:
        super().__init__(registry, name, description, labels, max_label_sets)
        self.buckets = buckets

    def observe(self, value: float, labels: LabelValues = None) -> None:
        """Count `value` in the series of `labels`."""
        self._observe(self._values(labels), value)

    def _observe(self, values: tuple[str, ...], value: float) -> None:
        number = _number(self.name, value)
        series = self._series_for(self._key(values))
        with self._lock:
            series.observe(number)

    def _new_series(self) -> Buckets:
        return Buckets(self.buckets)

    def _copy(self, series: Buckets) -> tuple[list[tuple[str, float]], float]:
        return series.cumulative(), series.sum

    def _add(self, family: Metric, key: list[str], value: Any) -> None:
        buckets, total = value
        family.add_metric(key, buckets, total)  # type: ignore[attr-defined]

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.description, labels=self._registry.label_names(self))

    def same_definition(self, kind: Kind, labels: tuple[str, ...], extra: Any) -> bool:
        """Whether a new definition is this one again (the same bounds too)."""
        return super().same_definition(kind, labels, extra) and extra == self.buckets

    def describe(self) -> str:
        """The definition, in words (for errors)."""
        return f"{super().describe()} and buckets {list(self.buckets)}"


class BoundMetric:
    """A metric with its label values fixed: `inc`, `set`, `dec` or `observe` it like the metric."""

    __slots__ = ("_metric", "_values")

    def __init__(self, metric: UserMetric, values: tuple[str, ...]) -> None:
        self._metric = metric
        self._values = values

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (a counter or a gauge)."""
        metric = self._metric
        if isinstance(metric, Counter):
            metric._inc(self._values, amount)
        elif isinstance(metric, Gauge):
            metric._add_value(self._values, _number(metric.name, amount))
        else:
            raise TypeError(f"metric {metric.name!r} is a histogram: observe() it")

    def dec(self, amount: float = 1.0) -> None:
        """Subtract `amount` (a gauge)."""
        metric = self._require(Gauge, "dec")
        metric._add_value(self._values, -_number(metric.name, amount))

    def set(self, value: float) -> None:
        """Set the value (a gauge)."""
        metric = self._require(Gauge, "set")
        series = metric._series_for(metric._key(self._values))
        number = _number(metric.name, value)
        with metric._lock:
            series[0] = number

    def observe(self, value: float) -> None:
        """Count `value` (a histogram)."""
        self._require(Histogram, "observe")._observe(self._values, value)

    def _require(self, kind: type[Any], action: str) -> Any:
        if not isinstance(self._metric, kind):
            raise TypeError(f"metric {self._metric.name!r} is a {self._metric.kind}: it has no {action}()")
        return self._metric


class MetricRegistry:
    """The user metrics of one process, each series labelled with where it was recorded.

    `context_labels` names the labels `context()` gives at each recording (deployment, replica).
    """

    def __init__(self, context_labels: tuple[str, ...], context: Callable[[], tuple[str, ...]]) -> None:
        self.context_labels = context_labels
        self.context = context
        self._metrics: dict[str, UserMetric] = {}
        self._lock = threading.Lock()

    def counter(
        self, name: str, description: str, labels: Sequence[str] = (), max_label_sets: int | None = None
    ) -> Counter:
        """Define (or get again) counter `name`."""
        found = self._define(Counter, name, description, labels, max_label_sets)
        assert isinstance(found, Counter)
        return found

    def gauge(
        self, name: str, description: str, labels: Sequence[str] = (), max_label_sets: int | None = None
    ) -> Gauge:
        """Define (or get again) gauge `name`."""
        found = self._define(Gauge, name, description, labels, max_label_sets)
        assert isinstance(found, Gauge)
        return found

    def histogram(
        self,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
        max_label_sets: int | None = None,
    ) -> Histogram:
        """Define (or get again) histogram `name` with finite, increasing bucket bounds `buckets`."""
        bounds = _bounds(name, buckets)
        found = self._define(Histogram, name, description, labels, max_label_sets, buckets=bounds)
        assert isinstance(found, Histogram)
        return found

    def forget(self, context: tuple[str, ...]) -> None:
        """Drop every series recorded where `context` says, like a replica that stopped, so that
        replicas coming and going never add up to unbounded memory."""
        with self._lock:
            metrics = list(self._metrics.values())
        for metric in metrics:
            metric.forget(context)

    def label_names(self, metric: UserMetric) -> list[str]:
        """Every label of `metric`'s series: the registry's own, then the metric's."""
        return [*self.context_labels, *metric.label_names]

    def collect(self) -> list[Metric]:
        """Every metric's family, each series with its current value."""
        with self._lock:
            metrics = list(self._metrics.values())
        return [metric.collect() for metric in metrics]

    def _define(
        self,
        kind: type[UserMetric],
        name: str,
        description: str,
        labels: Sequence[str],
        max_label_sets: int | None,
        *,
        buckets: tuple[float, ...] | None = None,
    ) -> UserMetric:
        stored = _metric_name(name, kind.kind)
        names = self._label_names(name, labels, kind.kind)
        cap = _cap(name, max_label_sets)
        if not isinstance(description, str):
            raise ValueError(f"metric {name!r}: the description must be a string, not {description!r}")
        with self._lock:
            known = self._metrics.get(stored)
            if known is not None:
                if not known.same_definition(kind.kind, names, buckets):
                    asked = f"a {kind.kind} with labels {list(names)}"
                    raise ValueError(
                        f"metric {name!r} is already defined as {known.describe()}; it cannot also be "
                        f"{asked}{'' if buckets is None else f' and buckets {list(buckets)}'}"
                    )
                return known
            if buckets is not None:
                made: UserMetric = Histogram(self, stored, description, names, cap, buckets=buckets)
            else:
                made = kind(self, stored, description, names, cap)
            self._metrics[stored] = made
            return made

    def _label_names(self, name: str, labels: Sequence[str], kind: Kind) -> tuple[str, ...]:
        if isinstance(labels, str):
            raise ValueError(
                f"metric {name!r}: labels must be a list of names, like ['model'], not {labels!r}"
            )
        names = tuple(labels)
        reserved = set(self.context_labels) | ({"le"} if kind == "histogram" else set()) | {"quantile"}
        for label in names:
            if not isinstance(label, str) or not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(
                    f"metric {name!r}: label name {label!r} is invalid; use letters, digits and "
                    "underscores, not starting with a digit or '__' (like 'model_version')"
                )
            if label in reserved:
                raise ValueError(
                    f"metric {name!r}: label name {label!r} is reserved (servekit adds "
                    f"{list(self.context_labels)} itself; 'le' and 'quantile' belong to Prometheus)"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"metric {name!r}: label names repeat: {list(names)}")
        return names


def _metric_name(name: str, kind: Kind) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"metric name {name!r} is invalid; use letters, digits, underscores and colons, not "
            "starting with a digit (like 'myapp_cache_hits_total')"
        )
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"metric name {name!r} is invalid: names starting with 'servekit_' are servekit's own"
        )
    if kind == "counter" and name.endswith("_total"):
        return name[: -len("_total")]  # the exposition adds it back
    return name


def _cap(name: str, max_label_sets: int | None) -> int:
    if max_label_sets is None:
        return DEFAULT_MAX_LABEL_SETS
    if isinstance(max_label_sets, bool) or not isinstance(max_label_sets, int) or max_label_sets < 1:
        raise ValueError(f"metric {name!r}: max_label_sets must be an int >= 1, not {max_label_sets!r}")
    return max_label_sets


def _bounds(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    try:
        bounds = tuple(float(bound) for bound in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"histogram {name!r}: buckets must be numbers, not {buckets!r}") from None
    if bounds and math.isinf(bounds[-1]):
        bounds = bounds[:-1]  # +Inf is always there
    if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds):
        raise ValueError(
            f"histogram {name!r}: buckets must be finite upper bounds, like [0.1, 0.5, 1], not {buckets!r}"
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError(f"histogram {name!r}: buckets must increase, got {list(bounds)}")
    return bounds


def _label_value(metric: str, label: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(
            f"metric {metric!r}: label {label!r} must be a string (or an int), not "
            f"{type(value).__name__} {value!r}"
        )
    if len(value) > MAX_LABEL_VALUE_CHARS:
        raise ValueError(
            f"metric {metric!r}: label {label!r} is {len(value)} characters long (at most "
            f"{MAX_LABEL_VALUE_CHARS}); label values name a small fixed set, like a model or a status"
        )
    return value


def _number(metric: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {metric!r} records numbers, not {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"metric {metric!r} cannot record NaN")
    return number
