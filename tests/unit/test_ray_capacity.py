"""Whether a start on Ray waits for nodes: reading what the autoscaler reports, and deciding.

The autoscaler records below are Ray 2.60's own, recorded from local clusters: autoscaler v1's
status on a plain head (its monitor only mirrors the nodes), and on a cluster with an
autoscaling config (the fake node provider) while it launched a node for a pending replica.
`servekit._runtime.ray.capacity` imports no Ray, so these run without it.
"""

from __future__ import annotations

import pytest

import servekit as sk
from servekit._runtime.ray.capacity import (
    AutoscalerView,
    NodeGroup,
    NodeWait,
    Short,
    plan_start,
    progress_line,
    timeout_message,
    view_from_cluster_config,
    view_from_v1_status,
)
from servekit.errors import InsufficientResourcesError

HEAD = {"CPU": 8.0, "memory": 32 * 2**30, "node:__internal_head__": 1.0}
GPU_NODE = {"CPU": 4.0, "GPU": 2.0}
MODEL = {"Api": (1, sk.Resources(cpus=1)), "Model": (1, sk.Resources(cpus=1, gpus=1))}

NOW = 1796187545.0
V1_PLAIN_HEAD = {  # `ray start --head` without an autoscaling config
    "time": NOW - 2,
    "monitor_pid": 5873,
    "autoscaler_report": {
        "active_nodes": {"node_1c82052979fdc533455a2cf8422d57a460700d3e2b77cd7846798e7a": 1},
        "idle_nodes": None,
        "pending_nodes": [],
        "pending_launches": {},
        "failed_nodes": [],
        "node_availability_summary": {"node_availabilities": {}},
        "node_activities": None,
        "pending_resources": {},
        "node_type_mapping": {
            "1c82052979fdc533455a2cf8422d57a460700d3e2b77cd7846798e7a": "node_1c82052979fdc533455a2cf8422d57a460700d3e2b77cd7846798e7a"
        },
        "legacy": True,
    },
}
V1_AUTOSCALING = {  # a head with an autoscaling config, launching a "late-worker" node
    "time": NOW - 1,
    "monitor_pid": 22615,
    "autoscaler_report": {
        "active_nodes": {},
        "idle_nodes": None,
        "pending_nodes": [],
        "pending_launches": {"late-worker": 1},
        "failed_nodes": [],
        "node_availability_summary": {"node_availabilities": {}},
        "node_activities": None,
        "pending_resources": {"CPU": 1, "late_node": 1},
        "node_type_mapping": {"fffffffffffffffffffffffffffffffffffffffffffffffffff00000": "ray.head.default"},
        "legacy": True,
    },
}


def cluster_config(*groups: tuple[str, dict[str, float], int], **caps: float) -> dict[str, object]:
    return {
        "max_resources": caps,
        "node_group_configs": [
            {"name": name, "resources": resources, "min_count": 0, "max_count": max_count}
            for name, resources, max_count in groups
        ],
    }


def group(name: str, resources: dict[str, float], min_count: int, max_count: int) -> dict[str, object]:
    return {"name": name, "resources": resources, "min_count": min_count, "max_count": max_count}


def autoscaler(*groups: tuple[str, dict[str, float], int], **caps: float) -> AutoscalerView:
    view = view_from_cluster_config(cluster_config(*groups, **caps))
    assert view is not None
    return view


# -- reading -----------------------------------------------------------------------------------


def test_the_cluster_config_lists_the_node_groups_that_can_grow() -> None:
    view = autoscaler(("head", {"CPU": 8}, 0), ("gpu", {"CPU": 8, "GPU": 1}, 4), ("cpu", {"CPU": 16}, -1))
    assert view.groups == (
        NodeGroup("gpu", {"CPU": 8.0, "GPU": 1.0}, 4),
        NodeGroup("cpu", {"CPU": 16.0}, None),
    )


def test_a_group_adds_at_most_its_max_less_its_min() -> None:
    view = view_from_cluster_config({"node_group_configs": [group("gpu", {"GPU": 1}, 2, 5)]})
    assert view is not None
    assert view.groups == (NodeGroup("gpu", {"GPU": 1.0}, 3),)


def test_a_cluster_config_whose_groups_cannot_grow_is_no_autoscaler() -> None:
    assert view_from_cluster_config(cluster_config(("head", {"CPU": 8}, 0))) is None
    assert view_from_cluster_config({"node_group_configs": [group("fixed", {"GPU": 1}, 2, 2)]}) is None
    assert view_from_cluster_config(cluster_config(("empty", {}, 4))) is None
    assert view_from_cluster_config({}) is None


def test_the_monitor_of_a_plain_head_is_no_autoscaler() -> None:
    assert view_from_v1_status(V1_PLAIN_HEAD, NOW) is None


def test_autoscaler_v1_with_a_node_provider_is_an_autoscaler_and_says_what_it_launches() -> None:
    view = view_from_v1_status(V1_AUTOSCALING, NOW)
    assert view is not None
    assert view.groups is None, "v1 does not publish its node types"
    assert view.launching == ("1 x late-worker",)


def test_a_stale_or_partial_v1_status_is_no_autoscaler() -> None:
    assert view_from_v1_status(V1_AUTOSCALING, NOW + 600) is None
    assert view_from_v1_status({"time": NOW}, NOW) is None


