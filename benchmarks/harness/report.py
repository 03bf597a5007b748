"""Turn the raw results into target checks and a markdown report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.harness import process_report

Row = dict[str, Any]

PURE = " — pure asyncio + h11 on both servers (no uvloop/httptools)"
WORKLOAD_TITLES = {
    "W1": "W1 echo",
    "W2": "W2 pipeline: normalize -> MLP 16-256-256-10 -> softmax/argmax",
    "W3": "W3 batched: deep narrow MLP 16 -> 256 x16 -> 10, max batch 32, 5 ms wait",
    "W1-pure": "W1 echo" + PURE,
    "W2-pure": "W2 pipeline" + PURE,
    "W3-pure": "W3 batched" + PURE,
    "W2P": "W2P: W2 with the three stages as process replicas (ingress in-process)",
    "W3P": "W3P: W3 with the batched model as 2 process replicas (ingress in-process)",
}
#: Process-replica workload -> (in-process workload it is compared with, Starlette role and label).
PROCESS_VARIANTS = {
    "W2P": ("W2", "Starlette (one function)"),
    "W3P": ("W3", "Starlette + hand-rolled batcher"),
}
#: Workload-name suffix of each stack; the same targets hold on both.
STACKS = {"fast": "", "pure": "-pure"}
W1_TARGET = 0.85
W2_TARGET = 0.70
W2_SYNC_TARGET = 0.80
W3_C1_TARGET = 0.90  # servekit @sk.batch at c=1 / the unbatched Starlette server
W3_BATCHER_TARGET = 0.95  # servekit @sk.batch at the top concurrency / the hand-rolled batcher
W3_MIN_MEAN_BATCH = 28.0
SOAK_SLOPE_TARGET = 1024.0  # bytes of RSS per 10k requests after warm-up: flat
CLASSIFIER_TARGET_S = 0.5
W2P_TARGET = 1.0
HOP_TARGET_US = 150.0


def find(rows: Iterable[Row], workload: str, role: str, concurrency: int) -> Row | None:
    """The successful row of ``workload``/``role`` at ``concurrency``, if any."""
    for row in rows:
        if (row["workload"], row["role"], row["concurrency"]) == (workload, role, concurrency):
            return row if not row["error"] else None
    return None


def rps(rows: Iterable[Row], workload: str, role: str, concurrency: int) -> float | None:
    """req/s of one row, or None when it is missing or failed."""
    row = find(rows, workload, role, concurrency)
    return row["rps"] if row else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _check(name: str, value: float | None, goal: float, *, at_most: bool = False) -> Row:
    passed = value is not None and (value <= goal if at_most else value >= goal)
    verdict = "n/a" if value is None else ("PASS" if passed else "FAIL")
    return {"target": name, "value": value, "goal": goal, "at_most": at_most, "result": verdict}


def w3_ceiling(results: Row, top: int) -> Row:
    """Throughput bounds for W3: model-only, model+HTTP floor, and the hand-rolled batcher."""
    rows, capacity = results["runs"], results.get("capacity", {})
    model = capacity.get("ceiling_items_per_s")
    floor = rps(rows, "W1", "baseline", top)
    per_item_s = capacity["call_32_ms"] / 1e3 / capacity["batch_size"] if model else None
    combined = 1 / (1 / floor + per_item_s) if floor and per_item_s else None
    batcher = rps(rows, "W3", "baseline", top)
    bounds = [v for v in (model, batcher) if v]
    return {
        "model_items_per_s": model,
        "http_floor_w1_rps": floor,
        "model_plus_floor_rps": combined,
        "hand_rolled_batcher_rps": batcher,
        "bound_rps": min(bounds) if bounds else None,
    }


def targets(results: Row) -> list[Row]:
    """Evaluate the README's targets (at c=1 and at the highest concurrency measured).

    The pure-stack, process-replica and soak targets appear only when their inputs were
    measured (``-pure`` rows, W2P rows, the hop measurement, a soak), so a fast-stack W1-W3
    run reports exactly the fast-stack targets.
    """
    checks = base_targets(results) if "runs" in results else []
    return checks + process_targets(results) + soak_targets(results)


def soak_targets(results: Row) -> list[Row]:
    """Each soaked workload's RSS slope after warm-up, in bytes per 10k requests."""
    checks = []
    for run in results.get("soak", {}).get("runs", []):
        slope = run.get("slope_bytes_per_1k")
        name = (
            f"soak {run['workload']} ({run['requests']:,} requests):"
            " RSS slope after warm-up, bytes / 10k requests"
        )
        checks.append(_check(name, None if slope is None else 10 * slope, SOAK_SLOPE_TARGET, at_most=True))
    return checks


