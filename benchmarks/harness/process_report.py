"""Markdown for the process-replica measurements: hops, W2P/W3P notes, step load."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.harness.cpuwatch import describe

Row = dict[str, Any]


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(line) + " |" for line in lines)
    return out


def _stats_line(name: str, stats: Row) -> list[str]:
    rounds = stats.get("round_medians_us")
    return [
        name,
        _fmt(stats["median_us"], ".1f"),
        _fmt(stats["p99_us"], ".1f"),
        _fmt(stats["p90_us"], ".1f"),
        _fmt(stats["p999_us"], ".1f"),
        _fmt(stats["min_us"], ".1f"),
        ", ".join(f"{v:.1f}" for v in rounds) if rounds else "",
        str(stats["calls"]),
        _fmt(stats.get("caller_cpu_us_per_hop"), ".0f"),
        _fmt(stats.get("callee_cpu_us_per_hop"), ".0f"),
    ]


def hops_section(hops: Row) -> list[str]:
    """One handle hop, in-process vs process replica, and the floors without servekit."""
    settings, servekit = hops["settings"], hops["servekit"]
    payloads = settings["payloads"]
    lines = []
    for isolation, label in (("in_process", "in-process"), ("process", "process replica")):
        lines += [
            _stats_line(f"{label}: {payloads[kind]}", servekit[isolation][kind])
            for kind in payloads
            if kind in servekit.get(isolation, {})
        ]
    floors = hops.get("floors", {})
    if floors:
        lines.append(_stats_line("floor: blocking socket pair, 8 bytes", floors["blocking_8_bytes"]))
        lines.append(
            _stats_line("floor: asyncio + pickle-5 RPC, 16 floats", floors["asyncio_pickle_floats16"])
        )
        if "servekit_codec_floats16" in floors:
            lines.append(
                _stats_line(
                    "servekit's worker codec alone (FrameProtocol, Request/Reply), 16 floats",
                    floors["servekit_codec_floats16"],
                )
            )
    header = [
        "hop",
        "median µs",
        "p99 µs",
        "p90 µs",
        "p99.9 µs",
        "min µs",
        "round medians µs",
        "calls",
        "CPU µs/hop, caller",
        "CPU µs/hop, callee",
    ]
    piped = [
        [
            label,
            _fmt(servekit[isolation]["pipelined_int"]["calls_per_s"]),
            _fmt(servekit[isolation]["pipelined_int"]["us_per_call"], ".1f"),
        ]
        for isolation, label in (("in_process", "in-process"), ("process", "process replica"))
        if "pipelined_int" in servekit.get(isolation, {})
    ]
    in_flight = settings["in_flight"]
    out = [
        "## One handle hop: in-process vs process replica",
        "",
        "`sk.run` (no HTTP): an in-process ingress times `await handle.echo(x)` on its own event"
        f" loop, {settings['calls']} sequential calls per round ({settings['big_calls']} for 1 MiB)"
        f" after {settings['warmup']} warm-up calls, {settings['rounds']} round(s) pooled, each"
        " round in a freshly started app (a new worker process), so the rounds sample different"
        " workers and moments (on this VM the hop time shifts over time: compare the round medians)."
        " The time is the whole hop: handle, routing, (for a process replica) pickling, the socket"
        " pair both ways, the worker's dispatch and the reply. CPU µs/hop: CPU time of the"
        " calling process (the ingress; for an in-process echo, the whole hop) and of the echo's"
        " worker process, divided by the timed calls (10 ms clock ticks: ±2 µs at 5000 calls).",
        "",
        *_table(header, lines),
        "",
        f"Throughput with {in_flight} hops in flight (one int, median of the rounds):",
        "",
        *_table(["echo deployment", "hops/s", "µs per hop (wall)"], piped),
        "",
    ]
    for isolation in ("in_process", "process"):
        if "cpu" in servekit.get(isolation, {}):
            out.append(f"- CPU while measuring {isolation}: {describe(servekit[isolation]['cpu'])}.")
    if floors:
        out.append(f"- CPU while measuring the floors: {describe(floors['cpu'])}.")
    return [*out, ""]


def two_core_note(results: Row) -> list[str]:
    """Where the CPU went for W2P/W3P on this machine (only when they ran)."""
    rows = [r for r in results["runs"] if r["workload"] in ("W2P", "W3P") and not r["error"]]
    if not rows:
        return []
    nproc = results["machine"].get("nproc")
    busiest = max(rows, key=lambda r: r["server_cpu_pct"])
    return [
        "### Process replicas on this machine",
        "",
        f"The machine has {nproc} cores. A process replica can run on the core the ingress is"
        " not using, but wrk, the ingress (HTTP + handle calls) and every worker share those"
        f" {nproc} cores: the server tree (ingress + workers) reached at most"
        f" {busiest['server_cpu_pct']:.0f}% of one core ({busiest['workload']}, c={busiest['concurrency']})"
        f" with wrk at {busiest['wrk_cpu_pct']:.0f}%. Every request of W2P makes three"
        " cross-process hops (six messages); W3P's requests cross once each, in batches of"
        " up to 32 per replica.",
        "",
    ]


def step_load_section(step: Row) -> list[str]:
    """The step-load section of the report."""
    return ["## Step load: autoscaled process deployment", "", *step_load_lines(step), ""]


def step_load_lines(step: Row) -> list[str]:
    """Settings, the up and down timings (seconds), and the request counts."""
    settings, summary = step["settings"], step["summary"]
    scaling = ", ".join(f"{k}={v:g}" for k, v in settings["autoscaling"].items())
    up, down, req = summary["up"], summary["down"], summary["requests"]
    period_ms = summary["sample_period_s"] * 1e3
    lines = [
        f"`StepWorker` (process replicas, `sk.Autoscaling({scaling})`,"
        f" max_ongoing_requests={settings['max_ongoing_requests']}) behind an in-process HTTP"
        f" ingress. Each request holds a worker {settings['work_s'] * 1e3:.0f} ms (sleep, no CPU) and"
        f" returns its pid. {settings['light_clients']} closed-loop client(s) for {settings['light_s']:g} s,"
        f" then a step to {settings['heavy_clients']}; `/-/status` sampled every {period_ms:.0f} ms"
        f" (median answer time {_fmt(_ms(summary['sample_lag_s']), '.1f')} ms), so the times read"
        f" from status samples are late by up to one period.",
        "",
        "| after the step (s) | |",
        "|---|---|",
        _row("autoscaler first asks for more replicas (start of the upscale delay)", up["wanted_s"]),
        _row(f"autoscaler decides 1 -> {up['target']} (from the decision's own time)", up["decision_s"]),
        _row("target_replicas raised, seen in /-/status", up["decision_seen_s"]),
        _row("new replicas starting (starting_replicas > 0), seen", up["starting_seen_s"]),
    ]
    for replica in up["replicas"]:
        name = f"{replica['id']} (pid {replica.get('pid', '?')})"
        sent = _fmt(replica.get("first_served_sent_s"), ".2f")
        lines += [
            _row(f"{name} running (listed in /-/status), seen", replica.get("running_s")),
            _row(f"**{name} first response served** (request sent at {sent})", replica.get("first_served_s")),
        ]
    lines += [
        "",
        "| after the load stops (s) | |",
        "|---|---|",
        _row("autoscaler first asks for fewer replicas (start of the downscale delay)", down["wanted_s"]),
        _row("autoscaler decides to scale down (from the decision's own time)", down["decision_s"]),
        _row("target_replicas lowered, seen in /-/status", down["decision_seen_s"]),
        _row("back to min_replicas (target and replica list), seen", down["back_to_min_s"]),
    ]
    for r in up["replicas"]:
        what = f"{r['id']} (pid {r.get('pid', '?')}) worker process gone, seen"
        lines.append(f"| {what} | kept |" if r.get("kept") else _row(what, r.get("exited_after_stop_s")))
    lines += [
        "",
        f"Requests: {req['total']} ({req['errors']} errors); {_fmt(req['light_rps'], '.0f')} req/s"
        f" before the step, {_fmt(req['heavy_rps'], '.0f')} req/s after it (p50"
        f" {_fmt(req['heavy_p50_ms'], '.0f')} ms, p99 {_fmt(req['heavy_p99_ms'], '.0f')} ms; the floor is"
        f" {settings['work_s'] * 1e3:.0f} ms). Load stopped {down['load_stopped_after_step_s']:.1f} s after"
        f" the step. Server ready in {step['server_ready_s']:.2f} s."
        f" CPU during the run: {describe(step['cpu'])}.",
    ]
    return lines


def _row(what: str, seconds: float | None) -> str:
    return f"| {what} | {_fmt(seconds, '.2f')} |"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def machine_section(machine: Row) -> list[str]:
    """Machine and versions (for files without a wrk run)."""
    keys = [k for k in ("cpu", "nproc", "ram_gib", "os", "python", "torch", "servekit") if k in machine]
    return ["## Machine", "", *_table(["", ""], ([k, str(machine[k])] for k in keys)), ""]
