"""servekit on Ray against raw Ray Serve, apps written independently, one server at a time.

    python -m benchmarks.ray_paired                 # W1, W2, W2-sync, W3 at c=1,16,64, 3 rounds (~20 min)
    python -m benchmarks.ray_paired --quick         # 1 round, short points (~6 min)
    python -m benchmarks.ray_paired --workloads w3 --concurrency 64 --rounds 2 --profile /tmp/prof

The apps are `workloads/rayserve_user_apps.py` (as Ray Serve's docs write them) and
`workloads/servekit_user_apps.py` (as a servekit user writes them, served with
`sk.serve(app, backend="ray")`); same topology, `max_ongoing_requests=128` everywhere. One local
Ray (8 logical CPUs) whose Serve proxy both use. Paired, interleaved rounds: in each round every
workload is deployed on one side, measured at every concurrency, deleted, then the same on the
other side (which side goes first alternates by round and workload), so a slow moment of this
shared machine hits both. Ratios are the median over rounds of servekit / Ray Serve for the
two points of the same round.

Every point also records the CPU of each Ray process over the point, by role (proxy, each
deployment's replicas, controller, raylet/GCS, driver), divided by the requests served: that
is where a difference in CPU per request lives. W3 points record the mean batch size the
model saw. `--profile DIR` runs py-spy on the proxy and every replica during the c=64 point
of each workload and side (speedscope JSON and a top-functions text file).

Results: `benchmarks/results/<date>-<host>-ray-paired.{md,json}` (or `--out STEM`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import machine
from benchmarks.harness.server import REPO_ROOT, free_port, get_json, process_tree, request
from benchmarks.harness.wrk import ensure_wrk, run_wrk, write_lua_script
from benchmarks.ray_backend import _first_200
from benchmarks.workloads import SAMPLE_X

BODY = json.dumps({"x": SAMPLE_X}, separators=(",", ":"))
RESULTS = REPO_ROOT / "benchmarks" / "results"
SIDES = ("ray-serve", "servekit")
WORKLOADS = ("w1", "w2", "w2-sync", "w3")
TITLES = {
    "w1": "W1 echo",
    "w2": "W2 pipeline (ingress normalizes, then model and postprocess through handles)",
    "w2-sync": "W2 with sync `def` stages",
    "w3": "W3 batched (one deployment, batch of up to 32, 5 ms)",
}
TARGET_RATIO = 0.95
RAY_CPUS = 8
APP = "bench"
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Row = dict[str, Any]


# --- CPU by process role --------------------------------------------------------


_ACTOR_ROLES = (
    ("ray::ProxyActor", "proxy"),
    ("ray::ServeController", "controller"),
    ("ray::", "ray worker (other)"),
)


def _role(pid: int) -> str | None:
    """What a Ray process is, from its title; None for processes not counted (wrk)."""
    try:
        head = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    if head.startswith("ray::ServeReplica:"):
        # ray::ServeReplica:<app>:<deployment>, with ".<method>" while a call runs
        return "replica:" + head.split(":")[-1].split(".")[0].split()[0]
    role = next((role for prefix, role in _ACTOR_ROLES if head.startswith(prefix)), None)
    if role is None:
        name = Path(head.split()[0]).name if head else "?"
        role = "driver" if pid == os.getpid() else name if name in ("raylet", "gcs_server") else None
        if role is None and "wrk" not in name:
            role = "ray daemons (other)"
    return role


def _cpu_s(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process of this run (the driver, Ray's daemons and workers): its role and CPU seconds."""
    out = {}
    for pid in process_tree(os.getpid()):
        role, cpu = _role(pid), _cpu_s(pid)
        if role is not None and cpu is not None:
            out[pid] = (role, cpu)
    return out


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each role used between two snapshots."""
    used: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        start = before.get(pid, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + max(0.0, cpu - start)
    return used


# --- the two sides --------------------------------------------------------------


class Deployed:
    """One side's app of one workload on the shared Ray; `close()` deletes it."""

    def __init__(self, side: str, workload: str, port: int) -> None:
        from ray import serve

        import servekit as sk
        from benchmarks.workloads import rayserve_user_apps, servekit_user_apps

        self.side, self.workload, self.port = side, workload, port
        started = time.perf_counter()
        self._server: sk.Server | None = None
        if side == "ray-serve":
            self.path = "/"
            serve.run(rayserve_user_apps.BUILDERS[workload](), name=APP, route_prefix="/")
        else:
            self.path = servekit_user_apps.PATH
            self._server = sk.serve(
                servekit_user_apps.BUILDERS[workload](), port=port, blocking=False, backend="ray"
            )
        self.first_200_s = _first_200(port, self.path, started)
        self._mark = (0, 0)

    def batches_since_mark(self) -> tuple[int, int]:
        """(batches, items) the W3 model ran since the last call (the first call only marks)."""
        if self.side == "ray-serve":  # the app hands its sizes over and forgets them
            status, payload = request(self.port, "GET", "/", "", timeout=10)
            sizes = json.loads(payload)["batch_sizes"] if status == 200 else []
            return len(sizes), sum(sizes)
        batches = items = 0
        for deployment in get_json(self.port, "/-/status")["deployments"].values():
            for replica in deployment.get("replicas", []):
                for stats in (replica.get("batching") or {}).values():
                    batches += stats.get("batches", 0)
                    items += stats.get("items", 0)
        last, self._mark = self._mark, (batches, items)
        return batches - last[0], items - last[1]

    def close(self) -> None:
        from ray import serve

        if self._server is not None:
            self._server.shutdown(grace_s=5)
        else:
            serve.delete(APP)


