"""The metric accumulators and families: histogram buckets, quantiles, merging, exposition, and the
deltas a backend that records one value at a time (Ray) is given."""

from __future__ import annotations

import math

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from servekit._telemetry.metrics import (
    FAMILIES,
    MAX_METHODS,
    OTHER,
    Buckets,
    MethodCalls,
    SnapshotDeltas,
    call_families,
    merge_families,
    quantile,
    render,
    replay_values,
)


def parse(body: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """{family: [(sample name, labels, value)]} as prometheus_client's own parser reads `body`."""
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(body.decode())
    }


def test_a_value_on_a_bound_counts_in_that_bucket_and_above_every_bound_in_inf() -> None:
    buckets = Buckets((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 9.0):
        buckets.observe(value)
    assert buckets.counts == [2, 2, 1]
    assert buckets.cumulative() == [("1.0", 2.0), ("2.0", 4.0), ("+Inf", 5.0)]
    assert buckets.sum == 14.0
    assert Buckets.from_dict(buckets.to_dict()).counts == buckets.counts


def test_buckets_from_a_document_with_the_wrong_number_of_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="3 counts for 1 bounds"):
        Buckets.from_dict({"bounds": [1.0], "counts": [1, 2, 3], "sum": 0.0})


def test_quantile_interpolates_inside_its_bucket_like_histogram_quantile() -> None:
    assert quantile((1.0, 2.0), [0, 4, 0], 0.5) == pytest.approx(1.5)
    assert quantile((1.0, 2.0), [2, 2, 0], 0.99) == pytest.approx(1.98)
    assert quantile((1.0, 2.0), [0, 0, 3], 0.5) == 2.0  # the open bucket answers its lower bound
    assert quantile((1.0, 2.0), [0, 0, 0], 0.5) is None


def test_method_calls_keep_errors_apart_and_stop_adding_names_past_the_cap() -> None:
    calls = MethodCalls()
    calls.record("predict", 0.002, True)
    calls.record("predict", 0.004, False)
    for index in range(MAX_METHODS + 10):
        calls.record(f"m{index}", 0.001, True)
    assert len(calls.methods) == MAX_METHODS
    assert calls.methods[OTHER].latency.count == 12
    families = parse(render(call_families({"Model": calls}))[0])
    requests = families["servekit_deployment_requests"]
    assert (
        "servekit_deployment_requests_total",
        {"deployment": "Model", "method": "predict", "outcome": "ok"},
        1.0,
    ) in requests
    assert (
        "servekit_deployment_requests_total",
        {"deployment": "Model", "method": "predict", "outcome": "error"},
        1.0,
    ) in requests
    durations = families["servekit_deployment_request_duration_seconds"]
    count = next(v for n, labels, v in durations if n.endswith("_count") and labels["method"] == "predict")
    assert count == 2.0


def test_merging_joins_the_samples_of_one_name_and_leaves_out_a_type_clash() -> None:
    first = CounterMetricFamily("jobs", "Jobs.", labels=["replica"])
    first.add_metric(["a"], 1)
    second = CounterMetricFamily("jobs", "Jobs.", labels=["replica"])
    second.add_metric(["b"], 2)
    clash = GaugeMetricFamily("jobs", "Jobs, differently.", labels=["replica"])
    clash.add_metric(["c"], 3)
    merged = merge_families([first], [second, clash])
    assert len(merged) == 1
    assert [s.labels["replica"] for s in merged[0].samples] == ["a", "b"]
    assert [s.labels["replica"] for s in first.samples] == ["a"]  # the sources are left as they were


def test_render_answers_openmetrics_when_the_scraper_asks_for_it() -> None:
    family = GaugeMetricFamily("up_now", "Up.")
    family.add_metric([], 1)
    text, text_type = render([family])
    assert text_type.startswith("text/plain; version=0.0.4")
    assert b"up_now 1.0" in text
    body, content_type = render([family], "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_every_family_is_named_servekit_and_counters_end_in_total() -> None:
    for name, info in FAMILIES.items():
        assert name.startswith("servekit_")
        assert (info.kind == "counter") == name.endswith("_total"), name
        assert info.help.endswith("."), name


def test_deltas_give_counter_increases_gauge_values_and_restart_after_a_drop() -> None:
    deltas = SnapshotDeltas()

    def snapshot(count: float, level: float) -> list[object]:
        counter = CounterMetricFamily("hits", "Hits.", labels=["kind"])
        counter.add_metric(["a"], count)
        gauge = GaugeMetricFamily("level", "Level.")
        gauge.add_metric([], level)
        return [counter, gauge]

    first = deltas.increments(snapshot(5, 1))
    assert [(i.family, i.kind, i.value) for i in first] == [("hits", "counter", 5), ("level", "gauge", 1)]
    assert first[0].labels == {"kind": "a"}
    assert [(i.family, i.value) for i in deltas.increments(snapshot(7, 2))] == [("hits", 2), ("level", 2)]
    assert [(i.family, i.value) for i in deltas.increments(snapshot(7, 2))] == [("level", 2)]
    assert [(i.family, i.value) for i in deltas.increments(snapshot(3, 2))] == [("hits", 3), ("level", 2)]


def test_histogram_deltas_replay_new_observations_in_their_buckets_with_their_sum() -> None:
    deltas = SnapshotDeltas()
    buckets = Buckets((0.1, 1.0))

    def snapshot() -> list[object]:
        family = HistogramMetricFamily("latency", "Latency.", labels=["route"])
        family.add_metric(["/x"], buckets.cumulative(), buckets.sum)
        return [family]

    for value in (0.05, 0.07, 0.5):
        buckets.observe(value)
    (first,) = deltas.increments(snapshot())
    assert first.bounds == (0.1, 1.0)
    assert first.labels == {"route": "/x"}
    assert [n for _, n in first.observations] == [2, 1]
    assert sum(v * n for v, n in first.observations) == pytest.approx(0.62)
    assert deltas.increments(snapshot()) == []
    buckets.observe(3.0)
    (second,) = deltas.increments(snapshot())
    assert second.observations == ((pytest.approx(3.0), 1),)


@pytest.mark.parametrize(
    ("counts", "total"),
    [([3, 0, 0], 0.12), ([1, 2, 0], 1.2), ([0, 1, 2], 9.0), ([5, 5, 5], 4.0), ([0, 0, 1], 1.1)],
)
def test_replayed_values_stay_in_their_buckets(counts: list[int], total: float) -> None:
    bounds = (0.1, 1.0)
    values = replay_values(bounds, counts, total)
    edges = [0.0, *bounds, math.inf]
    for index, (value, count) in enumerate(zip(values, counts, strict=True)):
        if count:
            assert edges[index] < value <= edges[index + 1]
            probe = Buckets(bounds)
            probe.observe(value)
            assert probe.counts[index] == 1


def test_replayed_values_add_up_to_the_sum_when_the_buckets_allow_it() -> None:
    values = replay_values((0.1, 1.0), [2, 2, 0], 1.0)
    assert sum(v * n for v, n in zip(values, [2, 2, 0], strict=True)) == pytest.approx(1.0)
