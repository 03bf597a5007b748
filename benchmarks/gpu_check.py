"""servekit on a real CUDA GPU: replica placement and batched throughput.

```bash
python -m benchmarks.gpu_check                      # everything, ~2-3 min on one H100
python -m benchmarks.gpu_check --json out.json      # also write every number as JSON
python -m benchmarks.gpu_check --calls 2000 --concurrency 128
```

1. **Placement** with the real local runtime (`sk.run`, GPU inventory detected through NVML or
   torch, then once more with ``SERVEKIT_GPUS=0``): a deployment with
   ``isolation="process", num_replicas=2, resources=Resources(gpus=0.5)``, whose replicas
   report `replica_context().device` / `gpu_ids`, ``CUDA_VISIBLE_DEVICES``,
   `torch.cuda.current_device()`, the per-process memory fraction, and whether allocating 60%
   of the device is refused; the same deployment in-process; and 3 x 0.5 GPUs on one GPU
   (must be refused before anything starts).
2. **CUDA tensors across the process boundary**: a CUDA tensor sent to a GPU process replica
   and to a CPU one (``CUDA_VISIBLE_DEVICES=''``) while 3 other calls are in flight on it, and
   a CUDA tensor returned from it: what arrives, what the bystanders get, replica restarts.
3. **Throughput**: an fp16 MLP 1024-4096-4096-1024 on the GPU, `@sk.batch(max_batch_size=64,
   max_wait_ms=5)` vs one forward pass per call, in-process and as a process replica, driven
   by `--concurrency` concurrent callers through handles, from outside the app (the caller's
   own event loop, as a notebook would) and from an in-process deployment (the runtime's loop,
   as an HTTP ingress would). Items/s, p50/p99 latency, mean batch size from
   ``status()`` (process replicas' stats refreshed first), and the model's own ceiling.
   Each point is measured `--rounds` times. Note: an in-process async method that computes
   without awaiting runs inline in the calling task when called from the runtime's loop, so
   the in-app unbatched in-process latency is service time only (callers queue untimed).

Without torch or without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import servekit as sk

try:
    import torch
except ImportError:  # the check needs torch; main() says so and exits 0
    torch = None  # type: ignore[assignment]

IN_DIM, HIDDEN, OUT_DIM = 1024, 4096, 1024
MAX_BATCH, MAX_WAIT_MS = 64, 5
START_TIMEOUT_S = 180.0


# -- placement probes ---------------------------------------------------------------------------


def _memory_fraction() -> float | str:
    """torch's per-process memory fraction of device 0, where this torch can read it."""
    for owner in (torch.cuda, getattr(torch.cuda, "memory", None)):
        getter = getattr(owner, "get_per_process_memory_fraction", None)
        if getter is not None:
            return float(getter(0))
    return "not readable in this torch"


def probe_report(context: sk.ReplicaContext) -> dict[str, Any]:
    """What a replica sees of its GPU placement, from inside the replica."""
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "replica_id": context.replica_id,
        "device": context.device,
        "gpu_ids": list(context.gpu_ids),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        report["torch_device_count"] = torch.cuda.device_count()
        x = torch.ones(256, 256, device=context.device)
        report["matmul_ok"] = bool(((x @ x) == 256).all().item())
        report["current_device"] = torch.cuda.current_device()
        report["device_name"] = torch.cuda.get_device_name(context.device)
        report["memory_fraction"] = _memory_fraction()
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report


def try_allocate(context: sk.ReplicaContext, fraction: float) -> dict[str, Any]:
    """Allocate `fraction` of the replica's device through torch; report whether it was refused."""
    total = torch.cuda.get_device_properties(context.device).total_memory
    size = int(total * fraction)
    result: dict[str, Any] = {"replica_id": context.replica_id, "requested_gib": round(size / 2**30, 1)}
    try:
        block = torch.empty(size, dtype=torch.uint8, device=context.device)
        result["refused"] = False
        del block
    except torch.cuda.OutOfMemoryError as exc:
        result["refused"] = True
        result["error"] = str(exc).splitlines()[0][:300]
    torch.cuda.empty_cache()
    return result