@contextlib.contextmanager
def profiled(directory: Path | None, label: str, seconds: float) -> Iterator[None]:
    """py-spy on the proxy and every replica for `seconds`, while the body runs."""
    spy = shutil.which("py-spy")
    if directory is None or spy is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    targets = {
        pid: role
        for pid, (role, _) in cpu_by_process().items()
        if role == "proxy" or role.startswith("replica:")
    }
    procs = []
    for pid, role in targets.items():
        stem = directory / f"{label}-{role.replace(':', '-')}-{pid}"
        procs.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    f"{stem}.txt",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=seconds + 30)


def point(app: Deployed, c: int, *, args: argparse.Namespace, script: Path, index: int) -> Row:
    """One wrk point on `app`, with CPU per role and (W3) the mean batch size."""
    if app.workload == "w3":
        app.batches_since_mark()
    before = cpu_by_process()
    label = f"{app.workload}-{app.side}-c{c}-r{index}"
    profile = args.profile if (c == max(args.concurrency) and index == 0) else None
    with profiled(profile, label, args.duration):
        result = run_wrk(f"http://127.0.0.1:{app.port}{app.path}", script, c, args.duration, timeout_s=10)
    used = cpu_by_role(before, cpu_by_process())
    row: Row = {"workload": app.workload, "side": app.side, "c": c, "round": index, **result.to_dict()}
    requests = max(1, result.requests)
    row["cpu_ms_per_request"] = 1000 * sum(used.values()) / requests
    row["cpu_ms_by_role"] = {role: 1000 * s / requests for role, s in sorted(used.items())}
    row["first_200_s"] = app.first_200_s
    if app.workload == "w3":
        batches, items = app.batches_since_mark()
        row["mean_batch"] = items / batches if batches else None
    print(
        f"   r{index} {app.workload:<7} {app.side:<9} c={c:<3} {result.rps:8.1f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:8.2f} ms  "
        f"CPU {row['cpu_ms_per_request']:6.2f} ms/req"
        + (f"  batch {row['mean_batch']:.1f}" if row.get("mean_batch") else "")
        + f"  non-2xx/errors {result.errors}",
        file=sys.stderr,
        flush=True,
    )
    return row


def measure_round(workload: str, index: int, port: int, args: argparse.Namespace, script: Path) -> list[Row]:
    """Both sides of `workload`, one after the other (order alternating), every concurrency."""
    flip = (index + WORKLOADS.index(workload)) % 2
    rows = []
    for side in SIDES[::-1] if flip else SIDES:
        app = Deployed(side, workload, port)
        try:
            run_wrk(f"http://127.0.0.1:{port}{app.path}", script, max(args.concurrency), args.warmup)
            for c in args.concurrency:
                rows.append(point(app, c, args=args, script=script, index=index))
        finally:
            app.close()
            time.sleep(1.0)
    return rows


