"""`servekit.metrics`: user counters, gauges and histograms, their checked names, labels and values,
the cap on label sets, and the deployment and replica every series is recorded in."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

import servekit as sk
from servekit._replica.context import ReplicaContext, enter_replica, exit_replica
from servekit._telemetry.metrics import render
from servekit._telemetry.user_metrics import MetricRegistry


@pytest.fixture
def registry() -> MetricRegistry:
    """A registry of its own, labelling series with a settable (deployment, replica)."""
    where = {"value": ("Model", "Model#0")}
    made = MetricRegistry(("deployment", "replica"), lambda: where["value"])
    made.where = where  # type: ignore[attr-defined]
    return made


def samples(registry: MetricRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} of `registry`, as prometheus_client's parser reads them."""
    body, _ = render(registry.collect())
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_a_counter_counts_per_label_set_and_per_replica(registry: MetricRegistry) -> None:
    hits = registry.counter("cache_hits_total", "Cache hits.", labels=["model"])
    hits.labels(model="a").inc()
    hits.inc(2, labels={"model": "a"})
    registry.where["value"] = ("Model", "Model#1")  # type: ignore[attr-defined]
    hits.labels(model="a").inc()
    found = samples(registry)["cache_hits_total"]
    assert ({"deployment": "Model", "replica": "Model#0", "model": "a"}, 3.0) in found
    assert ({"deployment": "Model", "replica": "Model#1", "model": "a"}, 1.0) in found


def test_gauges_go_both_ways_and_histograms_count_per_bucket(registry: MetricRegistry) -> None:
    cached = registry.gauge("cached_items", "Items in the cache.")
    cached.set(10)
    cached.inc(5)
    cached.dec()
    cached.labels().dec(2)
    sizes = registry.histogram("input_tokens", "Tokens per input.", labels=["model"], buckets=[8, 64])
    for tokens in (3, 8, 20, 500):
        sizes.labels(model="a").observe(tokens)
    found = samples(registry)
    assert found["cached_items"] == [({"deployment": "Model", "replica": "Model#0"}, 12.0)]
    buckets = {labels["le"]: value for labels, value in found["input_tokens_bucket"]}
    assert buckets == {"8.0": 2.0, "64.0": 3.0, "+Inf": 4.0}
    assert found["input_tokens_sum"][0][1] == 531.0


