"""servekit options -> Ray Serve options: the mapping, what Ray cannot honour, fitting a cluster.

`servekit._runtime.ray.options` imports no Ray, so these run without it (the unit conftest
makes `import ray` fail).
"""

from __future__ import annotations

from typing import Any

import pytest

import servekit as sk
from servekit._runtime.ray.options import (
    INGRESS_HEADROOM,
    RAY_POLICY,
    check_fits,
    code_version,
    decode_policy,
    demand,
    deployment_options,
    total_cpus,
)
from servekit._spec.graph import AppGraph, DeploymentNode, build_graph
from servekit.errors import DeploymentOptionError, InsufficientResourcesError


class Model:
    def predict(self, x: int) -> int:
        return x


def node(**options: Any) -> DeploymentNode:
    return build_graph(sk.deployment(**options)(Model).bind()).ingress_node


def graph(**deployments: dict[str, Any]) -> AppGraph:
    nodes = {
        name: build_graph(sk.deployment(name=name, **options)(Model).bind()).ingress_node
        for name, options in deployments.items()
    }
    return AppGraph(next(iter(nodes)), nodes)


def test_resources_map_to_ray_actor_options() -> None:
    resources = sk.Resources(cpus=2, gpus=0.5, memory="2GiB", accelerator_type="A100", custom={"TPU": 1})
    options = deployment_options(node(resources=resources), ingress=False)
    assert options["ray_actor_options"] == {
        "num_cpus": 2.0,
        "num_gpus": 0.5,
        "memory": 2 * 2**30,
        "accelerator_type": "A100",
        "resources": {"TPU": 1.0},
    }


def test_replicas_limits_health_and_shutdown_carry_over() -> None:
    options = deployment_options(
        node(
            name="M",
            num_replicas=3,
            max_ongoing_requests=7,
            max_queued_requests=11,
            health_check_period_s=2,
            health_check_timeout_s=4,
            graceful_shutdown_timeout_s=9,
        ),
        ingress=False,
    )
    assert options["name"] == "M"
    assert options["num_replicas"] == 3
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (7, 11)
    assert (options["health_check_period_s"], options["health_check_timeout_s"]) == (2, 4)
    assert options["graceful_shutdown_timeout_s"] == 9
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}
    assert "autoscaling_config" not in options


def test_the_ingress_admits_itself_so_ray_lets_more_through() -> None:
    options = deployment_options(node(max_ongoing_requests=2, max_queued_requests=0), ingress=True)
    assert options["max_ongoing_requests"] == 2 + INGRESS_HEADROOM
    assert options["max_queued_requests"] >= options["max_ongoing_requests"]


def test_autoscaling_maps_to_ray_fields_and_ongoing_requests_is_rays_own_policy() -> None:
    autoscaling = sk.Autoscaling(
        min_replicas=0,
        max_replicas=5,
        initial_replicas=2,
        target_ongoing_requests=3,
        upscale_delay_s=1,
        downscale_delay_s=4,
        downscale_to_zero_delay_s=60,
        smoothing_factor=0.5,
        metrics_interval_s=0.5,
        look_back_period_s=3,
    )
    options = deployment_options(node(autoscaling=autoscaling), ingress=False)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 5,
        "initial_replicas": 2,
        "target_ongoing_requests": 3.0,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 4.0,
        "downscale_to_zero_delay_s": 60.0,
        "upscaling_factor": 0.5,
        "downscaling_factor": 0.5,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 3.0,
    }


def policy_for_test(inputs: Any) -> float:
    return 4.0


@pytest.mark.parametrize("policy", ["queue_depth", policy_for_test, "test_ray_options:policy_for_test"])
def test_servekit_policies_run_as_a_ray_custom_policy(policy: Any) -> None:
    autoscaling = sk.Autoscaling(max_replicas=4, policy=policy)
    config = deployment_options(node(autoscaling=autoscaling, max_ongoing_requests=8), ingress=False)[
        "autoscaling_config"
    ]
    assert config["policy"]["policy_function"] == RAY_POLICY
    decoded, max_ongoing = decode_policy(config["policy"]["policy_kwargs"]["spec"])
    assert decoded == autoscaling
    assert max_ongoing == 8