def paired(rows: list[Row], workload: str, c: int, key: str = "rps") -> list[float]:
    """servekit / Ray Serve of `key` for each round's two points at concurrency `c`."""
    points = {(r["round"], r["side"]): r.get(key) for r in rows if r["workload"] == workload and r["c"] == c}
    rounds = sorted({index for index, _ in points})
    return [
        points[(index, "servekit")] / points[(index, "ray-serve")]  # type: ignore[operator]
        for index in rounds
        if points.get((index, "ray-serve")) and points.get((index, "servekit"))
    ]


def summary(rows: list[Row]) -> list[Row]:
    """Per workload and concurrency: each side's medians, and the paired ratios."""
    out = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for c in sorted({r["c"] for r in rows if r["workload"] == workload}):
            entry: Row = {"workload": workload, "c": c}
            for side in SIDES:
                mine = [r for r in rows if r["workload"] == workload and r["c"] == c and r["side"] == side]
                if not mine:
                    continue
                entry[side] = {
                    "rps": statistics.median(r["rps"] for r in mine),
                    "rps_rounds": [round(r["rps"], 1) for r in mine],
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                    "errors": sum(r["non_2xx"] + r["socket_errors"] for r in mine),
                    "cpu_ms_per_request": statistics.median(r["cpu_ms_per_request"] for r in mine),
                    "cpu_ms_by_role": _median_roles([r["cpu_ms_by_role"] for r in mine]),
                    "mean_batch": _median_or_none([r.get("mean_batch") for r in mine]),
                }
            ratios = paired(rows, workload, c)
            entry["paired_rps_ratios"] = [round(x, 3) for x in ratios]
            entry["rps_ratio"] = statistics.median(ratios) if ratios else None
            cpu = paired(rows, workload, c, "cpu_ms_per_request")
            entry["cpu_ratio"] = statistics.median(cpu) if cpu else None
            out.append(entry)
    return out


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _median_roles(maps: Sequence[dict[str, float]]) -> dict[str, float]:
    roles = sorted({role for m in maps for role in m})
    return {role: statistics.median(m.get(role, 0.0) for m in maps) for role in roles}


def targets(entries: list[Row]) -> list[Row]:
    """At least `TARGET_RATIO` of Ray Serve's req/s at c=1 and c=64; W3's mean batch at least Ray's."""
    out = []
    for entry in entries:
        if entry["c"] in (1, 64) and entry["rps_ratio"] is not None:
            out.append(
                {
                    "name": f"{entry['workload'].upper()} c={entry['c']} req/s, "
                    "servekit / Ray Serve (paired median)",
                    "measured": entry["rps_ratio"],
                    "goal": f">= {TARGET_RATIO}",
                    "met": entry["rps_ratio"] >= TARGET_RATIO,
                }
            )
        if entry["workload"] == "w3" and entry["c"] == 64 and "servekit" in entry and "ray-serve" in entry:
            ours, theirs = entry["servekit"]["mean_batch"], entry["ray-serve"]["mean_batch"]
            if ours is not None and theirs is not None:
                out.append(
                    {
                        "name": "W3 c=64 mean batch, servekit / Ray Serve",
                        "measured": ours / theirs,
                        "goal": ">= 1.0",
                        "met": ours >= theirs,
                    }
                )
    return out


