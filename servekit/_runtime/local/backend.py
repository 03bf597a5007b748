"""The local backend: `LocalRuntime` on this machine; cluster-only options are refused here."""

from __future__ import annotations

import os

from servekit._runtime.interface import HttpIngress
from servekit._runtime.local.runtime import LocalRuntime
from servekit._runtime.options import RunOptions
from servekit._spec.graph import AppGraph
from servekit._telemetry.tracing import tracing_settings
from servekit.errors import DeploymentOptionError


class LocalBackend:
    """Runs apps on this machine; the HTTP edge serves them from uvicorn on the runtime's loop."""

    serves_http = False

    def make(self, graph: AppGraph, options: RunOptions, http: HttpIngress | None = None) -> LocalRuntime:
        """A `LocalRuntime` for `graph`; cluster-only options are refused, saying what they are for."""
        if options.address is not None:
            raise DeploymentOptionError(
                f"address={options.address!r} is for the Ray backend; "
                "pass backend='ray' (--backend ray) with it"
            )
        if options.wait_for_nodes:
            raise DeploymentOptionError(
                "wait_for_nodes is for the Ray backend (nodes joining a cluster); the local backend "
                "has this machine only"
            )
        in_process = [graph.ingress] if http is not None and http.ingress_in_process else []
        return LocalRuntime(
            graph,
            isolation=options.isolation,
            gpus=options.gpus,
            in_process_only=in_process,
            start_timeout_s=options.start_timeout_s,
            tracing=tracing_settings(options.tracing, graph.ingress, os.environ),
            log_format=options.log_format,
        )


BACKEND = LocalBackend()
