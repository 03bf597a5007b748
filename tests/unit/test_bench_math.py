"""`servekit bench`'s pure parts: histogram percentiles, the open-loop schedule and the
coordinated-omission correction, phase splitting, request bytes and templates, tables and plots."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from servekit._bench import payload as payloads
from servekit._bench import report
from servekit._bench.histogram import Histogram, bucket_bounds, bucket_of
from servekit._bench.load import PhasePlan, PhaseResult
from servekit._bench.plot import html_report, nice_ticks, nines
from servekit._bench.schedule import PoissonSchedule, Schedule, arrivals, latency_start, split_evenly
from servekit._cli.bench import plans


def _exact(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- histogram ---------------------------------------------------------------


def test_every_value_lands_in_a_bucket_that_holds_it() -> None:
    for value in [*range(0, 2000), *(random.Random(1).randrange(2000, 10**10) for _ in range(5000))]:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= min(value, 2**31) <= high or value >= 2**31
        assert high - low <= max(low, 1) / 128


def test_small_values_are_exact() -> None:
    histogram = Histogram()
    for value in (3, 3, 7, 100, 255):
        histogram.record(value)
    assert [histogram.percentile(q) for q in (0, 20, 40, 60, 80, 100)] == [3, 3, 3, 7, 100, 255]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_are_within_half_a_percent_of_the_exact_ones(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(7, 1.5)) for _ in range(20_000)]  # ~1 ms median, long tail
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    for q in (1, 50, 90, 99, 99.9, 100):
        exact = _exact(values, q)
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.004, abs=0.5)
    assert histogram.mean_us == pytest.approx(sum(values) / len(values))
    assert (histogram.min_us, histogram.max_us) == (min(values), max(values))


def test_merged_histograms_equal_one_that_saw_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(1, 10**6) for _ in range(1000)] for _ in range(3)]
    merged, whole = Histogram(), Histogram()
    for part in parts:
        one = Histogram()
        for value in part:
            one.record(value)
            whole.record(value)
        merged.merge(one)
    merged.merge(Histogram())
    assert merged == whole
    assert Histogram.from_sparse(json.loads(json.dumps(whole.to_sparse()))) == whole


def test_an_empty_histogram_has_no_percentiles_and_bad_percentiles_are_refused() -> None:
    assert Histogram().percentile(50) is None
    assert Histogram().mean_us is None
    with pytest.raises(ValueError, match="between 0 and 100"):
        Histogram().percentile(101)


# --- open-loop schedule and coordinated omission -----------------------------


def test_processes_share_one_schedule_without_gaps_or_overlaps() -> None:
    rate, start, deadline = 300.0, 10.0, 12.5
    shares = [Schedule(start, rate, offset, 4) for offset in range(4)]
    times = sorted(s.intended(k) for s in shares for k in range(s.count_before(deadline)))
    assert len(times) == 750 == sum(s.count_before(deadline) for s in shares)
    assert times == pytest.approx([start + i / rate for i in range(750)])
    assert Schedule(start, rate).count_before(start) == 0
    assert Schedule(start, rate, 3, 4).count_before(start + 3 / rate) == 0


def test_poisson_arrivals_average_the_rate_with_random_gaps() -> None:
    shares = [PoissonSchedule(5.0, 1000.0, offset, 2) for offset in range(2)]
    counts = [s.count_before(25.0) for s in shares]
    assert sum(counts) == pytest.approx(20_000, rel=0.03)  # 20 s at 1000/s; sd ~0.7%
    times = [s.intended(k) for s in shares for k in range(s.count_before(25.0))]
    assert min(times) >= 5.0
    assert max(times) < 25.0
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.001, rel=0.03)
    assert sum(1 for gap in gaps if gap > 0.002) / len(gaps) == pytest.approx(
        math.exp(-2), abs=0.02
    )  # exponential
    assert PoissonSchedule(5.0, 1000.0).intended(9) == PoissonSchedule(5.0, 1000.0).intended(9)  # seeded
    assert isinstance(arrivals("constant", 0.0, 1.0), Schedule)
    with pytest.raises(ValueError, match="poisson"):
        arrivals("bursty", 0.0, 1.0)


@pytest.mark.parametrize(("offset", "stride", "rate"), [(0, 0, 10.0), (2, 2, 10.0), (0, 1, 0.0)])
def test_bad_schedules_are_refused(offset: int, stride: int, rate: float) -> None:
    with pytest.raises(ValueError, match=r"stride|rate"):
        Schedule(0.0, rate, offset, stride)


def test_a_request_counts_from_its_intended_time_only_when_it_waited_for_a_connection() -> None:
    assert latency_start(intended=1.0, picked_at=1.2, sent_at=1.2) == 1.0  # overdue: queued
    assert latency_start(intended=1.0, picked_at=0.9, sent_at=1.001) == 1.001  # timer lag only


def _simulate(service_s: list[float], rate: float) -> tuple[list[float], list[float]]:
    """One connection at `rate`: (corrected latencies, latencies counted from each send)."""
    schedule = Schedule(0.0, rate)
    free_at, corrected, naive = 0.0, [], []
    for k, service in enumerate(service_s):
        intended, picked = schedule.intended(k), free_at
        sent = max(picked, intended)
        done = sent + service
        corrected.append(done - latency_start(intended, picked, sent))
        naive.append(done - sent)
        free_at = done
    return corrected, naive


def test_a_stall_shows_in_the_corrected_percentiles_and_hides_in_naive_ones() -> None:
    # 1000 requests/s, 0.5 ms each, one 200 ms stall: ~200 requests were due during it.
    service = [0.0005] * 2000
    service[500] = 0.2
    corrected, naive = _simulate(service, rate=1000.0)
    assert _exact_float(naive, 99) == pytest.approx(0.0005)
    assert _exact_float(corrected, 90) > 0.05  # 10% of requests waited > 50 ms
    assert max(corrected) == pytest.approx(0.2)
    assert sum(1 for latency in corrected if latency > 0.001) == pytest.approx(400, abs=5)


def _exact_float(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_without_stalls_corrected_and_naive_latencies_agree() -> None:
    corrected, naive = _simulate([0.0005] * 500, rate=1000.0)
    assert corrected == pytest.approx(naive)


def test_shares_split_evenly_and_idle_workers_sit_out() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(1, 3) == [1, 0, 0]
    base = PhasePlan("127.0.0.1", 1, b"x", connections=1, rate=None)
    phase = report.Phase(None, 500.0, connections=2, warmup_s=0, duration_s=1)
    shares = plans(phase, base, 3)
    assert shares[2] is None
    assert [(p.connections, p.offset, p.stride, p.rate) for p in shares if p] == [
        (1, 0, 2, 500.0),
        (1, 1, 2, 500.0),
    ]


# --- requests ------------------------------------------------------------------


def test_request_bytes_are_one_keep_alive_http_1_1_request() -> None:
    target = payloads.parse_target("http://127.0.0.1:8000/score?x=1")
    raw = payloads.request_bytes("POST", target, b'{"a":1}', "application/json", [("X-Api-Key", "k")])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /score?x=1 HTTP/1.1"
    assert b"Host: 127.0.0.1:8000" in head
    assert b"Content-Length: 7" in head
    assert b"X-Api-Key: k" in head
    assert body == b'{"a":1}'
    assert b"Content-Length" not in payloads.request_bytes("GET", target, None, None)


@pytest.mark.parametrize("url", ["ftp://x/", "127.0.0.1:8000", "http://:80/", "http://h:99999/"])
def test_bad_urls_are_refused_with_an_example(url: str) -> None:
    with pytest.raises(payloads.PayloadError, match=r"URL|port"):
        payloads.parse_target(url)


def test_bad_headers_shapes_and_json_are_refused() -> None:
    assert payloads.parse_header("Authorization: Bearer x") == ("Authorization", "Bearer x")
    with pytest.raises(payloads.PayloadError, match="-H 'Authorization"):
        payloads.parse_header("no colon")
    with pytest.raises(payloads.PayloadError, match="cannot carry"):
        payloads.parse_header("X-Name: \u4e16\u754c")
    with pytest.raises(payloads.PayloadError, match="--shape 1,3"):
        payloads.parse_shape("1,x")
    with pytest.raises(payloads.PayloadError, match="at least 1"):
        payloads.parse_shape("0,3")
    with pytest.raises(payloads.PayloadError, match="not valid JSON"):
        payloads.json_body("{x")


def test_the_oip_template_fills_variable_dimensions_from_the_shape() -> None:
    metadata = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]},
        ]
    }
    inputs = payloads.oip_inputs_from_metadata(metadata, [2])
    assert [(t.name, t.shape) for t in inputs] == [("x", [2, 3]), ("mask", [2, 1])]
    body = json.loads(payloads.oip_body(inputs))
    assert [len(i["data"]) for i in body["inputs"]] == [6, 2]
    assert all(isinstance(v, float) for v in body["inputs"][0]["data"])
    assert payloads.oip_path("m") == "/v2/models/m/infer"
    with pytest.raises(payloads.PayloadError, match="datatype"):
        payloads.oip_body([payloads.TensorSpec("x", "FP8", [1])])


def test_the_openai_template_is_a_chat_completion_request() -> None:
    body = json.loads(payloads.openai_body("llm", "hi", 8, stream=True))
    assert body == {
        "model": "llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }


# --- results -----------------------------------------------------------------------


def _result(
    latencies_us: list[int], statuses: dict[int, int], errors: dict[str, int] | None = None
) -> PhaseResult:
    result = PhaseResult(statuses=statuses, errors=errors or {}, elapsed_s=2.0)
    result.timeline = [[sum(statuses.values()), 0, sum(latencies_us), max(latencies_us, default=0)]]
    for value in latencies_us:
        result.latency.record(value)
    return result


def test_a_phase_summary_counts_requests_errors_and_percentiles() -> None:
    phase = report.Phase(16, None, 16, warmup_s=1, duration_s=2)
    summary = report.phase_summary(phase, _result([1000] * 99 + [9000], {200: 100, 503: 4}, {"timeout": 2}))
    assert (summary["requests"], summary["ok"], summary["errors"], summary["rps"]) == (106, 100, 6, 53.0)
    assert summary["statuses"] == {"200": 100, "503": 4}
    assert summary["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.004)
    assert summary["latency_ms"]["max"] == 9.0
    table = report.results_table([summary])
    assert "c=16" in table
    assert "503x4 timeoutx2" in table


def test_compare_gives_b_over_a_for_the_phases_both_have(tmp_path: Path) -> None:
    phase = report.Phase(16, None, 16, 0, 2)
    a = report.document({}, [report.phase_summary(phase, _result([1000] * 10, {200: 100}))])
    b = report.document({}, [report.phase_summary(phase, _result([2000] * 10, {200: 50}))])
    path = tmp_path / "a.json"
    path.write_text(json.dumps(a))
    table = report.compare(report.load(path), b)
    row = next(line for line in table.splitlines() if line.startswith("c=16"))
    assert row.split()[3:8] == ["0.500", "2.000", "2.000", "2.000", "2.000"]
    other = report.document(
        {}, [report.phase_summary(report.Phase(None, 5.0, 4, 0, 1), _result([1], {200: 1}))]
    )
    with pytest.raises(report.ResultsError, match="share no phase"):
        report.compare(a, other)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(report.ResultsError, match="not a servekit bench results file"):
        report.load(tmp_path / "bad.json")


def test_the_plot_is_one_self_contained_html_file() -> None:
    phases = [
        report.phase_summary(report.Phase(c, None, c, 0, 1), _result([500 * c] * 20, {200: 20}))
        for c in (1, 4)
    ]
    page = html_report(report.document({"target": "http://x/"}, phases))
    assert page.count("<svg") == 4
    assert "<script" not in page
    assert "src=" not in page
    assert "href=" not in page
    assert nice_ticks(7.3) == [0, 2, 4, 6, 8]
    assert nines(99) == pytest.approx(2)
    assert nines(100) == 5
