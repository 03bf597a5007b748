"""Batch scoring on Ray Data: `map_batches` with the ingress deployment's class as an actor pool.

The input is read with Ray Data (any path it reads: local, s3://, gs://...), each actor builds
one instance of the ingress class (as a servekit replica, so `@sk.batch`, sync threads and
`replica_context()` behave as when serving), and the output is written with Ray Data as a folder
of part files. Actors ask for the deployment's `num_cpus`/`num_gpus`; the pool's size is
`replicas` when given, else the deployment's `num_replicas` (its autoscaling maximum if any).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
from ray import cloudpickle as ray_cloudpickle

from servekit._replica.context import ReplicaContext
from servekit._replica.replica import Replica
from servekit._runtime.batch.calls import CallPlan, output_row
from servekit._runtime.batch.inputs import input_format
from servekit._runtime.batch.outputs import output_format
from servekit._runtime.loop_thread import LoopThread
from servekit._runtime.ray.ship import by_value, user_modules
from servekit._spec.graph import AppGraph, DeploymentNode
from servekit.errors import DeploymentOptionError

if TYPE_CHECKING:
    from servekit._runtime.batch.runner import BatchJob, BatchReport


class RowScorer:
    """One Ray Data actor: a replica of the ingress class scoring whole batches of rows."""

    def __init__(self, blob: bytes, gpus: float) -> None:
        node, self.plan = cloudpickle.loads(blob)
        self.thread = LoopThread(f"servekit-batch-{node.name}")
        context = ReplicaContext(node.name, f"{node.name}#batch", "cuda:0" if gpus > 0 else "cpu")
        config = node.deployment.config
        self.replica = Replica(
            context, node.deployment.target, node.deployment.is_function, None, config.batching
        )
        self.thread.run(self.replica.start(node.init_args, node.init_kwargs))

    def __call__(self, batch: Any) -> Any:
        import pandas as pd  # type: ignore[import-untyped]  # noqa: PLC0415 (Ray Data needs it)

        rows = batch.to_dict("records")
        return pd.DataFrame(self.thread.run(self._all(rows)))

    async def _all(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._one(row) for row in rows)))

    async def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await self.replica.call(self.plan.method, (), self.plan.arguments(row))
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        scored = output_row(0, result)
        del scored["row"]
        return {**scored, "error": None}


def score_dataset(graph: AppGraph, job: BatchJob, address: str | None) -> BatchReport:
    """Score `job.input` into the folder `job.output` on Ray Data; returns the run's report."""
    import ray  # noqa: PLC0415
    import ray.data  # noqa: PLC0415

    from servekit._runtime.batch.runner import BatchReport  # noqa: PLC0415 (the runner imports the registry)

    node = graph.ingress_node
    if node.dependencies:
        raise DeploymentOptionError(
            f"--backend ray scores with the ingress class alone; {node.name} calls {list(node.dependencies)} "
            "through handles: score that deployment's app, or use the local backend"
        )
    started = time.monotonic()
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address=address, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = job.progress
        dataset = _read(str(job.input))
        config = node.deployment.config
        pool = job.replicas if job.replicas > 1 else _pool_size(config)
        scored = dataset.map_batches(
            RowScorer,
            fn_constructor_args=(_pack(node, job.plan), config.resources.gpus),
            batch_size=job.batch_size,
            batch_format="pandas",
            concurrency=pool,
            num_cpus=config.resources.cpus,
            num_gpus=config.resources.gpus,
        )
        _write(scored, str(job.output))
        written = ray.data.read_parquet(str(job.output)) if output_format(job.output) == "parquet" else None
        rows = written.count() if written is not None else dataset.count()
    finally:
        if own_ray:
            ray.shutdown()
    return BatchReport(str(job.output), "(the error column)", rows, rows, 0, 0, time.monotonic() - started)


def _pack(node: DeploymentNode, plan: CallPlan) -> bytes:
    """The ingress node and the call plan, with the user's modules pickled by value (as for Serve)."""
    with by_value(ray_cloudpickle, user_modules([node])):
        blob: bytes = ray_cloudpickle.dumps((node, plan))  # type: ignore[no-untyped-call]
    return blob


def _pool_size(config: Any) -> int:
    autoscaling = config.autoscaling
    return int(autoscaling.max_replicas if autoscaling is not None else config.num_replicas)


def _read(path: str) -> Any:
    import ray.data  # noqa: PLC0415

    kind = input_format(Path(path)) if "://" not in path else Path(path).suffix.lstrip(".")
    if kind == "parquet":
        return ray.data.read_parquet(path)
    if kind == "csv":
        return ray.data.read_csv(path)
    return ray.data.read_json(path, lines=True)


def _write(dataset: Any, path: str) -> None:
    if output_format(Path(path)) == "parquet":
        dataset.write_parquet(path)
    else:
        dataset.write_json(path)
