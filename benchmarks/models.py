"""Models: a tag moved under load (p99 with in-place reloads), multiplexed routing overhead
per call, and the hit rate of model-aware routing against random routing under Zipf ids.

    python -m benchmarks.models                 # -> benchmarks/results/<date>-<host>-models.{md,json}
    python -m benchmarks.models --seconds 2     # shorter windows
    python -m benchmarks.models --out /tmp/m    # elsewhere

Everything runs on the local runtime, in-process replicas, driven by handle calls from this
process. Each figure is one short run: read it as an order of magnitude, not a precise number.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import servekit as sk

ROOT = Path(__file__).resolve().parents[1]
RELOAD_S = 0.2
"""How long `reconfigure_model` takes in the reload benchmark (a model loading on a thread)."""


@sk.deployment(num_replicas=2, max_ongoing_requests=64)
class Reloading:
    def __init__(self, weights: str) -> None:
        self.weights = Path(weights).read_text()

    def reconfigure_model(self, path: str) -> None:
        time.sleep(RELOAD_S)  # the new weights load on a worker thread while the old serve
        self.weights = Path(path).read_text()

    async def __call__(self) -> str:
        return self.weights


@sk.deployment(num_replicas=2, max_ongoing_requests=64)
class Plain:
    async def __call__(self) -> str:
        return "x"


@sk.deployment(num_replicas=2, max_ongoing_requests=64)
class Multiplexed:
    @sk.multiplexed(max_models_per_replica=4)
    async def load(self, model_id: str) -> str:
        return model_id

    async def __call__(self) -> str:
        return str(await self.load(sk.get_multiplexed_model_id()))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(handle: Any, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await handle()
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


async def reload_p99(seconds: float) -> dict[str, Any]:
    """p50/p99 of calls with the tag still, then while it moves back and forth every 0.5 s."""
    with tempfile.TemporaryDirectory(prefix="servekit-bench-models-") as folder:
        store = str(Path(folder) / "store")
        os.environ["SERVEKIT_MODEL_CACHE"] = str(Path(folder) / "cache")
        for version in ("v1", "v2"):
            (Path(folder) / version).write_text(version)
            sk.models.push("clf", Path(folder) / version, version=version, store=store)
        sk.models.tag("clf", "v1", "production", store=store)
        ref = sk.model("clf", tag="production", store=store, watch_s=0.1)
        with sk.run(Reloading.bind(ref)) as handle:
            await _load(handle, 0.5, 8)  # warm-up
            still = await _load(handle, seconds, 8)
            moves = 0

            async def mover() -> None:
                nonlocal moves
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    await asyncio.sleep(0.5)
                    sk.models.tag("clf", "v2" if moves % 2 == 0 else "v1", "production", store=store)
                    moves += 1

            swapping, _ = await asyncio.gather(_load(handle, seconds, 8), mover())
    return {
        "reload_s": RELOAD_S,
        "tag_moves": moves,
        "still": {"calls": len(still), "p50_ms": _percentile(still, 0.5), "p99_ms": _percentile(still, 0.99)},
        "swapping": {
            "calls": len(swapping),
            "p50_ms": _percentile(swapping, 0.5),
            "p99_ms": _percentile(swapping, 0.99),
        },
    }


async def _per_call_us(handle: Any, calls: int) -> float:
    for _ in range(200):
        await handle()
    started = time.perf_counter()
    for _ in range(calls):
        await handle()
    return (time.perf_counter() - started) / calls * 1e6


async def routing_overhead(calls: int) -> dict[str, Any]:
    """µs per sequential handle call: a plain deployment vs a multiplexed one (always a hit)."""
    with sk.run(Plain.bind()) as plain:
        plain_us = statistics.median([await _per_call_us(plain, calls) for _ in range(3)])
    with sk.run(Multiplexed.bind()) as multiplexed:
        hot = multiplexed.options(multiplexed_model_id="m0")
        multiplexed_us = statistics.median([await _per_call_us(hot, calls) for _ in range(3)])
    return {
        "calls": calls,
        "plain_us": plain_us,
        "multiplexed_us": multiplexed_us,
        "overhead_us": multiplexed_us - plain_us,
    }


def _zipf_ids(count: int, models: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank**s) for rank in range(1, models + 1)]
    return [f"m{index}" for index in rng.choices(range(models), weights, k=count)]


def _simulated_hit_rate(ids: list[str], replicas: int, per_replica: int, aware: bool, seed: int) -> float:
    """Sequential requests over LRU replicas: model-aware routing (as servekit's) or random."""
    rng = random.Random(seed)
    held: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(replicas)]
    hits = 0
    for model_id in ids:
        holders = [index for index in range(replicas) if model_id in held[index]]
        if aware:
            index = holders[0] if holders else min(range(replicas), key=lambda i: len(held[i]))
        else:
            index = rng.randrange(replicas)
        cache = held[index]
        if model_id in cache:
            hits += 1
            cache.move_to_end(model_id)
            continue
        if len(cache) >= per_replica:
            cache.popitem(last=False)
        cache[model_id] = None
    return hits / len(ids)