# -- deciding ------------------------------------------------------------------------------------


def test_an_app_that_fits_the_nodes_deploys_without_waiting() -> None:
    assert plan_start(MODEL, [HEAD, GPU_NODE], None, wait_for_nodes=False, timeout_s=600) is None


def test_without_an_autoscaler_or_wait_for_nodes_an_app_that_does_not_fit_fails() -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        plan_start(MODEL, [HEAD], None, wait_for_nodes=False, timeout_s=600)
    message = str(caught.value)
    assert "no node has room for a replica of 'Model'" in message
    assert "wait_for_nodes=True / --wait-for-nodes" in message


def test_wait_for_nodes_turns_the_failure_into_a_warning_and_a_wait() -> None:
    wait = plan_start(MODEL, [HEAD], None, wait_for_nodes=True, timeout_s=600)
    assert wait is not None
    assert wait.warn
    assert wait.waiting_for == "nodes to join"
    assert wait.notice.startswith(
        "the app does not fit the Ray cluster: no node has room for a replica of 'Model'; deploying "
        "anyway (wait_for_nodes) and waiting up to 600 s for nodes to join"
    )
    assert "one replica of 'Model' needs CPU 1, GPU 1" in wait.notice


def test_an_autoscaler_that_can_add_fitting_nodes_makes_the_start_wait() -> None:
    wait = plan_start(
        MODEL, [HEAD], autoscaler(("gpu", {"CPU": 8, "GPU": 1}, 2)), wait_for_nodes=False, timeout_s=600
    )
    assert wait is not None
    assert not wait.warn
    assert wait.waiting_for == "the Ray autoscaler"
    assert "gpu: CPU 8, GPU 1 (up to 2 more)" in wait.notice


@pytest.mark.parametrize(
    ("groups", "caps"),
    [
        ((("cpu", {"CPU": 16}, -1),), {}),  # no GPUs anywhere
        ((("gpu", {"CPU": 8, "GPU": 1}, 2),), {"GPU": 2}),  # capped below the 3 GPUs asked
        ((("gpu", {"CPU": 8, "GPU": 1}, 2),), {}),  # two GPU nodes, three one-GPU replicas
    ],
)
def test_an_autoscaler_that_cannot_add_fitting_nodes_fails_the_start_at_once(
    groups: tuple[tuple[str, dict[str, float], int], ...], caps: dict[str, float]
) -> None:
    demands = {"Api": (1, sk.Resources(cpus=1)), "Model": (3, sk.Resources(cpus=1, gpus=1))}
    with pytest.raises(InsufficientResourcesError) as caught:
        plan_start(demands, [HEAD], autoscaler(*groups, **caps), wait_for_nodes=False, timeout_s=600)
    message = str(caught.value)
    assert "no node has room for a replica of 'Model', nor on the nodes its autoscaler can add" in message
    assert "node groups the cluster's autoscaler can add (Ray's cluster config):" in message


def test_an_autoscaler_that_does_not_publish_its_node_types_is_waited_for() -> None:
    view = view_from_v1_status(V1_AUTOSCALING, NOW)
    wait = plan_start(MODEL, [HEAD], view, wait_for_nodes=False, timeout_s=600)
    assert wait is not None
    assert wait.waiting_for == "the Ray autoscaler"
    assert "does not publish its node types" in wait.notice


# -- waiting ---------------------------------------------------------------------------------------

WAIT = NodeWait("the Ray autoscaler", "", warn=False)


def test_progress_names_the_deployment_what_it_needs_and_the_time_left() -> None:
    short = [Short("Model", 0, 1, {"CPU": 1.0, "GPU": 1.0})]
    assert progress_line(WAIT, short, 40.7, 600, ("1 x gpu",)) == (
        "waiting for the Ray autoscaler: deployment 'Model' needs room for 1 more replica (CPU 1, GPU 1); "
        "0/1 replicas running; the autoscaler is launching 1 x gpu; 40 s of 600 s"
    )


def test_progress_once_every_replica_is_placed() -> None:
    assert progress_line(WAIT, [], 12, 600) == (
        "waiting for the Ray autoscaler: every replica is placed; waiting for them to start; 12 s of 600 s"
    )


def test_a_wait_that_runs_out_says_what_each_deployment_lacked_and_what_the_cluster_has() -> None:
    short = [Short("Model", 1, 3, {"CPU": 1.0, "GPU": 1.0})]
    message = timeout_message("Api", 600, short, [HEAD, GPU_NODE], autoscaler(("gpu", {"GPU": 1}, 4)))
    assert message.splitlines() == [
        "Ray did not run app 'Api' within 600 s: the nodes it needs did not join",
        "  deployment 'Model': 1/3 replicas running; one replica needs CPU 1, GPU 1",
        "  cluster nodes (total resources):",
        "    node 0: CPU 8, memory 32.0 GiB",
        "    node 1: CPU 4, GPU 2",
        "  node groups the cluster's autoscaler can add (Ray's cluster config):",
        "    gpu: GPU 1 (up to 4 more)",
        "Add nodes with those resources (or let the autoscaler add them), or raise start_timeout_s.",
    ]
