"""Router overhead per call, in-process: a handle call through a 2-arm `sk.split` vs a direct one.

    python -m benchmarks.routers                 # ~10 s
    python -m benchmarks.routers --calls 20000 --rounds 5

An in-process ingress (`sk.run`, no HTTP) awaits ``handle(x)`` on a trivial async deployment,
sequentially, in a timing loop on servekit's event loop: once through a direct handle, once
through a handle to a 50/50 split of two such deployments (the arms are what the direct
handle calls). Rounds alternate direct / routed in one run; the figure is the difference of
the per-call medians across rounds (µs) and their ratio, and of the best rounds (on a busy
machine the medians are noisy). The target: at most 5 µs per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # allow `python benchmarks/routers.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import servekit as sk


@sk.deployment(max_ongoing_requests=1000)
class Echo:
    async def __call__(self, x: int) -> int:
        return x


@sk.deployment
class Bench:
    def __init__(self, direct: sk.DeploymentHandle, routed: sk.DeploymentHandle) -> None:
        self.handles = {"direct": direct, "routed": routed}

    async def per_call_us(self, which: str, calls: int, warmup: int) -> float:
        """Mean µs per sequential call through handle `which`, after `warmup` untimed calls."""
        handle = self.handles[which]
        for x in range(warmup):
            await handle(x)
        started = time.perf_counter_ns()
        for x in range(calls):
            await handle(x)
        return (time.perf_counter_ns() - started) / calls / 1e3


def build() -> sk.Application:
    """The benchmark app: a direct handle to `EchoA`, and a 50/50 split of `EchoA` and `EchoB`."""
    arm_a = Echo.options(name="EchoA").bind()
    arm_b = Echo.options(name="EchoB").bind()
    return Bench.bind(arm_a, sk.split({"a": arm_a, "b": arm_b}, name="bench"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="timed calls per round and handle")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls before each round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each handle")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the per-call figures."""
    args = parse_args(argv)
    results: dict[str, list[float]] = {"direct": [], "routed": []}
    with sk.run(build()) as handle:
        for _ in range(args.rounds):
            for which in ("direct", "routed"):
                results[which].append(handle.per_call_us(which, args.calls, args.warmup).result())
    direct = statistics.median(results["direct"])
    routed = statistics.median(results["routed"])
    print(f"direct handle call: {direct:.2f} us (rounds: {', '.join(f'{v:.2f}' for v in results['direct'])})")
    print(
        f"through a 2-arm split: {routed:.2f} us (rounds: {', '.join(f'{v:.2f}' for v in results['routed'])})"
    )
    print(f"router overhead per call: {routed - direct:.2f} us (ratio {routed / direct:.3f})")
    best_direct, best_routed = min(results["direct"]), min(results["routed"])
    print(f"best rounds (less noise on a busy machine): {best_routed - best_direct:.2f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