def process_targets(results: Row) -> list[Row]:
    """W2P vs W2 at the top concurrency, and the cross-process hop's median."""
    checks = []
    rows = results.get("runs", [])
    if rows and any(row["workload"] == "W2P" for row in rows):
        top = max(results["settings"]["concurrency"])
        value = _ratio(rps(rows, "W2P", "servekit", top), rps(rows, "W2", "servekit", top))
        checks.append(
            _check(f"W2P c={top} process replicas / in-process servekit W2 req/s", value, W2P_TARGET)
        )
    process = results.get("hops", {}).get("servekit", {}).get("process", {})
    for kind, what in (("int", "one int"), ("floats16", "16 floats")):
        if kind in process:
            name = f"cross-process hop median, {what} (µs)"
            checks.append(_check(name, process[kind]["median_us"], HOP_TARGET_US, at_most=True))
    return checks


def base_targets(results: Row) -> list[Row]:
    """The W1-W3 targets on the fast stack, then on the pure stack when it was measured."""
    rows, top = results["runs"], max(results["settings"]["concurrency"])
    classifier = results.get("classifier", {})
    checks = stack_targets(rows, top, "fast")
    if any(row["workload"].endswith(STACKS["pure"]) for row in rows):
        checks += stack_targets(rows, top, "pure")
    checks.append(
        _check(
            "examples/classifier sk.run ready beyond import torch (s)",
            classifier.get("ready_beyond_torch_s"),
            CLASSIFIER_TARGET_S,
            at_most=True,
        )
    )
    return checks


def stack_targets(rows: Sequence[Row], top: int, stack: str) -> list[Row]:
    """W1 at c=1 and top, W2 (async at top, sync at c=1 and top), W3 at c=1 and top, on one stack."""
    w1, w2, w3 = (f"{workload}{STACKS[stack]}" for workload in ("W1", "W2", "W3"))
    levels = sorted({1, top})

    def ratio(workload: str, role: str, against: str, c: int) -> float | None:
        return _ratio(rps(rows, workload, role, c), rps(rows, workload, against, c))

    checks = [
        _check(f"{w1} c={c} servekit/Starlette req/s", ratio(w1, "servekit", "baseline", c), W1_TARGET)
        for c in levels
    ]
    checks.append(
        _check(
            f"{w2} c={top} servekit (3 async deployments)/Starlette (one function) req/s",
            ratio(w2, "servekit", "baseline", top),
            W2_TARGET,
        )
    )
    checks += [
        _check(
            f"{w2} c={c} servekit (3 sync def deployments)/Starlette (one function) req/s",
            ratio(w2, "servekit-sync", "baseline", c),
            W2_SYNC_TARGET,
        )
        for c in levels
    ]
    w3_sk = find(rows, w3, "servekit", top)
    return [
        *checks,
        _check(
            f"{w3} c=1 servekit @sk.batch / Starlette without batching req/s",
            ratio(w3, "servekit", "reference", 1),
            W3_C1_TARGET,
        ),
        _check(
            f"{w3} c={top} servekit @sk.batch / hand-rolled batcher req/s",
            ratio(w3, "servekit", "baseline", top),
            W3_BATCHER_TARGET,
        ),
        _check(
            f"{w3} c={top} servekit mean batch size",
            w3_sk.get("mean_batch") if w3_sk else None,
            W3_MIN_MEAN_BATCH,
        ),
    ]


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(line) + " |" for line in lines)
    return out


