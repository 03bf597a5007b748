"""Token buckets with an injected clock: admission counts, refills, headers, shares and bounded memory."""

from __future__ import annotations

import pytest

from servekit._http.guards.ratelimit import RateLimit, TokenBuckets, limit_headers, retry_after_s
from servekit.errors import DeploymentOptionError


@pytest.mark.parametrize(
    ("text", "rate", "capacity"),
    [
        ("100/s", 100.0, 100),
        ("100/s burst 200", 100.0, 200),
        ("100 / second, burst 5", 100.0, 5),
        ("600/min", 10.0, 600),
        ("600/minutes burst 10", 10.0, 10),
        ("5/10s burst 1", 0.5, 1),
        ("3600/h", 1.0, 3600),
        ("0.5/s", 0.5, 1),
        ("86400/day burst 2", 1.0, 2),
        ("10/S BURST 3", 10.0, 3),
    ],
)
def test_a_limit_parses_from_text(text: str, rate: float, capacity: int) -> None:
    limit = RateLimit.parse(text)
    assert (limit.rate, limit.capacity) == (pytest.approx(rate), capacity)


@pytest.mark.parametrize(
    "text", ["", "100", "100/ms", "100/fortnight", "x/s", "100/s burst", "100/s burst 0", "0/s"]
)
def test_a_malformed_limit_names_the_fix(text: str) -> None:
    with pytest.raises(DeploymentOptionError, match="100/s burst 200"):
        RateLimit.parse(text)


def test_a_limit_prints_as_it_parses() -> None:
    for text in ["100/s burst 200", "10/min burst 10", "0.5/s burst 1", "5/10s burst 1", "7/h burst 7"]:
        assert str(RateLimit.parse(text)) == text
        assert RateLimit.parse(str(RateLimit.parse(text))) == RateLimit.parse(text)


def test_a_full_bucket_admits_its_burst_then_refuses() -> None:
    buckets, limit = TokenBuckets(), RateLimit.parse("10/s burst 5")
    admitted = [buckets.take("k", limit, now=100.0).admitted for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3


def test_a_bucket_refills_at_the_rate_and_never_past_the_burst() -> None:
    buckets, limit = TokenBuckets(), RateLimit.parse("10/s burst 5")
    for _ in range(5):
        buckets.take("k", limit, now=0.0)
    assert not buckets.take("k", limit, now=0.05).admitted  # half a token
    assert buckets.take("k", limit, now=0.1).admitted  # one token back, taken
    assert not buckets.take("k", limit, now=0.1).admitted
    after_long = [buckets.take("k", limit, now=60.0).admitted for _ in range(7)]
    assert after_long == [True] * 5 + [False] * 2  # refilled to the burst, not to 600


def test_a_flood_of_ten_times_the_limit_is_mostly_refused_and_others_are_untouched() -> None:
    buckets, limit = TokenBuckets(), RateLimit.parse("100/s burst 100")
    flood = [buckets.take("flood", limit, now=i / 1000).admitted for i in range(1000)]  # 1000/s for 1 s
    calm = [buckets.take("calm", limit, now=i / 50).admitted for i in range(50)]  # 50/s
    assert 195 <= sum(flood) <= 201  # the burst, then the rate
    assert all(calm)


def test_the_headers_say_limit_remaining_and_reset() -> None:
    buckets, limit = TokenBuckets(), RateLimit.parse("2/s burst 4")
    bucket = buckets.take("k", limit, now=10.0)
    assert dict(limit_headers(limit, bucket)) == {
        b"ratelimit-limit": b"4",
        b"ratelimit-remaining": b"3",
        b"ratelimit-reset": b"1",  # 0.5 s to be full again, rounded up
        b"ratelimit-policy": b"4;w=2",
    }
    for _ in range(3):
        bucket = buckets.take("k", limit, now=10.0)
    refused = buckets.take("k", limit, now=10.0)
    assert not refused.admitted
    assert dict(limit_headers(limit, refused))[b"ratelimit-remaining"] == b"0"
    assert dict(limit_headers(limit, refused))[b"ratelimit-reset"] == b"2"
    assert retry_after_s(limit, refused) == pytest.approx(0.5)


def test_a_share_of_a_limit_divides_rate_and_burst() -> None:
    limit = RateLimit.parse("100/s burst 30")
    assert limit.share(1) is limit
    shared = limit.share(4)
    assert (shared.rate, shared.capacity) == (25.0, 8)
    assert RateLimit.parse("1/s burst 1").share(3).capacity == 1


def test_buckets_full_again_are_forgotten() -> None:
    buckets, limit = TokenBuckets(sweep_s=10.0), RateLimit.parse("1/s burst 2")
    for client in ["a", "b", "c"]:
        buckets.take(client, limit, now=0.0)  # each full again at t=1
    buckets.take("a", limit, now=9.5)  # full again at t=10.5
    assert len(buckets) == 3
    buckets.take("d", limit, now=10.0)  # the sweep every 10 s
    assert sorted(buckets._buckets) == ["a", "d"]


def test_past_max_clients_the_oldest_buckets_go() -> None:
    buckets, limit = TokenBuckets(max_clients=3), RateLimit.parse("1/h burst 5")
    for n in range(10):
        buckets.take(f"client-{n}", limit, now=float(n))
    assert sorted(buckets._buckets) == ["client-7", "client-8", "client-9"]
