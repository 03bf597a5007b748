"""The deployment files a bundle carries, as text: `Dockerfile`, `.dockerignore`, Ray Serve's
`ray/serve_config.yaml` and KubeRay's `k8s/rayservice.yaml`.

Pure functions: the bundle's name, Python version, per-deployment Ray options (from the Ray
backend's own option mapping) and resources in, file text out (YAML with sorted keys, so the
same inputs give the same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

BUNDLE_DIR = "/bundle"
"""Where the bundle lies in the image (and so on every node of a KubeRay cluster)."""
RAY_ENTRYPOINT = "servekit._cli.bundle_app:build"
"""Ray Serve's import path: an application builder that serves the bundle in its working_dir."""
HTTP_PORT = 8000
CUDA_BASE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
RAY_IMAGE = "rayproject/ray:2.60.0-py{py}{cuda}"


@dataclass(frozen=True)
class DeploymentPlan:
    """What the deployment files need to know of one deployment."""

    replicas: int
    """Replicas at most (autoscaling's max_replicas, else num_replicas)."""
    cpus: float
    gpus: float
    ray_options: Mapping[str, Any]
    """The deployment's options in Ray Serve's names (`servekit._runtime.ray.options`)."""


def uses_gpus(plans: Mapping[str, DeploymentPlan]) -> bool:
    """Whether any deployment asks for GPUs."""
    return any(plan.gpus > 0 for plan in plans.values())


def dockerfile(python: str, servekit_version: str, gpus: bool) -> str:
    """A Dockerfile that installs the lock, then servekit, then copies the bundle and serves it.

    The lock layer comes before the code, so a code change does not reinstall dependencies.
    """
    if gpus:
        base = [
            f"FROM {CUDA_BASE}",
            "ENV DEBIAN_FRONTEND=noninteractive",
            "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \\",
            "    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv",
        ]
    else:
        base = [
            f"FROM python:{python}-slim",
            "RUN python -m venv /opt/venv",
        ]
    lines = [
        "# Built by `servekit build`: the bundle served by `servekit serve /bundle`.",
        *base,
        'ENV PATH="/opt/venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1',
        "RUN useradd --create-home --uid 10001 servekit",
        "WORKDIR /bundle",
        "# dependencies first: this layer is reused until requirements.lock changes",
        "COPY requirements.lock /bundle/requirements.lock",
        "RUN pip install --no-cache-dir --require-hashes -r /bundle/requirements.lock",
        "# servekit itself (its dependencies are in the lock); pass a wheel or a VCS URL if needed",
        f"ARG SERVEKIT_SPEC=servekit=={servekit_version}",
        'RUN pip install --no-cache-dir --no-deps "$SERVEKIT_SPEC"',
        "COPY --chown=servekit:servekit . /bundle",
        "USER servekit",
        f"EXPOSE {HTTP_PORT}",
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\",
        '  CMD python -c "import urllib.request,sys; '
        f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/readyz').status != 200)\"",
        f'CMD ["servekit", "serve", "/bundle", "--host", "0.0.0.0", "--port", "{HTTP_PORT}"]',
        "",
    ]
    return "\n".join(lines)


def dockerignore() -> str:
    """What `docker build` leaves out of the context: the build's own debris."""
    return "\n".join(["**/__pycache__", "**/*.pyc", ".git", ".servekit", "*.tar.gz", ""])


def serve_config(
    name: str, plans: Mapping[str, DeploymentPlan], working_dir: str = BUNDLE_DIR
) -> dict[str, Any]:
    """Ray Serve's deploy config for the bundle at `working_dir` on every node."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "applications": [
            {
                "name": name,
                "route_prefix": "/",
                "import_path": RAY_ENTRYPOINT,
                "args": {},
                "runtime_env": {"working_dir": f"local://{working_dir}"},
                "deployments": [dict(plan.ray_options) for plan in plans.values()],
            }
        ],
    }


def rayservice(
    name: str, image: str, config: Mapping[str, Any], plans: Mapping[str, DeploymentPlan]
) -> dict[str, Any]:
    """A KubeRay `RayService` running `config` (as `serveConfigV2`) on `image`, with a CPU worker
    group and, when a deployment asks for GPUs, a GPU worker group, each sized to the replicas."""
    cpu_replicas = [plan for plan in plans.values() if plan.gpus == 0]
    gpu_replicas = [plan for plan in plans.values() if plan.gpus > 0]
    groups = []
    if cpu_replicas:
        cpus = sum(plan.replicas * plan.cpus for plan in cpu_replicas)
        groups.append(_worker_group("cpu", image, cpus_per_pod=4, gpus_per_pod=0, cpus=cpus, gpus=0))
    if gpu_replicas:
        gpus = sum(plan.replicas * plan.gpus for plan in gpu_replicas)
        cpus = sum(plan.replicas * plan.cpus for plan in gpu_replicas)
        groups.append(_worker_group("gpu", image, cpus_per_pod=8, gpus_per_pod=1, cpus=cpus, gpus=gpus))
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml_text(config),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod(image, "ray-head", cpus=2, gpus=0, memory="4Gi"),
                },
                "workerGroupSpecs": groups,
            },
        },
    }


def _worker_group(
    kind: str, image: str, *, cpus_per_pod: int, gpus_per_pod: int, cpus: float, gpus: float
) -> dict[str, Any]:
    pods = max(1, math.ceil(gpus / gpus_per_pod) if gpus_per_pod else math.ceil(cpus / cpus_per_pod))
    return {
        "groupName": f"{kind}-workers",
        "replicas": pods,
        "minReplicas": pods,
        "maxReplicas": pods,
        "rayStartParams": {},
        "template": _pod(
            image, "ray-worker", cpus=cpus_per_pod, gpus=gpus_per_pod, memory=f"{4 * cpus_per_pod}Gi"
        ),
    }


def _pod(image: str, container: str, *, cpus: int, gpus: int, memory: str) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": image,
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                }
            ]
        }
    }


def yaml_text(document: Mapping[str, Any]) -> str:
    """`document` as YAML with sorted keys (stable bytes)."""
    return yaml.safe_dump(dict(document), sort_keys=True, default_flow_style=False)