def _run_line(row: Row) -> list[str]:
    if row["error"]:
        message = row["error"].splitlines()[0][:120].replace("|", "/")
        return [row["label"], str(row["concurrency"]), f"error: {message}", "", "", "", "", "", ""]
    return [
        row["label"],
        str(row["concurrency"]),
        _fmt(row["rps"]),
        _fmt(row["p50_ms"], ".2f"),
        _fmt(row["p99_ms"], ".2f"),
        str(row["errors"]),
        _fmt(row.get("mean_batch"), ".1f"),
        f"{row['server_cpu_pct']:.0f}% / {row['wrk_cpu_pct']:.0f}%",
        f"{row['steal_pct']:.0f}%",
    ]


#: servekit roles, each compared with the workload's Starlette baseline.
SERVEKIT_ROLES = ("servekit", "servekit-sync")


def _comparisons(rows: Sequence[Row], workload: str) -> list[tuple[str, str]]:
    """(role, against role) pairs to print as ratios for one workload's rows."""
    roles = {row["role"] for row in rows}
    pairs = [(role, "baseline") for role in SERVEKIT_ROLES if role in roles and "baseline" in roles]
    if workload.startswith("W3") and {"servekit", "reference"} <= roles:
        pairs.append(("servekit", "reference"))
    return pairs


def _ratio_lines(rows: Sequence[Row], workload: str, concurrency: Sequence[int]) -> list[str]:
    pairs = _comparisons(rows, workload)
    label = {row["role"]: row["label"] for row in rows}
    lines = []
    for c in concurrency:
        line = [str(c)]
        for role, against in pairs:
            mine, other = find(rows, workload, role, c), find(rows, workload, against, c)
            line += (
                [f"{mine['rps'] / other['rps']:.2f}x", f"{mine['p99_ms'] / other['p99_ms']:.2f}x"]
                if mine and other
                else ["—", "—"]
            )
        lines.append(line)
    if not pairs:
        return []
    header = ["concurrency"]
    for role, against in pairs:
        header += [f"{label[role]} / {label[against]} req/s", "p99 ratio"]
    return ["", *_table(header, lines)]


def workload_section(results: Row, workload: str) -> list[str]:
    """Markdown table (and ratios) of one workload."""
    rows = [r for r in results["runs"] if r["workload"] == workload]
    if not rows:
        return []
    header = [
        "server",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "mean batch",
        "CPU server / wrk",
        "steal",
    ]
    out = [f"## {WORKLOAD_TITLES[workload]}", "", *_table(header, map(_run_line, rows))]
    concurrency = results["settings"]["concurrency"]
    if workload in PROCESS_VARIANTS:
        out += _process_ratio_lines(results["runs"], workload, concurrency)
    else:
        out += _ratio_lines(rows, workload, concurrency)
    return [*out, ""]


def _process_ratio_lines(rows: Sequence[Row], workload: str, concurrency: Sequence[int]) -> list[str]:
    """A process-replica variant against in-process servekit and Starlette, same run."""
    reference, starlette = PROCESS_VARIANTS[workload]
    lines = []
    for c in concurrency:
        mine = find(rows, workload, "servekit", c)
        if not mine:
            continue
        ratios = []
        for role in ("servekit", "baseline"):
            other = find(rows, reference, role, c)
            ratios += (
                [f"{mine['rps'] / other['rps']:.2f}x", f"{mine['p99_ms'] / other['p99_ms']:.2f}x"]
                if other
                else ["—", "—"]
            )
        lines.append([str(c), *ratios])
    if not lines:
        return []
    header = [
        "concurrency",
        f"req/s vs in-process servekit {reference}",
        "p99 ratio",
        f"req/s vs {starlette} ({reference})",
        "p99 ratio",
    ]
    return ["", *_table(header, lines)]


