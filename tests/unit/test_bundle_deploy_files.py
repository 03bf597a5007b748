"""A bundle's deployment files: the Dockerfile's shape, the Ray config and the KubeRay RayService."""

from __future__ import annotations

import yaml

from servekit._bundle.deploy_files import (
    CUDA_BASE,
    DeploymentPlan,
    dockerfile,
    rayservice,
    serve_config,
    uses_gpus,
    yaml_text,
)

PLANS = {
    "Pre": DeploymentPlan(2, 1.0, 0.0, {"name": "Pre", "num_replicas": 2}),
    "Model": DeploymentPlan(
        3, 2.0, 1.0, {"name": "Model", "num_replicas": 3, "ray_actor_options": {"num_gpus": 1}}
    ),
}


def test_the_dockerfile_installs_the_lock_before_the_code_runs_unprivileged_and_checks_readyz() -> None:
    lines = dockerfile("3.11", "0.1.0", gpus=False).splitlines()
    assert lines[1] == "FROM python:3.11-slim"
    lock = next(i for i, line in enumerate(lines) if "--require-hashes -r /bundle/requirements.lock" in line)
    code = next(
        i for i, line in enumerate(lines) if line.startswith("COPY --chown=servekit:servekit . /bundle")
    )
    user = lines.index("USER servekit")
    assert lock < code < user
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "/readyz" in "\n".join(lines)
    assert lines[-1].startswith('CMD ["servekit", "serve", "/bundle"')


def test_a_gpu_app_gets_a_cuda_base() -> None:
    assert uses_gpus(PLANS)
    assert f"FROM {CUDA_BASE}" in dockerfile("3.11", "0.1.0", gpus=True)


def test_the_serve_config_runs_the_bundle_builder_with_each_deployment_s_ray_options() -> None:
    config = serve_config("demo", PLANS)
    (app,) = config["applications"]
    assert app["import_path"] == "servekit._cli.bundle_app:build"
    assert app["runtime_env"] == {"working_dir": "local:///bundle"}
    assert [d["name"] for d in app["deployments"]] == ["Pre", "Model"]


def test_the_rayservice_embeds_the_config_and_sizes_a_gpu_worker_group() -> None:
    config = serve_config("demo", PLANS)
    service = yaml.safe_load(yaml_text(rayservice("demo", "demo:1", config, PLANS)))
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["gpu-workers"]["replicas"] == 3  # 3 replicas x 1 GPU, one GPU per pod
    gpu_limits = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    cpu_limits = groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits
    assert service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