def test_explicit_in_process_isolation_is_refused_naming_the_reason() -> None:
    with pytest.raises(DeploymentOptionError, match=r"isolation='in_process'.*actor process"):
        deployment_options(node(name="Pinned", isolation="in_process"), ingress=False)
    assert deployment_options(node(isolation="process"), ingress=False)["name"] == "Model"


def test_no_queue_off_the_ingress_is_refused_but_fine_on_the_ingress() -> None:
    with pytest.raises(DeploymentOptionError, match=r"max_queued_requests=0.*Ray Serve queues at least one"):
        deployment_options(node(max_queued_requests=0), ingress=False)
    assert deployment_options(node(max_queued_requests=0), ingress=True)["max_queued_requests"] >= 1


def test_the_code_version_ignores_options_ray_updates_in_place() -> None:
    base = code_version(node(num_replicas=1))
    assert code_version(node(num_replicas=4, max_ongoing_requests=3)) == base
    assert code_version(node(autoscaling=sk.Autoscaling(max_replicas=3))) == base
    assert code_version(node(version="v2")) != base
    assert code_version(node(resources=sk.Resources(gpus=1))) != base
    assert code_version(node(request_timeout_s=5)) != base


def test_demand_at_start_and_at_most() -> None:
    app = graph(
        A={"num_replicas": 2, "resources": sk.Resources(cpus=1.5)},
        B={"autoscaling": sk.Autoscaling(min_replicas=1, max_replicas=4)},
    )
    assert {name: replicas for name, (replicas, _) in demand(app).items()} == {"A": 2, "B": 1}
    at_most = demand(app, at_most=True)
    assert {name: replicas for name, (replicas, _) in at_most.items()} == {"A": 2, "B": 4}
    assert total_cpus(at_most) == 7


HEAD = {"CPU": 4.0, "memory": 8.0 * 2**30}
GPU_NODE = {"CPU": 2.0, "GPU": 2.0, "accelerator_type:A100": 1.0}


def test_replicas_that_fit_the_nodes_pass() -> None:
    demands = {
        "whole": (1, sk.Resources(cpus=0.5, gpus=1)),
        "halves": (2, sk.Resources(cpus=0.5, gpus=0.5, accelerator_type="A100")),
        "cpu": (4, sk.Resources(cpus=1)),
    }
    check_fits(demands, [HEAD, GPU_NODE])


def test_a_replica_no_node_can_hold_fails_listing_demand_and_nodes() -> None:
    demands = {"big": (1, sk.Resources(gpus=4)), "cpu": (1, sk.Resources())}
    with pytest.raises(InsufficientResourcesError) as caught:
        check_fits(demands, [HEAD, GPU_NODE])
    message = str(caught.value)
    assert "no node has room for a replica of 'big'" in message
    assert "big: 1 x CPU 1, GPU 4" in message
    assert "node 1: CPU 2, GPU 2, accelerator_type:A100" in message


def test_replicas_that_fit_alone_but_not_together_fail() -> None:
    with pytest.raises(InsufficientResourcesError, match="'gpu'"):
        check_fits({"gpu": (3, sk.Resources(cpus=0, gpus=1))}, [HEAD, GPU_NODE])


def test_custom_resources_and_accelerator_types_must_exist_on_a_node() -> None:
    with pytest.raises(InsufficientResourcesError, match="TPU"):
        check_fits({"tpu": (1, sk.Resources(custom={"TPU": 1}))}, [HEAD, GPU_NODE])
    with pytest.raises(InsufficientResourcesError, match="accelerator_type:H100"):
        check_fits({"h100": (1, sk.Resources(gpus=1, accelerator_type="H100"))}, [HEAD, GPU_NODE])