def test_defining_again_returns_the_same_metric_and_a_different_definition_is_refused(
    registry: MetricRegistry,
) -> None:
    first = registry.counter("requests", "Requests.", labels=["route"])
    assert registry.counter("requests_total", "Requests.", labels=["route"]) is first
    with pytest.raises(
        ValueError, match=r"'requests' is already defined as a counter with labels \['route'\]"
    ):
        registry.counter("requests", "Requests.", labels=["path"])
    with pytest.raises(ValueError, match="already defined as a counter"):
        registry.gauge("requests", "Requests.")
    registry.histogram("latency", "Latency.", buckets=[1, 2])
    with pytest.raises(ValueError, match=r"buckets \[1.0, 2.0\]; it cannot also be"):
        registry.histogram("latency", "Latency.", buckets=[1, 3])


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("2fast", [], "metric name '2fast' is invalid"),
        ("has-dash", [], "metric name 'has-dash' is invalid"),
        ("servekit_mine", [], "servekit's own"),
        ("ok", ["bad-label"], "label name 'bad-label' is invalid"),
        ("ok", ["__hidden"], "label name '__hidden' is invalid"),
        ("ok", ["replica"], "label name 'replica' is reserved"),
        ("ok", ["deployment"], "label name 'deployment' is reserved"),
        ("ok", ["a", "a"], "label names repeat"),
        ("ok", "model", "labels must be a list of names"),
    ],
)
def test_bad_names_and_label_names_are_refused_at_definition(
    registry: MetricRegistry, name: str, labels: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        registry.counter(name, "Described.", labels=labels)  # type: ignore[arg-type]


def test_histograms_refuse_le_as_a_label_and_bad_buckets(registry: MetricRegistry) -> None:
    with pytest.raises(ValueError, match="label name 'le' is reserved"):
        registry.histogram("h1", "H.", labels=["le"])
    with pytest.raises(ValueError, match="buckets must increase"):
        registry.histogram("h2", "H.", buckets=[1, 1])
    with pytest.raises(ValueError, match="finite upper bounds"):
        registry.histogram("h3", "H.", buckets=[])
    with pytest.raises(ValueError, match="buckets must be numbers"):
        registry.histogram("h4", "H.", buckets=["a"])  # type: ignore[list-item]
    assert registry.histogram("h5", "H.", buckets=[1, float("inf")]).buckets == (1.0,)


def test_bad_label_values_are_refused_with_the_metric_and_label_named(registry: MetricRegistry) -> None:
    hits = registry.counter("hits", "Hits.", labels=["model", "status"])
    with pytest.raises(ValueError, match=r"'hits' takes labels \['model', 'status'\]: missing \['status'\]"):
        hits.labels(model="a")
    with pytest.raises(ValueError, match=r"missing \['status'\] and unknown \['colour'\]"):
        hits.inc(labels={"model": "a", "colour": "red"})
    with pytest.raises(ValueError, match=r"label 'model' must be a string \(or an int\), not float 0.5"):
        hits.labels(model=0.5, status="ok")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label 'model' is 300 characters long"):
        hits.labels(model="x" * 300, status="ok")
    assert hits.labels(model=7, status=True)._values == ("7", "true")


def test_bad_values_are_refused(registry: MetricRegistry) -> None:
    hits = registry.counter("hits", "Hits.")
    with pytest.raises(ValueError, match="can only go up by a finite amount >= 0, not -1"):
        hits.inc(-1)
    with pytest.raises(ValueError, match="records numbers, not str '1'"):
        hits.inc("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot record NaN"):
        registry.gauge("g", "G.").set(float("nan"))
    with pytest.raises(TypeError, match="is a counter: it has no observe"):
        hits.labels().observe(1)
    with pytest.raises(TypeError, match="is a histogram: observe"):
        registry.histogram("h", "H.").labels().inc()


def test_label_sets_past_the_cap_are_refused_and_memory_stays_bounded(registry: MetricRegistry) -> None:
    seen = registry.counter("by_user", "Requests by user (a mistake).", labels=["user"], max_label_sets=50)
    for user in range(50):
        seen.labels(user=user).inc()
    with pytest.raises(ValueError, match=r"already has max_label_sets=50 label sets; .*'user': '50'"):
        seen.labels(user=50).inc()
    seen.labels(user=3).inc()  # a known label set still records
    assert len(samples(registry)["by_user_total"]) == 50
    with pytest.raises(ValueError, match="max_label_sets must be an int >= 1"):
        registry.counter("other", "O.", max_label_sets=0)


def test_threads_recording_at_once_lose_no_increments(registry: MetricRegistry) -> None:
    hits = registry.counter("hits", "Hits.").labels()

    def work() -> None:
        for _ in range(2000):
            hits.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert samples(registry)["hits_total"][0][1] == 8000.0


def test_sk_metrics_labels_each_series_with_the_replica_it_was_recorded_in() -> None:
    counter = sk.metrics.counter("unit_test_calls_total", "Calls in a unit test.", labels=["kind"])
    token = enter_replica(ReplicaContext("Scorer", "Scorer#3"))
    try:
        counter.labels(kind="x").inc()
    finally:
        exit_replica(token)
    counter.labels(kind="x").inc()  # outside a replica
    family = next(f for f in sk.metrics.collect() if f.name == "unit_test_calls")
    labels = [
        (s.labels["deployment"], s.labels["replica"]) for s in family.samples if s.name.endswith("_total")
    ]
    assert ("Scorer", "Scorer#3") in labels
    assert ("", "") in labels


def test_a_stopped_replicas_series_are_forgotten(registry: MetricRegistry) -> None:
    hits = registry.counter("hits", "Hits.")
    hits.inc()
    registry.where["value"] = ("Model", "Model#1")  # type: ignore[attr-defined]
    hits.inc()
    registry.forget(("Model", "Model#0"))
    assert samples(registry)["hits_total"] == [({"deployment": "Model", "replica": "Model#1"}, 1.0)]
