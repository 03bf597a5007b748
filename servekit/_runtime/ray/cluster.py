"""`RayCluster`: servekit's connection to Ray, joined or started, and Serve's HTTP proxy on it.

- An `address` (or ``RAY_ADDRESS``): join that cluster and leave it running on exit.
- This process already joined one (`ray.init` in a notebook or a test): use it, leave it be.
- Neither: start a local Ray sized to the machine and to the app, and stop it on exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_get

from servekit._runtime.gpus import parse_gpu_ids
from servekit._runtime.interface import HttpIngress
from servekit._runtime.ray.capacity import AutoscalerView, view_from_cluster_config, view_from_v1_status
from servekit._runtime.ray.status import serve_details, serve_running
from servekit.errors import DeploymentStartError

logger = logging.getLogger("servekit.ray")

CLUSTER_CONFIG_KEY = ("__autoscaler", "__autoscaler_cluster_config")
"""(namespace, key) of the cluster config an autoscaler publishes in the GCS (Ray's
`GCS_AUTOSCALER_STATE_NAMESPACE` and `GCS_AUTOSCALER_CLUSTER_CONFIG_KEY`; what
`ray._private.state.state.get_cluster_config()` reads)."""
V1_STATUS_KEY = "__autoscaling_status"
"""Where autoscaler v1 keeps its status in Ray's KV store (what `ray status` reads)."""


class RayCluster:
    """Where the app's Ray Serve deployments run, and whether servekit owns it."""

    def __init__(self, address: str | None = None, gpus: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._gpus = gpus
        self.owned = False
        """Whether servekit started this Ray (and so stops it)."""
        self.serving = False
        """Whether Serve runs on it (`start_serve` was called)."""
        self._joined = False

    def connect(self, cpus_wanted: int) -> None:
        """Join the cluster, or start a local Ray with at least `cpus_wanted` logical CPUs."""
        if ray.is_initialized():
            return
        if self.address is not None:
            with _quiet_signal_warning():
                ray.init(address=self.address, log_to_driver=True)
            self._joined = True
            return
        cores = os.cpu_count() or 1
        num_cpus = max(cores, cpus_wanted)
        options: dict[str, Any] = {
            "address": "local",  # a new Ray of its own, never one found on this machine
            "num_cpus": num_cpus,
            "include_dashboard": False,
            "log_to_driver": True,
        }
        declared = self._declared_gpus()
        if declared is not None:
            options["num_gpus"] = len(declared)
        if num_cpus > cores:
            logger.info(
                "starting a local Ray with %d logical CPUs for the app's replicas (this machine has %d "
                "cores; CPU requests are planning figures here, as on the local runtime)",
                num_cpus,
                cores,
            )
        with _quiet_signal_warning():
            ray.init(**options)
        self.owned = self._joined = True

    def nodes(self) -> list[dict[str, float]]:
        """Each alive node's total resources."""
        return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]

    def autoscaler(self) -> AutoscalerView | None:
        """What the cluster's autoscaler says it can add; None when no autoscaler can add nodes.

        Read from the cluster config an autoscaler publishes in the GCS (its node groups and
        limits), else from autoscaler v1's status (it runs, with a node provider, but does not
        publish its node types). A record servekit cannot read counts as none.
        """
        try:
            config = _internal_kv_get(CLUSTER_CONFIG_KEY[1], namespace=CLUSTER_CONFIG_KEY[0])
            view = view_from_cluster_config(cluster_config_dict(config)) if config else None
            if view is None:
                status = _internal_kv_get(V1_STATUS_KEY)
                view = view_from_v1_status(json.loads(status), time.time()) if status else None
        except Exception:
            logger.debug("could not read the Ray autoscaler's state", exc_info=True)
            return None
        return view

    def start_serve(self, http: HttpIngress | None) -> tuple[str, int] | None:
        """Start Serve (with its proxy at `http`'s address) unless it runs; where the proxy listens."""
        running = serve_running()
        self.serving = True
        if not running:
            if http is not None:
                location = "HeadOnly" if self.owned else None
                serve.start(http_options=proxy_http_options(http), proxy_location=location)
            elif self.owned:
                serve.start(proxy_location="Disabled")
        if http is None:
            return None
        options = serve_details().get("http_options") or {}
        host, port = options.get("host"), options.get("port")
        if not host or not port:
            raise DeploymentStartError(
                "Ray Serve runs on this cluster with its HTTP proxy disabled, so the app cannot be "
                "served over HTTP there; start Serve with HTTP (serve start --http-host ...) or use "
                "servekit.run for handle calls only"
            )
        if http.ssl_certfile and options.get("ssl_certfile") != http.ssl_certfile:
            raise DeploymentStartError(
                "TLS was asked for, but Ray Serve already runs on this cluster and its proxy serves "
                f"{'another certificate' if options.get('ssl_certfile') else 'plain HTTP'}; a running "
                "proxy's TLS cannot change: start Serve with it (serve start --ssl-certfile ... "
                "--ssl-keyfile ...) or let servekit start Serve"
            )
        if running and (host, port) != (http.host, http.port):
            logger.warning(
                "Ray Serve already runs on this cluster with its proxy at %s:%s; serving the app "
                "there (a cluster's proxy address cannot change while Serve runs)",
                host,
                port,
            )
        return str(host), int(port)

    def alive(self) -> bool:
        """Whether every process of the Ray servekit started still runs (a joined cluster: assumed).

        A SIGTERM sent to the whole process group (``timeout``, systemd's default) reaches the
        Ray processes servekit started too; calls to a dead Ray would wait forever.
        """
        node = getattr(ray._private.worker, "_global_node", None)
        if not self.owned or node is None:
            return True
        return bool(node.remaining_processes_alive())

    def abandon(self) -> None:
        """Kill what is left of the Ray servekit started, after some of its processes died."""
        node = getattr(ray._private.worker, "_global_node", None)
        if self.owned and node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
        self.owned = self._joined = self.serving = False

    def close(self) -> None:
        """Stop the Ray servekit started; disconnect from a joined one, which keeps running."""
        if self.owned and self.serving and self.alive():
            serve.shutdown()  # type: ignore[no-untyped-call]
        if self._joined:
            ray.shutdown()
        self.owned = self._joined = self.serving = False

    def _declared_gpus(self) -> tuple[int, ...] | None:
        if self._gpus is not None:
            return parse_gpu_ids(self._gpus, "--gpus")
        env = os.environ.get("SERVEKIT_GPUS")
        return None if env is None else parse_gpu_ids(env, "SERVEKIT_GPUS")