async def zipf_hit_rate(requests: int, models: int = 40, s: float = 1.1, seed: int = 7) -> dict[str, Any]:
    """Hit rate on 2 replicas x 4 models under Zipf ids: measured (servekit), simulated aware and random."""
    ids = _zipf_ids(requests, models, s, seed)
    with sk.run(Multiplexed.bind()) as handle:
        for model_id in ids:
            await handle.options(multiplexed_model_id=model_id)()
        replicas = handle.status()["deployments"]["Multiplexed"]["replicas"]
    counters = [c for r in replicas for c in r["model"]["multiplexed"]["load"]["models"].values()]
    hits = sum(c["hits"] for c in counters)
    misses = sum(c["misses"] for c in counters)
    return {
        "requests": requests,
        "model_ids": models,
        "zipf_s": s,
        "replicas": 2,
        "max_models_per_replica": 4,
        "measured_aware": hits / (hits + misses),
        "simulated_aware": _simulated_hit_rate(ids, 2, 4, aware=True, seed=seed),
        "simulated_random": _simulated_hit_rate(ids, 2, 4, aware=False, seed=seed),
    }


async def measure(seconds: float, calls: int, requests: int) -> dict[str, Any]:
    """Every measurement, with the machine it ran on."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()}: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "reload": await reload_p99(seconds),
        "routing": await routing_overhead(calls),
        "zipf": await zipf_hit_rate(requests),
    }


def report(result: dict[str, Any]) -> str:
    """The results as Markdown."""
    reload, routing, zipf = result["reload"], result["routing"], result["zipf"]
    rows = [(name, reload[name]) for name in ("still", "swapping")]
    ratio = zipf["measured_aware"] / zipf["simulated_random"] if zipf["simulated_random"] else float("nan")
    return "\n".join(
        [
            f"# Models benchmark ({result['date']})",
            "",
            f"Machine: {result['machine']}. One short run (`python -m benchmarks.models`).",
            "",
            "## p99 while a tag moves (in-place reload, 2 replicas, 8 concurrent handle callers)",
            "",
            "| window | calls | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *(f"| {name} | {r['calls']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for name, r in rows),
            "",
            f"`swapping`: the tag moved {reload['tag_moves']} times, each reload taking "
            f"{reload['reload_s']} s on a worker thread while the old weights served.",
            "",
            "## Multiplexed routing overhead (sequential handle calls, model always held)",
            "",
            f"Plain deployment {routing['plain_us']:.1f} µs/call; multiplexed "
            f"{routing['multiplexed_us']:.1f} µs/call: overhead {routing['overhead_us']:.1f} µs/call "
            f"(median of 3 x {routing['calls']} calls).",
            "",
            f"## Hit rate under Zipf ids (s={zipf['zipf_s']}, {zipf['model_ids']} ids, {zipf['requests']} "
            f"requests, {zipf['replicas']} replicas x {zipf['max_models_per_replica']} models)",
            "",
            "| routing | hit rate |",
            "|---|---|",
            f"| servekit, model-aware (measured) | {zipf['measured_aware']:.1%} |",
            f"| model-aware (simulated) | {zipf['simulated_aware']:.1%} |",
            f"| random (simulated) | {zipf['simulated_random']:.1%} |",
            "",
            f"Model-aware routing hits {ratio:.2f}x as often as random routing.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each load window (default 4)")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per overhead sample")
    parser.add_argument("--requests", type=int, default=2000, help="Zipf requests")
    parser.add_argument("--out", default=None, help="results stem (default results/<date>-<host>-models)")
    args = parser.parse_args()
    result = asyncio.run(measure(args.seconds, args.calls, args.requests))
    stem = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / (f"{result['date']}-{platform.node()}-models")
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
