"""Router overhead: per call in-process, and on W2's HTTP throughput with a split or a shadow.

    python -m benchmarks.routers                 # ~10 s: per-call overhead only
    python -m benchmarks.routers --calls 20000 --rounds 5
    python -m benchmarks.routers --throughput --out benchmarks/results/$(date +%F)-vm-routers   # ~1 min

An in-process ingress (`sk.run`, no HTTP) awaits ``handle(x)`` on a trivial async deployment,
sequentially, in a timing loop on servekit's event loop: once through a direct handle, once
through a handle to a 50/50 split of two such deployments (the arms are what the direct
handle calls). Rounds alternate direct / routed in one run; the figure is the difference of
the per-call medians across rounds (µs) and their ratio, and of the best rounds (on a busy
machine the medians are noisy). The target: at most 5 µs per call.

With `--throughput`, three copies of W2 (`Normalize -> Model -> Postprocess` over HTTP, see
`benchmarks/workloads/servekit_apps.py`) are served side by side and driven in alternating
rounds by wrk: the plain pipeline, the pipeline with a 50/50 split of two Model replicas in
front of the model, and with a shadow Model mirrored 100% of the calls. Figures: each variant's
median requests/s and server CPU seconds per request, the split's throughput ratio (target:
at least 0.97) and the shadow's ratio next to the ratio its extra CPU predicts (the shadow
must not cost more throughput than the CPU it takes). One run, ratios, written to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def w2_variants() -> dict[str, sk.Application]:
    """W2 plain, with a 2-arm split in front of its model, and with a 100% shadow of its model."""
    from benchmarks.workloads.servekit_apps import Model, Normalize, Pipeline, Postprocess

    def pipeline(model: Any) -> sk.Application:
        return Pipeline.bind(Normalize.bind(), model, Postprocess.bind())

    split = sk.split({"a": Model.options(name="ModelA").bind(), "b": Model.options(name="ModelB").bind()})
    shadowed = sk.split(
        {"main": Model.bind()},
        shadow={"shadow": Model.options(name="ModelShadow").bind()},
        shadow_fraction=1.0,
    )
    return {"none": pipeline(Model.bind()), "split": pipeline(split), "shadow": pipeline(shadowed)}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Alternating wrk rounds over the W2 variants; medians and ratios (see the module docstring)."""
    from benchmarks.harness.cpuwatch import proc_cpu_s
    from benchmarks.harness.machine import describe
    from benchmarks.harness.wrk import ensure_wrk, run_wrk, write_lua_script
    from benchmarks.workloads import SAMPLE_X

    rounds: dict[str, list[dict[str, float]]] = {}
    servers = {name: sk.serve(app, port=0, blocking=False) for name, app in w2_variants().items()}
    try:
        with tempfile.TemporaryDirectory() as folder:
            script = write_lua_script(Path(folder), json.dumps({"x": SAMPLE_X}))
            for server in servers.values():  # warm-up, untimed
                run_wrk(server.url + "/", script, args.connections, 1)
            for _ in range(args.rounds):
                for name, server in servers.items():
                    cpu = proc_cpu_s(os.getpid())
                    result = run_wrk(server.url + "/", script, args.connections, args.duration)
                    cpu = proc_cpu_s(os.getpid()) - cpu
                    if result.errors:
                        raise RuntimeError(f"{name}: {result.errors} failed requests")
                    figures = {"rps": result.rps, "cpu_ms_per_request": 1000 * cpu / max(1, result.requests)}
                    rounds.setdefault(name, []).append(figures)
    finally:
        for server in servers.values():
            server.shutdown()
    median = {
        name: {key: statistics.median(r[key] for r in found) for key in found[0]}
        for name, found in rounds.items()
    }
    none, split, shadow = median["none"], median["split"], median["shadow"]
    cpu_predicted = none["cpu_ms_per_request"] / shadow["cpu_ms_per_request"]
    return {
        "machine": describe(ensure_wrk()),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": rounds,
        "median": median,
        "split_throughput_ratio": split["rps"] / none["rps"],
        "best_rounds_split_ratio": max(r["rps"] for r in rounds["split"])
        / max(r["rps"] for r in rounds["none"]),
        "best_rounds_shadow_ratio": max(r["rps"] for r in rounds["shadow"])
        / max(r["rps"] for r in rounds["none"]),
        "shadow_throughput_ratio": shadow["rps"] / none["rps"],
        "shadow_ratio_its_cpu_predicts": cpu_predicted,
    }


def render(found: dict[str, Any]) -> str:
    """The throughput figures as a Markdown report."""
    machine = found["machine"]
    lines = [
        "# Routers on W2: throughput with a split and with a shadow",
        "",
        f"{machine['date']}, {machine['cpu']} ({machine['nproc']} CPUs), Python {machine['python']}; "
        f"wrk, {found['connections']} connections, {found['duration_s']:g} s per round, "
        f"{len(found['rounds']['none'])} alternating rounds; medians.",
        "",
        "| variant | requests/s | server CPU ms per request |",
        "|---|---:|---:|",
    ]
    for name, figures in found["median"].items():
        lines.append(f"| {name} | {figures['rps']:.0f} | {figures['cpu_ms_per_request']:.3f} |")
    lines += [
        "",
        f"- 2-arm split / plain: **{found['split_throughput_ratio']:.3f}** (target: at least 0.97)",
        f"- 100% shadow / plain: **{found['shadow_throughput_ratio']:.3f}**, against "
        f"{found['shadow_ratio_its_cpu_predicts']:.3f} that its extra CPU per request predicts "
        "(the shadow must not cost more than its CPU)",
        f"- best rounds (less noise on a busy machine): split {found['best_rounds_split_ratio']:.3f}, "
        f"shadow {found['best_rounds_shadow_ratio']:.3f}",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="timed calls per round and handle")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls before each round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each handle / variant")
    parser.add_argument("--throughput", action="store_true", help="W2 over HTTP: plain, split, shadow")
    parser.add_argument("--connections", type=int, default=32, help="with --throughput: wrk connections")
    parser.add_argument("--duration", type=float, default=3.0, help="with --throughput: seconds per round")
    parser.add_argument("--out", default=None, help="with --throughput: write OUT.json and OUT.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the per-call figures."""
    args = parse_args(argv)
    if args.throughput:
        found = throughput(args)
        report = render(found)
        print(report)
        if args.out is not None:
            Path(args.out + ".json").write_text(json.dumps(found, indent=2) + "\n")
            Path(args.out + ".md").write_text(report)
        return 0
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
