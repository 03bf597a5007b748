"""servekit's own span recording as pure functions and small parts: the samplers' maths, W3C
`traceparent` parsing, spans made current and ended, and the hand-off to the exporter (a burst
survives; a full queue drops and counts rather than growing)."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest

from servekit._telemetry.tracing import (
    Span,
    SpanContext,
    SpanRecorder,
    Tracing,
    format_traceparent,
    make_sampler,
    parse_traceparent,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN = 0x00F067AA0BA902B7


def test_traceidratio_samples_the_ids_whose_low_64_bits_are_below_the_ratio() -> None:
    half = make_sampler("traceidratio", 0.5)
    assert half(None, (1 << 64) + (1 << 62))  # the high bits do not count
    assert not half(None, (1 << 63) + 1)
    assert not make_sampler("traceidratio", 0.0)(None, 1)
    assert make_sampler("traceidratio", 1.0)(None, (1 << 64) - 1)
    ids = [i * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(10_000)]
    share = sum(make_sampler("traceidratio", 0.01)(None, i) for i in ids) / len(ids)
    assert 0.005 < share < 0.015


def test_parent_based_samplers_follow_the_parent_and_the_plain_ones_do_not() -> None:
    sampled, unsampled = SpanContext(TRACE, SPAN, True), SpanContext(TRACE, SPAN, False)
    assert make_sampler("parentbased_always_off")(sampled, TRACE)
    assert not make_sampler("parentbased_always_on")(unsampled, TRACE)
    assert make_sampler("parentbased_always_on")(None, TRACE)
    assert not make_sampler("parentbased_always_off")(None, TRACE)
    assert make_sampler("always_on")(unsampled, TRACE)
    assert not make_sampler("always_off")(sampled, TRACE)


def test_a_traceparent_round_trips() -> None:
    header = f"00-{TRACE:032x}-{SPAN:016x}-01"
    context = parse_traceparent(header)
    assert context == SpanContext(TRACE, SPAN, True)
    assert context is not None
    assert format_traceparent(context) == header
    assert parse_traceparent(f"00-{TRACE:032x}-{SPAN:016x}-00") == SpanContext(TRACE, SPAN, False)
    assert parse_traceparent(f"01-{TRACE:032x}-{SPAN:016x}-03-future") == SpanContext(TRACE, SPAN, True)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE:032x}-{SPAN:016x}",  # no flags
        f"00-{TRACE:032X}-{SPAN:016x}-01",  # upper case
        f"00-{0:032x}-{SPAN:016x}-01",  # an all-zero trace id
        f"00-{TRACE:032x}-{0:016x}-01",  # an all-zero span id
        f"ff-{TRACE:032x}-{SPAN:016x}-01",  # the forbidden version
        f"00-{TRACE:032x}-{SPAN:016x}-01-extra",  # version 00 has nothing more
        f"00-{TRACE:032x}"[:-1] + f"-{SPAN:016x}-01",  # a trace id one digit short
        "00-" + "z" * 32 + f"-{SPAN:016x}-01",
    ],
)
def test_a_malformed_traceparent_is_ignored(header: str | None) -> None:
    assert parse_traceparent(header) is None


class Collected:
    """A sink that keeps each batch it is handed (after a pickle round trip, as the process gets it)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Any, ...]]] = []

    def __call__(self, batch: list[tuple[Any, ...]]) -> None:
        self.batches.append(pickle.loads(pickle.dumps(batch)))

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [dict(zip(Span.FIELDS, span, strict=True)) for batch in self.batches for span in batch]


def _tracing(sampler: str = "parentbased_always_on", **options: Any) -> tuple[Tracing, Collected]:
    sink = Collected()
    return Tracing(make_sampler(sampler), SpanRecorder(sink, delay_s=3600, **options)), sink


