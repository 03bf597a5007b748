"""`LatencyWindow`: bounded, drained per sample, p95 over a time span."""

from __future__ import annotations

from servekit._replica.latency import LatencyWindow


def test_the_oldest_latencies_fall_out_at_capacity() -> None:
    window = LatencyWindow(capacity=3)
    for at, latency in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        window.add(float(at), latency)
    assert len(window) == 3
    assert window.drain() == (3.0, 4.0, 5.0)
    assert window.drain() == ()


def test_p95_covers_only_the_span() -> None:
    window = LatencyWindow()
    window.add(0.0, 500.0)  # too old for a 10 s span at t=20
    for at in range(10, 30):
        window.add(float(at), float(at - 9))  # 1 .. 20 ms
    assert window.p95(29.0, 10.0) == 20.0
    assert window.p95(29.0, 1.0) == 20.0
    assert window.p95(100.0, 10.0) is None