def proxy_http_options(http: HttpIngress) -> dict[str, Any]:
    """Ray Serve's `http_options` for a proxy serving `http` (with TLS when it names the files)."""
    options: dict[str, Any] = {"host": http.host, "port": http.port}
    if http.ssl_certfile and http.ssl_keyfile:
        options |= {"ssl_certfile": http.ssl_certfile, "ssl_keyfile": http.ssl_keyfile}
    return options


def cluster_config_dict(serialized: bytes) -> dict[str, Any]:
    """Ray's serialized `ClusterConfig` as the plain dict `capacity.view_from_cluster_config` reads."""
    config = autoscaler_pb2.ClusterConfig.FromString(serialized)  # type: ignore[attr-defined]
    return {
        "max_resources": dict(config.max_resources),
        "node_group_configs": [
            {
                "name": group.name,
                "resources": dict(group.resources),
                "min_count": group.min_count,
                "max_count": group.max_count,
            }
            for group in config.node_group_configs
        ],
    }


@contextlib.contextmanager
def _quiet_signal_warning() -> Iterator[None]:
    """Drop Ray's warning that it set no SIGTERM handler off the main thread: servekit handles
    SIGTERM itself (draining, then deleting the app), which Ray's handler would cut short."""
    worker_logger = logging.getLogger("ray._private.worker")

    def keep(record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()

    worker_logger.addFilter(keep)
    try:
        yield
    finally:
        worker_logger.removeFilter(keep)