@sk.deployment(isolation="process", num_replicas=2, resources=sk.Resources(gpus=0.5))
class GpuProbe:
    """Reports its placement; allocates on request; returns a CUDA tensor on request."""

    def __init__(self) -> None:
        self.context = sk.replica_context()

    def report(self) -> dict[str, Any]:
        return probe_report(self.context)

    def allocate(self, fraction: float) -> dict[str, Any]:
        return try_allocate(self.context, fraction)

    def cuda_tensor(self) -> Any:
        return torch.arange(4, device=self.context.device)

    async def describe(self, x: Any) -> str:
        return f"{type(x).__name__} on {getattr(x, 'device', '-')}"

    async def slow(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()


def per_replica(call: Callable[[], Any], replicas: int, tries: int = 40) -> dict[str, Any]:
    """Call sequentially until `replicas` distinct replicas answered (keyed by replica_id)."""
    seen: dict[str, Any] = {}
    for _ in range(tries):
        answer = call()
        seen.setdefault(answer["replica_id"], answer)
        if len(seen) >= replicas:
            break
    return dict(sorted(seen.items()))


def placement_run(label: str, app: sk.Application, replicas: int) -> dict[str, Any]:
    """Start `app` (ingress: a GpuProbe variant), collect what each replica reports."""
    started = time.perf_counter()
    with sk.run(app, start_timeout_s=START_TIMEOUT_S) as handle:
        ready_s = time.perf_counter() - started
        status = handle.status()
        reports = per_replica(lambda: handle.report().result(timeout=60), replicas)
        allocations = per_replica(lambda: handle.allocate(0.6).result(timeout=60), replicas)
        result = {
            "label": label,
            "ready_s": round(ready_s, 2),
            "inventory": {k: status["gpus"].get(k) for k in ("source", "gpus")},
            "placements": status["gpus"].get("replicas"),
            "status_replicas": [
                {k: r.get(k) for k in ("id", "device", "gpu_ids", "pid")}
                for r in next(iter(status["deployments"].values()))["replicas"]
            ],
            "reports": reports,
            "allocate_60pct": allocations,
        }
    print(f"\n== placement: {label} (ready in {ready_s:.1f} s)")
    print(json.dumps({k: v for k, v in result.items() if k != "label"}, indent=1, default=str))
    return result


@contextmanager
def env_var(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def oversubscription() -> dict[str, Any]:
    """3 replicas x 0.5 GPU on one GPU: must fail before any replica starts."""
    try:
        with sk.run(GpuProbe.options(num_replicas=3).bind(), start_timeout_s=START_TIMEOUT_S):
            return {"refused": False}
    except sk.errors.DeploymentStartError as exc:
        return {"refused": True, "error_type": type(exc).__name__, "message": str(exc)}


def placement_checks() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with env_var("SERVEKIT_GPUS", None):
        results["process_detected"] = placement_run("process x2, gpus=0.5, detected", GpuProbe.bind(), 2)
    # Whether servekit made a CUDA context in the server for replicas that run in workers
    # (nothing in this script has touched CUDA in this process yet).
    results["server_cuda_initialized_after_process_replicas"] = bool(torch.cuda.is_initialized())
    print(
        "\n== server process has a CUDA context:", results["server_cuda_initialized_after_process_replicas"]
    )
    with env_var("SERVEKIT_GPUS", "0"):
        results["process_servekit_gpus_0"] = placement_run(
            "process x2, gpus=0.5, SERVEKIT_GPUS=0", GpuProbe.bind(), 2
        )
    in_process = GpuProbe.options(isolation="in_process", num_replicas=1)
    with env_var("SERVEKIT_GPUS", None):
        results["in_process_detected"] = placement_run(
            "in-process x1, gpus=0.5, detected", in_process.bind(), 1
        )
        results["oversubscribed_3x0.5"] = oversubscription()
    print("\n== 3 x 0.5 GPU on one GPU:", json.dumps(results["oversubscribed_3x0.5"], indent=1))
    return results


# -- CUDA tensors across the process boundary ---------------------------------------------------


def _outcome(response: Any) -> str:
    try:
        return repr(response.result(timeout=60))[:200]
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"


def _crossing(deployment: sk.Deployment, label: str) -> dict[str, Any]:
    """Send a CUDA tensor to a process replica while 3 other calls are in flight on it; then
    ask it for a CUDA tensor. Record what arrives, what the bystanders get, and restarts."""
    with sk.run(deployment.bind(), start_timeout_s=START_TIMEOUT_S) as handle:
        status = handle.status()["deployments"][deployment.name]["replicas"][0]
        bystanders = [handle.slow(1.0) for _ in range(3)]
        time.sleep(0.2)
        result: dict[str, Any] = {
            "label": label,
            "replica": {k: status.get(k) for k in ("id", "device", "gpu_ids", "pid")},
            "cuda_tensor_argument": _outcome(handle.describe(torch.ones(2, device="cuda:0"))),
            "bystanders": [_outcome(call) for call in bystanders],
        }
        result["cuda_tensor_reply"] = _outcome(handle.cuda_tensor())
        time.sleep(1.0)
        result["restarts"] = handle.status()["deployments"][deployment.name].get("restarts")
    print(f"\n== CUDA tensors, {label}:", json.dumps(result, indent=1))
    return result


def cuda_tensor_checks() -> dict[str, Any]:
    gpu = GpuProbe.options(num_replicas=1, max_ongoing_requests=16)
    cpu = GpuProbe.options(num_replicas=1, max_ongoing_requests=16, resources=sk.Resources(gpus=0))
    return {
        "gpu_replica": _crossing(gpu, "process replica with gpus=0.5"),
        "cpu_replica": _crossing(cpu, "process replica with gpus=0 (CUDA_VISIBLE_DEVICES='')"),
    }


# -- throughput ---------------------------------------------------------------------------------


def gc_freeze_and_disable() -> None:
    """Move every object to the permanent generation and stop the cyclic GC (see --gc-off)."""
    gc.collect()
    gc.freeze()
    gc.disable()


def build_mlp(device: str) -> Any:
    torch.manual_seed(0)
    layers = [
        torch.nn.Linear(IN_DIM, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, OUT_DIM),
    ]
    return torch.nn.Sequential(*layers).to(device=device, dtype=torch.float16).eval()


@sk.deployment(resources=sk.Resources(gpus=1), max_ongoing_requests=1024)
class Mlp:
    """fp16 MLP 1024-4096-4096-1024 on the replica's GPU; CPU float tensors in, argmax out."""

    def __init__(self, gc_off: bool = False) -> None:
        self.device = sk.replica_context().device
        self.model = build_mlp(self.device)
        self.forward([torch.zeros(IN_DIM)] * MAX_BATCH)  # cuBLAS handles and kernels
        if gc_off:
            gc_freeze_and_disable()

    def forward(self, xs: list[Any]) -> list[int]:
        with torch.inference_mode():
            x = torch.stack(xs).to(self.device).half()
            return self.model(x).argmax(dim=1).tolist()

    @sk.batch(max_batch_size=MAX_BATCH, max_wait_ms=MAX_WAIT_MS)
    async def predict(self, xs: list[Any]) -> list[int]:
        return self.forward(xs)

    async def predict_one(self, x: Any) -> int:
        return self.forward([x])[0]

    def info(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "cpu"
        return {"pid": os.getpid(), "device": self.device, "name": name}

    def ceiling(self, batch: int, iters: int) -> dict[str, float]:
        """Items/s of `forward` alone on this replica (stack, H2D copy, MLP, argmax, .tolist())."""
        xs = list(torch.randn(batch, IN_DIM).unbind(0))
        for _ in range(10):
            self.forward(xs)
        started = time.perf_counter()
        for _ in range(iters):
            self.forward(xs)
        elapsed = time.perf_counter() - started
        return {"batch": batch, "items_per_s": batch * iters / elapsed, "ms_per_batch": elapsed / iters * 1e3}


async def closed_loop(
    call: Callable[[Any], Awaitable[Any]], inputs: list[Any], calls: int, concurrency: int
) -> dict[str, Any]:
    """`concurrency` callers, each awaiting one call after another, `calls` calls in all."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < calls:
            x = inputs[issued % len(inputs)]
            issued += 1
            started = time.perf_counter()
            try:
                await call(x)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - started, "latencies": latencies, "errors": errors}


def make_inputs(count: int = 256) -> list[Any]:
    generator = torch.Generator().manual_seed(1)
    return list(torch.randn(count, IN_DIM, generator=generator).unbind(0))


@sk.deployment
class Driver:
    """An in-process ingress that drives the model from the runtime's own loop."""

    def __init__(self, model: sk.DeploymentHandle) -> None:
        self.model = model
        self.inputs = make_inputs()

    async def load(self, method: str, calls: int, concurrency: int) -> dict[str, Any]:
        call = getattr(self.model, method)
        return await closed_loop(call, self.inputs, calls, concurrency)


def batch_totals(handle: sk.AppHandle) -> tuple[int, int]:
    """(items, batches) of Mlp.predict over all replicas, process replicas refreshed first."""
    running = handle._running
    running.thread.run(running.runtime.refresh_stats())
    items = batches = 0
    for replica in handle.status()["deployments"]["Mlp"]["replicas"]:
        stats = (replica.get("batching") or {}).get("predict") or {}
        items += stats.get("items", 0)
        batches += stats.get("batches", 0)
    return items, batches


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def load_once(handle: sk.AppHandle, method: str, client: str, calls: int, concurrency: int) -> dict[str, Any]:
    if client == "in_app":
        return handle.load(method, calls, concurrency).result(timeout=600)
    model = handle.get_handle("Mlp")
    inputs = make_inputs()
    return asyncio.run(closed_loop(getattr(model, method), inputs, calls, concurrency))


def measure(handle: sk.AppHandle, method: str, client: str, args: argparse.Namespace) -> dict[str, Any]:
    load_once(handle, method, client, args.warmup, args.concurrency)
    items_before, batches_before = batch_totals(handle)
    run = load_once(handle, method, client, args.calls, args.concurrency)
    items_after, batches_after = batch_totals(handle)
    latencies = sorted(run["latencies"])
    batches = batches_after - batches_before
    result = {
        "method": method,
        "client": client,
        "calls": args.calls,
        "concurrency": args.concurrency,
        "ok": len(latencies),
        "errors": len(run["errors"]),
        "first_error": run["errors"][0] if run["errors"] else None,
        "items_per_s": round(len(latencies) / run["wall_s"], 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 2),
        "p999_ms": round(percentile(latencies, 0.999) * 1e3, 2),
        "max_ms": round(latencies[-1] * 1e3, 2) if latencies else None,
        "mean_batch": round((items_after - items_before) / batches, 2) if batches else None,
        "batches": batches,
    }
    print(
        f"  {method:11s} client={client:8s} {result['items_per_s']:9.0f} items/s  "
        f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
        f"mean batch {result['mean_batch']}  errors {result['errors']}",
        flush=True,
    )
    return result


def throughput(isolation: str, args: argparse.Namespace) -> dict[str, Any]:
    app = Driver.bind(Mlp.options(isolation=isolation).bind(args.gc_off))
    started = time.perf_counter()
    with sk.run(app, start_timeout_s=START_TIMEOUT_S) as handle:
        model = handle.get_handle("Mlp")
        info = model.info().result(timeout=60)
        ready_s = time.perf_counter() - started
        print(f"\n== throughput: Mlp isolation={isolation}, {info} (ready in {ready_s:.1f} s)", flush=True)
        ceilings = [
            model.ceiling(batch, iters).result(timeout=300) for batch, iters in ((1, 1000), (64, 300))
        ]
        for ceiling in ceilings:
            print(
                f"  model alone, batch {ceiling['batch']:2d}: {ceiling['items_per_s']:9.0f} items/s "
                f"({ceiling['ms_per_batch']:.3f} ms per batch)"
            )
        runs = [
            {**measure(handle, method, client, args), "round": round_index}
            for round_index in range(args.rounds)
            for method in ("predict", "predict_one")
            for client in ("external", "in_app")
        ]
    return {
        "isolation": isolation,
        "replica": info,
        "ready_s": round(ready_s, 2),
        "ceilings": ceilings,
        "runs": runs,
    }


# -- main ---------------------------------------------------------------------------------------


def _command_output(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "servekit": sk.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": _command_output(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        ),
        "argv": sys.argv,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="measured calls per point")
    parser.add_argument("--warmup", type=int, default=2000, help="warm-up calls per point")
    parser.add_argument("--concurrency", type=int, default=256, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=2, help="measure every point this many times")
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="gc.freeze() + gc.disable() in this process and in the model replicas (tail-latency probe)",
    )
    parser.add_argument("--skip-placement", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", help="write all results to this JSON file")
    return parser.parse_args(argv)


def _section(results: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    try:
        results[name] = work()
    except Exception:
        text = traceback.format_exc()
        print(f"\n!! {name} failed:\n{text}", flush=True)
        results[name] = {"error": text}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch is None or not torch.cuda.is_available():
        reason = (
            "torch is not installed" if torch is None else f"torch {torch.__version__} sees no CUDA device"
        )
        print(f"gpu_check: {reason}; nothing to check on this machine.")
        return 0
    results: dict[str, Any] = {"environment": environment()}
    print(json.dumps(results["environment"], indent=1), flush=True)
    if not args.skip_placement:
        _section(results, "placement", placement_checks)
    if not args.skip_placement:
        _section(results, "cuda_tensors", cuda_tensor_checks)
    if not args.skip_throughput:
        if args.gc_off:
            gc_freeze_and_disable()
        for isolation in ("in_process", "process"):
            _section(
                results, f"throughput_{isolation}", lambda isolation=isolation: throughput(isolation, args)
            )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1, default=str)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