def _w3_notes(results: Row) -> list[str]:
    cap, ceil = results.get("capacity", {}), results["w3_ceiling"]
    if "call_32_ms" not in cap:
        return ["W3 model capacity: " + str(cap.get("error", "not measured")), ""]
    return [
        f"W3 model cost in torch ({cap['torch_threads']} thread(s)),"
        " list -> tensor -> forward -> list:"
        f" batch 1 = {cap['call_1_ms']:.3f} ms, batch 32 = {cap['call_32_ms']:.3f} ms"
        f" ({cap['per_item_speedup']:.1f}x cheaper per item; bare forward"
        f" {cap['forward_1_ms']:.3f} / {cap['forward_32_ms']:.3f} ms).",
        f"Ceilings: model alone at batch 32 = {_fmt(ceil['model_items_per_s'])} items/s;"
        f" W1 HTTP floor = {_fmt(ceil['http_floor_w1_rps'])} req/s;"
        f" both on one core (1 / (1/floor + t32/32)) = {_fmt(ceil['model_plus_floor_rps'])} req/s;"
        f" hand-rolled batcher measured = {_fmt(ceil['hand_rolled_batcher_rps'])} req/s."
        f" Target bound = min(model, batcher) = {_fmt(ceil['bound_rps'])} req/s.",
        "",
    ]


def _startup_section(results: Row) -> list[str]:
    lines = [
        [
            s["server"],
            _fmt(s["cold_start_s"], ".2f"),
            ", ".join(f"{v:.2f}" for v in s["cold_start_samples_s"]),
            _fmt(s["idle_rss_mb"], ".0f"),
            (s["error"] or "").splitlines()[0][:80] if s["error"] else "",
        ]
        for s in results.get("startup", [])
    ]
    header = ["server", "cold start s (median)", "samples s", "idle RSS MB", "error"]
    return [
        "## W1 cold start (process start -> first 200) and idle RSS",
        "",
        *_table(header, lines),
        "",
    ]


def _classifier_section(results: Row) -> list[str]:
    c = results.get("classifier", {})
    head = ["## examples/classifier: `sk.run(app)` ready beyond `import torch`", ""]
    if "ready_beyond_torch_s" not in c:
        return [*head, str(c.get("skipped") or c.get("error", "not measured")), ""]
    return [
        *head,
        f"Median of {len(c['samples'])} fresh processes: **{c['ready_beyond_torch_s']:.3f} s**"
        f" (import servekit {c['import_servekit_s']:.3f} s,"
        f" import app.py {c['import_app_s']:.3f} s,"
        f" sk.run {c['sk_run_s']:.3f} s).",
        "",
    ]


def _loadgen_section(results: Row) -> list[str]:
    top = max(results["settings"]["concurrency"])
    row = find(results["runs"], "W1", "baseline", top)
    head = ["## Is the load generator the bottleneck?", ""]
    if not row:
        return [*head, "W1 baseline not measured.", ""]
    per_req_us = row["wrk_cpu_pct"] / 100 / row["rps"] * 1e6
    return [
        *head,
        f"The floor (Starlette W1, c={top}) reached {row['rps']:.0f} req/s with the server process"
        f" at {row['server_cpu_pct']:.0f}% of a core and wrk at {row['wrk_cpu_pct']:.0f}%"
        f" ({per_req_us:.1f} µs of wrk CPU per request). The server is the bottleneck when it"
        " sits near 100% (one Python process) while wrk has headroom on the other core.",
        "",
    ]