def markdown(results: dict[str, Any]) -> str:
    """The report."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"# servekit on Ray vs raw Ray Serve, paired rounds — {m['date']}, {m['host']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['ram_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"ray {results['ray_version']}, servekit {m['servekit']}, torch {m['torch']}, {m['wrk']}.",
        f"One local Ray ({RAY_CPUS} logical CPUs), one app deployed at a time; {s['rounds']} paired "
        f"rounds of {s['warmup']} s warm-up + {s['duration']} s per point (wrk, 1 thread). Apps: "
        "`benchmarks/workloads/rayserve_user_apps.py` and `benchmarks/workloads/servekit_user_apps.py`.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | result |",
        "|---|---|---|---|",
    ]
    for target in results["targets"]:
        verdict = "PASS" if target["met"] else "FAIL"
        lines.append(f"| {target['name']} | {target['measured']:.3f} | {target['goal']} | {verdict} |")
    for workload in dict.fromkeys(e["workload"] for e in results["summary"]):
        lines += [
            "",
            f"## {TITLES.get(workload, workload)}",
            "",
            "| c | Ray Serve req/s (rounds) | servekit req/s (rounds) | paired ratio: median (rounds) "
            "| p50 ms Ray / sk | p99 ms Ray / sk | CPU ms/req Ray / sk | mean batch Ray / sk | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in (e for e in results["summary"] if e["workload"] == workload):
            ray, sk = e.get("ray-serve", {}), e.get("servekit", {})

            def pair(key: str, fmt: str = ".1f", ray: Row = ray, sk: Row = sk) -> str:
                a, b = ray.get(key), sk.get(key)
                return f"{'—' if a is None else format(a, fmt)} / {'—' if b is None else format(b, fmt)}"

            ratio = (
                "—"
                if e["rps_ratio"] is None
                else f"{e['rps_ratio']:.3f} ({', '.join(map(str, e['paired_rps_ratios']))})"
            )
            lines.append(
                f"| {e['c']} | {ray.get('rps', 0):.1f} ({', '.join(map(str, ray.get('rps_rounds', [])))}) "
                f"| {sk.get('rps', 0):.1f} ({', '.join(map(str, sk.get('rps_rounds', [])))}) | {ratio} "
                f"| {pair('p50_ms', '.2f')} | {pair('p99_ms', '.2f')} | {pair('cpu_ms_per_request', '.2f')} "
                f"| {pair('mean_batch')} | {ray.get('errors', 0)} / {sk.get('errors', 0)} |"
            )
        lines += ["", "CPU per request by process (ms, median over rounds), at the highest concurrency:", ""]
        top = max((e for e in results["summary"] if e["workload"] == workload), key=lambda e: e["c"])
        roles = sorted({r for side in SIDES for r in top.get(side, {}).get("cpu_ms_by_role", {})})
        lines += ["| process | Ray Serve | servekit | difference |", "|---|---|---|---|"]
        for role in roles:
            a = top.get("ray-serve", {}).get("cpu_ms_by_role", {}).get(role, 0.0)
            b = top.get("servekit", {}).get("cpu_ms_by_role", {}).get(role, 0.0)
            lines.append(f"| {role} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    if results.get("notes"):
        lines += ["", "## Notes", "", results["notes"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s warm-up, 3 s points")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda t: [int(c) for c in t.split(",")], default=[1, 16, 64])
    parser.add_argument("--workloads", type=lambda t: t.split(","), default=list(WORKLOADS))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--out", type=Path, default=None, help="results stem (without .md/.json)")
    parser.add_argument("--notes", type=Path, default=None, help="a Markdown file to add as Notes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 1.0, 3.0
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every round; returns the results document."""
    import ray
    from ray import serve

    wrk = ensure_wrk()
    script = write_lua_script(Path(tempfile.mkdtemp(prefix="servekit-ray-paired-")), BODY)
    port = free_port()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    rows: list[Row] = []
    try:
        for index in range(args.rounds):
            for workload in args.workloads:
                rows += measure_round(workload, index, port, args, script)
    finally:
        serve.shutdown()
        ray.shutdown()
    entries = summary(rows)
    argv = " ".join(sys.argv[1:])
    return {
        "command": f"python -m benchmarks.ray_paired {argv}".strip(),
        "machine": machine.describe(wrk),
        "ray_version": ray.__version__,
        "settings": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds},
        "summary": entries,
        "rows": rows,
        "targets": targets(entries),
        "notes": args.notes.read_text() if args.notes else "",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    suffix = "-quick" if args.quick else ""
    stem = args.out or RESULTS / f"{dt.date.today().isoformat()}-{machine.host_tag()}-ray-paired{suffix}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results) + "\n")
    print(f"wrote {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