def test_spans_nest_carry_their_attributes_and_fail_with_an_exception() -> None:
    tracing, sink = _tracing()
    with tracing.span("GET /x", "server", None, SpanContext(TRACE, SPAN, True)) as edge:
        assert edge is not None
        edge.set_attribute("http.route", "/x")
        assert tracing.carrier() == {"traceparent": f"00-{TRACE:032x}-{edge.span_id:016x}-01"}
        with pytest.raises(ValueError, match="bad"), tracing.span("A.f", "client", {"k": 1}):
            raise ValueError("bad")
        tracing.record("queue A", 1, {"servekit.deployment": "A"})
    assert tracing.carrier() == {}
    tracing.shutdown()
    by_name = {span["name"]: span for span in sink.spans}
    assert by_name["GET /x"]["parent_id"] == SPAN
    assert by_name["GET /x"]["kind"] == 1
    assert by_name["GET /x"]["attributes"] == {"http.route": "/x"}
    client = by_name["A.f"]
    assert (client["trace_id"], client["parent_id"], client["kind"]) == (TRACE, edge.span_id, 2)
    assert client["status"] == (2, "ValueError: bad")
    assert client["events"][0][0] == "exception"
    assert by_name["queue A"]["start"] == 1
    assert by_name["queue A"]["parent_id"] == edge.span_id


def test_an_unsampled_root_makes_no_span_and_passes_its_decision_on() -> None:
    tracing, sink = _tracing("parentbased_always_off")
    with tracing.span("GET /x", "server") as edge:
        assert edge is None
        carried = parse_traceparent(tracing.carrier()["traceparent"])
        assert carried is not None
        assert not carried.sampled
        with tracing.span("A.f", "client") as inner:
            assert inner is None
        assert tracing.sampled() is None
    tracing.shutdown()
    assert sink.spans == []


def test_a_batch_span_links_its_items_and_each_item_waits_for_it() -> None:
    tracing, sink = _tracing()
    items = [(SpanContext(TRACE, SPAN, True), 5), (SpanContext(TRACE + 1, SPAN + 1, True), 7)]
    with tracing.batch_span("batch M.f", items, {"servekit.batch.size": 2}) as batch:
        pass
    tracing.shutdown()
    spans = sink.spans
    made = next(span for span in spans if span["name"] == "batch M.f")
    assert made["links"] == ((TRACE, SPAN), (TRACE + 1, SPAN + 1))
    assert made["parent_id"] == SPAN
    waits = [span for span in spans if span["name"] == "batch wait"]
    assert [(w["parent_id"], w["start"], w["links"]) for w in waits] == [
        (SPAN, 5, ((TRACE, batch.span_id),)),
        (SPAN + 1, 7, ((TRACE, batch.span_id),)),
    ]


def test_a_burst_reaches_the_sink_in_batches_without_waiting_for_the_delay(
    wait_until: Callable[..., None],
) -> None:
    sink = Collected()
    recorder = SpanRecorder(sink, max_queue=10_000, max_batch=100, delay_s=3600)
    tracing = Tracing(make_sampler("always_on"), recorder)
    for index in range(1_000):
        with tracing.span(f"s{index}"):
            pass
    wait_until(lambda: len(sink.spans) >= 900, "the full batches to leave at once")
    tracing.shutdown()
    assert sorted(span["name"] for span in sink.spans) == sorted(f"s{index}" for index in range(1_000))
    assert max(len(batch) for batch in sink.batches) == 100
    assert recorder.dropped == 0


def test_a_full_queue_drops_and_counts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    sink = Collected()

    def slow(batch: list[tuple[Any, ...]]) -> None:  # an exporter that cannot keep up
        release.wait(30)
        sink(batch)

    recorder = SpanRecorder(slow, max_queue=50, max_batch=1_000, delay_s=3600)
    tracing = Tracing(make_sampler("always_on"), recorder)
    for index in range(80):
        with tracing.span(f"s{index}"):
            pass
    assert recorder.dropped == 30
    release.set()
    with caplog.at_level(logging.WARNING, "servekit.tracing"):
        tracing.shutdown()
    assert len(sink.spans) == 50
    assert "dropped 30 spans" in caplog.text