def _machine_section(results: Row) -> list[str]:
    m, s = results["machine"], results["settings"]
    keys = ["cpu", "nproc", "ram_gib", "os", "python", "torch", "uvicorn", "starlette", "uvloop"]
    keys += ["httptools", "pydantic", "servekit", "wrk"]
    settings = (
        f"wrk 1 thread, connections = concurrency {list(s['concurrency'])},"
        f" warm-up {s['warmup_s']} s then {s['duration_s']} s measured per point;"
        f" best of {s.get('repeat', 1)} interleaved round(s) per point (all req/s in the JSON);"
        f" torch threads {s['torch_threads']}; uvicorn one worker, loop=uvloop,"
        " http=httptools (the -pure workloads: loop=asyncio, http=h11, on both servers),"
        " access log off, one server at a time."
        " CPU server / wrk: CPU time of the server process tree and of wrk, in % of one core."
        " steal: CPU time the hypervisor took from this VM during the window, in % of the"
        " machine (a noisy neighbour makes every number lower; compare ratios within one run)."
    )
    return [
        "## Machine and settings",
        "",
        *_table(["", ""], ([k, str(m[k])] for k in keys)),
        "",
        settings,
        "",
    ]


def markdown(results: Row) -> str:
    """The full markdown report."""
    checks = [
        [
            t["target"],
            _fmt(t["value"], ".2f"),
            ("<= " if t["at_most"] else ">= ") + f"{t['goal']}",
            t["result"],
        ]
        for t in results["targets"]
    ]
    out = [
        f"# servekit benchmarks — {results['machine']['date']}, {results['machine']['host']}",
        "",
        *_commands(results),
        "## Targets",
        "",
        *_table(["target", "measured", "goal", "result"], checks),
        "",
    ]
    if results.get("notes"):
        out += ["## Summary", "", results["notes"], ""]
    if "hops" in results:
        out += process_report.hops_section(results["hops"])
    if "runs" in results:
        for workload in WORKLOAD_TITLES:
            out += workload_section(results, workload)
            if workload == "W3":
                out += _w3_notes(results)
        out += process_report.two_core_note(results)
    if "step_load" in results:
        out += process_report.step_load_section(results["step_load"])
    if "soak" in results:
        out += soak_section(results["soak"])
    if "runs" in results:
        out += _startup_section(results) + _classifier_section(results)
        out += _loadgen_section(results) + _machine_section(results)
    else:
        out += process_report.machine_section(results["machine"])
    return "\n".join(out)


def soak_section(soak: Row) -> list[str]:
    """The soak: RSS from start to end and its slope per request after warm-up, per workload."""
    header = [
        "workload",
        "stack",
        "c",
        "requests",
        "seconds",
        "req/s",
        "errors",
        "RSS start MB",
        "RSS end MB",
        "slope after warm-up, bytes / 1k requests",
        "fitted from request",
    ]
    lines = [
        [
            run["workload"],
            run["stack"],
            str(run["concurrency"]),
            f"{run['requests']:,}",
            _fmt(run["seconds"], ".0f"),
            _fmt(run["rps"]),
            str(run["errors"]),
            _fmt(run["start_rss_mb"], ".1f"),
            _fmt(run["end_rss_mb"], ".1f"),
            _fmt(run["slope_bytes_per_1k"], ".1f"),
            f"{run['fit_from_requests']:,}",
        ]
        for run in soak["runs"]
    ]
    out = ["## Soak: server memory over many requests", "", *_table(header, lines), ""]
    for run in soak["runs"]:
        points = run["samples"]
        shown = points[:: max(1, len(points) // 8)]
        shown += [] if shown[-1] is points[-1] else [points[-1]]
        trace = ", ".join(f"{requests:,}: {rss / 2**20:.1f}" for requests, rss, _ in shown)
        out += [f"{run['workload']} RSS (MB) by requests served: {trace}", ""]
    out += [
        "RSS of the server process tree (psutil) sampled between wrk windows of up to"
        f" {soak['sample_every_s']} s; the slope is a least-squares line of RSS against requests served,"
        " over the samples after the warm-up.",
        "",
    ]
    return out


def _commands(results: Row) -> list[str]:
    """The command line(s) that produced the file."""
    commands = [results["command"]] if "command" in results else []
    commands += [results[key]["command"] for key in ("hops", "step_load", "soak") if key in results]
    if len(commands) == 1:
        return [f"Command: `{commands[0]}`", ""]
    return ["Commands (one results file, one section each):", "", *(f"- `{c}`" for c in commands), ""]
