"""How servekit's options become Ray Serve's: one pure function per concept, no Ray import.

| servekit | Ray Serve |
| --- | --- |
| `name` | deployment `name` (the node's unique name in the graph) |
| `num_replicas` | `num_replicas` |
| `resources.cpus` / `gpus` / `memory` | `ray_actor_options.num_cpus` / `num_gpus` / `memory` |
| `resources.accelerator_type` | `ray_actor_options.accelerator_type` |
| `resources.custom` | `ray_actor_options.resources` |
| `max_ongoing_requests` | `max_ongoing_requests` (the ingress: see `ingress_admission`) |
| `max_queued_requests` | `max_queued_requests` (queued per caller; must be >= 1 off the ingress) |
| `autoscaling` | `autoscaling_config`; policies other than 'ongoing_requests' run as a Ray custom policy |
| `health_check_period_s` / `health_check_timeout_s` | the same names |
| `graceful_shutdown_timeout_s` | the same name |
| `request_timeout_s` | enforced by servekit's callers and replica wrapper (Ray has none per deployment) |
| `version` | part of the code version Ray compares to roll replicas; shown in status |
| `isolation` | every Ray replica is an actor process: 'process' holds, 'in_process' is refused |
| `batching` | `user_config` (`{"batching": {...}}`): Ray calls the replica's `reconfigure`, in place |
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import cloudpickle

from servekit._runtime.fingerprint import fingerprint
from servekit._spec.config import Autoscaling, BatchOptions, DeploymentConfig, Resources
from servekit._spec.graph import AppGraph, DeploymentNode
from servekit.errors import DeploymentOptionError, InsufficientResourcesError

UPDATED_IN_PLACE = (
    "num_replicas",
    "autoscaling",
    "max_ongoing_requests",
    "max_queued_requests",
    "health_check_period_s",
    "health_check_timeout_s",
    "graceful_shutdown_timeout_s",
    "batching",
)
"""Options Ray Serve changes on running replicas; a change to any other one rolls them."""

RAY_POLICY = "servekit._runtime.ray.autoscaling:ServekitPolicy"
"""Where Ray's controller finds the adapter that runs servekit's own autoscaling policies."""

INGRESS_HEADROOM = 64
"""Requests Ray lets reach the ingress beyond what servekit admits there: they are refused
(503) or served by a built-in route (`/healthz`, `/-/status`) at once."""

RETRY_AFTER_S = 1.0
"""Retry-After of a request Ray itself refuses for backpressure (servekit's refusals say the same)."""


def deployment_options(node: DeploymentNode, *, ingress: bool, access_log: bool = False) -> dict[str, Any]:
    """Keyword arguments for Ray's `Deployment.options(...)` that carry `node`'s servekit options.

    Raises `DeploymentOptionError` for an option Ray cannot honour, saying why.
    """
    config = node.deployment.config
    _refuse_in_process(node.name, config)
    max_ongoing, max_queued = (
        ingress_admission(config) if ingress else (config.max_ongoing_requests, _ray_queue(node.name, config))
    )
    options: dict[str, Any] = {
        "name": node.name,
        "ray_actor_options": actor_options(config.resources),
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": max_queued,
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        "health_check_period_s": config.health_check_period_s,
        "health_check_timeout_s": config.health_check_timeout_s,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "logging_config": {"enable_access_log": access_log},
        "user_config": user_config(config),
    }
    if config.autoscaling is None:
        options["num_replicas"] = config.num_replicas
    else:
        options["autoscaling_config"] = autoscaling_config(config.autoscaling, config.max_ongoing_requests)
    return options


def user_config(config: DeploymentConfig) -> dict[str, Any]:
    """Ray's `user_config` (JSON): the options a replica's `reconfigure` applies in place."""
    return {"batching": {method: options.overrides() for method, options in config.batching.items()}}


def batching_options(user_config: Mapping[str, Any]) -> dict[str, BatchOptions]:
    """The inverse of `user_config`: the per-method batch options a replica gets from Ray."""
    return {method: BatchOptions(**options) for method, options in user_config.get("batching", {}).items()}


def actor_options(resources: Resources) -> dict[str, Any]:
    """`ray_actor_options` for one replica's resources."""
    actor: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
    if resources.memory is not None:
        actor["memory"] = resources.memory
    if resources.accelerator_type is not None:
        actor["accelerator_type"] = resources.accelerator_type
    if resources.custom:
        actor["resources"] = dict(resources.custom)
    return actor


def ingress_admission(config: DeploymentConfig) -> tuple[int, int]:
    """Ray's (max_ongoing_requests, max_queued_requests) for the ingress.

    The ingress replica admits requests itself (servekit's limit and bounded queue, so an
    overload gets servekit's JSON 503 and the built-in routes stay reachable), so Ray lets
    through that many plus `INGRESS_HEADROOM` (refusals and health checks are quick), and keeps
    a backstop queue of its own for bursts beyond even that.
    """
    admitted = config.max_ongoing_requests + config.max_queued_requests
    ray_ongoing = admitted + INGRESS_HEADROOM
    return ray_ongoing, 4 * ray_ongoing


def autoscaling_config(autoscaling: Autoscaling, max_ongoing_requests: int) -> dict[str, Any]:
    """Ray's `autoscaling_config` for servekit's `Autoscaling`.

    Ray applies the bounds, smoothing and delays around any policy, as servekit does;
    'ongoing_requests' is Ray's own default policy, and the others (queue depth, latency, a
    user's function) run servekit's policy code inside Ray's controller.
    """
    config: dict[str, Any] = {
        "min_replicas": autoscaling.min_replicas,
        "max_replicas": autoscaling.max_replicas,
        "target_ongoing_requests": autoscaling.target_ongoing_requests,
        "upscale_delay_s": autoscaling.upscale_delay_s,
        "downscale_delay_s": autoscaling.downscale_delay_s,
        "upscaling_factor": autoscaling.smoothing_factor,
        "downscaling_factor": autoscaling.smoothing_factor,
        "metrics_interval_s": autoscaling.metrics_interval_s,
        "look_back_period_s": autoscaling.look_back_period_s,
    }
    if autoscaling.initial_replicas is not None:
        config["initial_replicas"] = autoscaling.initial_replicas
    if autoscaling.downscale_to_zero_delay_s is not None:
        config["downscale_to_zero_delay_s"] = autoscaling.downscale_to_zero_delay_s
    if autoscaling.policy != "ongoing_requests":
        config["policy"] = {
            "policy_function": RAY_POLICY,
            "policy_kwargs": {"spec": encode_policy(autoscaling, max_ongoing_requests)},
        }
    return config


def encode_policy(autoscaling: Autoscaling, max_ongoing_requests: int) -> str:
    """`autoscaling` and the replica limit as JSON-safe text (Ray's policy kwargs must be JSON)."""
    return base64.b64encode(cloudpickle.dumps((autoscaling, max_ongoing_requests))).decode("ascii")


def decode_policy(spec: str) -> tuple[Autoscaling, int]:
    """The inverse of `encode_policy`."""
    autoscaling, max_ongoing_requests = cloudpickle.loads(base64.b64decode(spec))
    return autoscaling, max_ongoing_requests


def code_version(node: DeploymentNode) -> str:
    """The version Ray compares on a redeploy: code, arguments and the options it cannot update live."""
    return fingerprint(node, ignore=UPDATED_IN_PLACE)[:16]


def _refuse_in_process(name: str, config: DeploymentConfig) -> None:
    if "isolation" in config.model_fields_set and config.isolation == "in_process":
        raise DeploymentOptionError(
            f"deployment {name!r} sets isolation='in_process', which Ray cannot honour: every Ray "
            "Serve replica runs in an actor process of its own. Drop the option (or set "
            "isolation='process') to run it on Ray"
        )


def _ray_queue(name: str, config: DeploymentConfig) -> int:
    if config.max_queued_requests == 0:
        raise DeploymentOptionError(
            f"deployment {name!r} sets max_queued_requests=0, which Ray cannot honour: Ray Serve "
            "queues at least one request per caller before refusing (use max_queued_requests=1 "
            "or more on Ray; only the ingress, which servekit admits itself, can have 0)"
        )
    return config.max_queued_requests


# -- resources ---------------------------------------------------------------------------------


def demand(graph: AppGraph, *, at_most: bool = False) -> dict[str, tuple[int, Resources]]:
    """Each deployment's (replicas, per-replica resources): at start, or with `at_most` the most
    it may scale to."""
    demands: dict[str, tuple[int, Resources]] = {}
    for name, node in graph.nodes.items():
        config = node.deployment.config
        replicas = config.start_replicas
        if at_most and config.autoscaling is not None:
            replicas = config.autoscaling.max_replicas
        demands[name] = (replicas, config.resources)
    return demands


def total_cpus(demands: Mapping[str, tuple[int, Resources]]) -> int:
    """Whole CPUs all replicas in `demands` ask for together (to size a local Ray)."""
    return math.ceil(sum(replicas * resources.cpus for replicas, resources in demands.values()) - 1e-9)


def check_fits(demands: Mapping[str, tuple[int, Resources]], nodes: list[dict[str, float]]) -> None:
    """Raise `InsufficientResourcesError` unless every replica fits the cluster's nodes at once.

    `nodes` lists each alive node's total resources (Ray's names: CPU, GPU, memory, custom
    ones, ``accelerator_type:A100``). Replicas are placed first-fit, largest first, the way a
    scheduler could; a replica no single node can hold, or a total beyond the nodes', fails.
    """
    unfit = first_unfit(demands, nodes)
    if unfit is not None:
        raise InsufficientResourcesError(fit_message(demands, nodes, unfit))


def first_unfit(demands: Mapping[str, tuple[int, Resources]], nodes: list[dict[str, float]]) -> str | None:
    """The first deployment (largest first) with a replica that finds no room on `nodes` once the
    replicas before it are placed first-fit; None when every replica fits at once."""
    free = [dict(node) for node in nodes]
    order = sorted(demands, key=lambda name: _weight(demands[name][1]), reverse=True)
    for name in order:
        replicas, resources = demands[name]
        need = replica_needs(resources)
        for _ in range(replicas):
            host = next((node for node in free if _fits(need, node)), None)
            if host is None:
                return name
            for key, amount in need.items():
                host[key] = host.get(key, 0.0) - amount
    return None


def replica_needs(resources: Resources) -> dict[str, float]:
    """What one replica asks Ray for, in Ray's resource names (only what it needs more than 0 of)."""
    return _needs(resources)


def _needs(resources: Resources) -> dict[str, float]:
    need = {"CPU": resources.cpus, "GPU": resources.gpus, **resources.custom}
    if resources.memory is not None:
        need["memory"] = float(resources.memory)
    if resources.accelerator_type is not None:
        need[f"accelerator_type:{resources.accelerator_type}"] = 0.001
    return {key: amount for key, amount in need.items() if amount > 0}


def _fits(need: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def _weight(resources: Resources) -> tuple[float, float]:
    return (resources.gpus, resources.cpus)


def fit_message(
    demands: Mapping[str, tuple[int, Resources]], nodes: list[dict[str, float]], failed: str
) -> str:
    """Why `failed` finds no room: its replica's needs, the demand at start and the nodes."""
    need = _needs(demands[failed][1])
    lines = [f"the app does not fit the Ray cluster: no node has room for a replica of {failed!r}"]
    lines.append(f"  one replica of {failed!r} needs {_describe(need)}")
    lines.append("  demand at start:")
    for name, (replicas, resources) in demands.items():
        lines.append(f"    {name}: {replicas} x {_describe(_needs(resources)) or 'nothing'}")
    lines += describe_nodes(nodes)
    lines.append(
        "Lower the replicas or resources, add nodes (or let the cluster's autoscaler add them, or "
        "pass wait_for_nodes=True / --wait-for-nodes, and raise start_timeout_s), or declare GPUs "
        "for a local Ray with --gpus / SERVEKIT_GPUS."
    )
    return "\n".join(lines)


def describe_nodes(nodes: list[dict[str, float]]) -> list[str]:
    """Lines listing each node's total resources."""
    lines = ["  cluster nodes (total resources):"]
    lines += [f"    node {index}: {_describe(node)}" for index, node in enumerate(nodes)]
    return lines


def describe_resources(resources: Mapping[str, float]) -> str:
    """Resources in Ray's names as text, like "CPU 1, GPU 4, memory 2.0 GiB" (bookkeeping left out)."""
    return _describe(resources)


def _describe(resources: Mapping[str, float]) -> str:
    shown = []
    for key, amount in sorted(resources.items()):
        if key.startswith("node:") or key == "object_store_memory" or amount <= 0:
            continue
        if key.startswith("accelerator_type:"):
            shown.append(key)
        elif key == "memory":
            shown.append(f"memory {amount / 2**30:.1f} GiB")
        else:
            shown.append(f"{key} {amount:g}")
    return ", ".join(shown)
