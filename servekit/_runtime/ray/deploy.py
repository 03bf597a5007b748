"""Deploying a bundle to a Ray cluster: its folder uploaded as the app's runtime_env working_dir,
its Serve config applied through Serve's controller (what Ray's `serve deploy` does through the
dashboard), the other config-deployed apps left as they are.

In: the cluster's address, the verified bundle folder, the app's entry of the Serve config (its
`args.bundle` says which bundle it is). Out: whether anything changed, once the app runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from servekit._runtime.ray.cluster import _quiet_signal_warning
from servekit._runtime.ray.status import status_text
from servekit.errors import DeploymentStartError

_POLL_S = 0.5


def deploy_bundle(
    address: str, folder: Path, app: dict[str, Any], http: dict[str, Any], timeout_s: float
) -> bool:
    """Deploy `app` (a Serve config application) with `folder` as its working_dir and wait until it
    runs; False (and nothing done) when the same bundle already runs under that name."""
    os.environ.setdefault("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # every bundle file travels
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # not "connecting to existing Serve app"
    with _quiet_signal_warning():
        ray.init(
            address=address,
            runtime_env={"working_dir": str(folder)},
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        client = serve_start(http_options=http, proxy_location="EveryNode")
        applications = client.get_serve_details().get("applications", {})
        if _running(applications.get(app["name"]), app["args"]["bundle"]):
            return False
        uploaded = dict(
            app, runtime_env={"working_dir": ray.get_runtime_context().runtime_env["working_dir"]}
        )
        config = {"applications": [*_others(applications, app["name"]), uploaded]}
        client.deploy_apps(ServeDeploySchema.model_validate(config))
        _wait_running(client, app["name"], app["args"]["bundle"], timeout_s)
        return True
    finally:
        ray.shutdown()


def _others(applications: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The config of every other app, which a declarative deploy must repeat to keep them."""
    others = []
    for other, details in sorted(applications.items()):
        if other == name:
            continue
        config = details.get("deployed_app_config")
        if config is None:
            raise DeploymentStartError(
                f"Serve app {other!r} on this cluster was deployed from Python (serve.run or servekit serve "
                "--backend ray), and Ray cannot mix such apps with config-deployed ones; delete it first"
            )
        others.append(config)
    return others


def _running(details: dict[str, Any] | None, bundle: dict[str, Any]) -> bool:
    if details is None or status_text(details.get("status")) != "RUNNING":
        return False
    config = details.get("deployed_app_config") or {}
    return bool((config.get("args") or {}).get("bundle") == bundle)


def _wait_running(client: Any, name: str, bundle: dict[str, Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        details = client.get_serve_details().get("applications", {}).get(name)
        if _running(details, bundle):
            return
        if details is not None and status_text(details.get("status")) == "DEPLOY_FAILED":
            raise DeploymentStartError(f"Ray failed to deploy app {name!r}: {details.get('message')}")
        if time.monotonic() > deadline:
            state = "not there" if details is None else status_text(details.get("status"))
            raise DeploymentStartError(f"app {name!r} did not run within {timeout_s:g} s (it is {state})")
        time.sleep(_POLL_S)
