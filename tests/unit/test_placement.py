"""Packing, CPU pinning and the worker side of placements (no real GPUs needed)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

import pytest

from servekit import Resources
from servekit._runtime.local.placement import (
    GpuInventory,
    Placement,
    ResourcePlanner,
    apply_placement_in_process,
    packing_order,
)
from servekit.errors import DeploymentStartError, InsufficientResourcesError

GIB = 1 << 30


def planner(*ids: int, cpus: tuple[int, ...] = (0, 1, 2, 3)) -> ResourcePlanner:
    return ResourcePlanner(GpuInventory(ids, "SERVEKIT_GPUS"), cpu_ids=cpus)


def gpus(value: float, **more: Any) -> Resources:
    return Resources(gpus=value, **more)


# -- detection ----------------------------------------------------------------------------------


# -- packing ------------------------------------------------------------------------------------


def test_whole_gpus_are_exclusive() -> None:
    plan = planner(0, 1, 2)

    first = plan.allocate("A#0", gpus(1), pin_cpus=False)
    second = plan.allocate("B#0", gpus(2), pin_cpus=False)

    assert (first.gpu_ids, first.gpu_fraction) == ((0,), 1.0)
    assert (second.gpu_ids, second.gpu_fraction) == ((1, 2), 1.0)
    with pytest.raises(InsufficientResourcesError, match=r"no room for replica C#0 \(gpus=0.5\)"):
        plan.allocate("C#0", gpus(0.5), pin_cpus=False)


def test_halves_pack_onto_one_device() -> None:
    plan = planner(0, 1)

    placements = [plan.allocate(f"M#{i}", gpus(0.5), pin_cpus=False) for i in range(2)]

    assert [p.gpu_ids for p in placements] == [(0,), (0,)]
    assert [p.gpu_fraction for p in placements] == [0.5, 0.5]
    assert plan.usage()["gpus"]["0"] == {
        "used": 1.0,
        "replicas": {"M#0": 0.5, "M#1": 0.5},
        "memory_bytes": None,
    }
    assert plan.usage()["gpus"]["1"]["replicas"] == {}


def test_three_halves_use_two_devices() -> None:
    plan = planner(0, 1)

    ids = [plan.allocate(f"M#{i}", gpus(0.5), pin_cpus=False).gpu_ids for i in range(3)]

    assert ids == [(0,), (0,), (1,)]


def test_tenths_fill_one_device_despite_rounding() -> None:
    plan = planner(0, 1)

    ids = {plan.allocate(f"M#{i}", gpus(0.1), pin_cpus=False).gpu_ids for i in range(10)}

    assert ids == {(0,)}


def test_fractions_go_to_the_fullest_device_with_room() -> None:
    plan = planner(0, 1)
    plan.allocate("A#0", gpus(0.3), pin_cpus=False)
    plan.allocate("B#0", gpus(0.8), pin_cpus=False)  # does not fit beside A: device 1

    assert plan.allocate("C#0", gpus(0.2), pin_cpus=False).gpu_ids == (1,)  # 0.8 + 0.2, best fit
    assert plan.allocate("D#0", gpus(0.2), pin_cpus=False).gpu_ids == (0,)


def test_whole_and_fractional_replicas_do_not_share() -> None:
    plan = planner(0, 1, 2)
    plan.allocate("Small#0", gpus(0.25), pin_cpus=False)

    big = plan.allocate("Big#0", gpus(2), pin_cpus=False)
    small = plan.allocate("Small#1", gpus(0.25), pin_cpus=False)

    assert big.gpu_ids == (1, 2)
    assert small.gpu_ids == (0,)
    with pytest.raises(InsufficientResourcesError):
        plan.allocate("Big#1", gpus(1), pin_cpus=False)


def test_release_frees_the_device_for_reuse() -> None:
    plan = planner(0)
    plan.allocate("A#0", gpus(1), pin_cpus=False)
    with pytest.raises(InsufficientResourcesError):
        plan.allocate("A#1", gpus(1), pin_cpus=False)

    plan.release("A#0")
    plan.release("never-allocated")

    assert plan.allocate("A#1", gpus(0.5), pin_cpus=False).gpu_ids == (0,)
    assert plan.allocate("A#2", gpus(0.5), pin_cpus=False).gpu_ids == (0,)
    assert plan.placement("A#0") is None


def test_allocating_a_replica_twice_is_a_bug() -> None:
    plan = planner(0, 1)
    plan.allocate("A#0", gpus(1), pin_cpus=False)

    with pytest.raises(ValueError, match="already holds"):
        plan.allocate("A#0", gpus(1), pin_cpus=False)


def test_cpu_replicas_need_no_gpu_inventory() -> None:
    placement = planner().allocate("Pre#0", Resources(cpus=1, memory="2GiB"), pin_cpus=False)

    assert placement == Placement((), 0.0, None, 2 * GIB)
    assert placement.device(process=True) == "cpu"


def test_usage_reports_source_memory_and_replicas() -> None:
    plan = ResourcePlanner(GpuInventory((0,), "nvml", {0: 80 * GIB}), cpu_ids=(0, 1))
    plan.allocate("M#0", gpus(1, cpus=1, memory=GIB), pin_cpus=True)

    usage = plan.usage()

    assert usage["source"] == "nvml"
    assert usage["gpus"] == {"0": {"used": 1.0, "replicas": {"M#0": 1.0}, "memory_bytes": 80 * GIB}}
    assert usage["cpus"] == {"available": [0, 1], "pinned": {"0": "M#0"}}
    assert usage["replicas"]["M#0"] == {
        "gpu_ids": [0],
        "gpu_fraction": 1.0,
        "cpu_ids": [0],
        "memory_bytes": GIB,
    }


# -- check --------------------------------------------------------------------------------------


def test_check_passes_when_a_packing_exists() -> None:
    plan = planner(0, 1, 2)
    # Allocated in this order, the 0.3s would share a device and leave the 0.7s one too few.
    demands = {
        "Quarter": (2, gpus(0.3)),
        "Half": (2, gpus(0.7)),
        "Big": (1, gpus(1)),
        "Cpu": (4, Resources()),
    }

    plan.check(demands)

    assert packing_order(demands) == ["Big", "Half", "Quarter", "Cpu"]


def test_check_ignores_current_allocations() -> None:
    plan = planner(0)
    plan.allocate("Old#0", gpus(1), pin_cpus=False)

    plan.check({"New": (1, gpus(1))})


def test_first_replicas_allocated_in_packing_order_fit() -> None:
    plan = planner(0, 1)
    demands = {"A": (2, gpus(0.3)), "B": (2, gpus(0.7))}
    plan.check(demands)

    for name in packing_order(demands):
        replicas, resources = demands[name]
        for index in range(replicas):
            plan.allocate(f"{name}#{index}", resources, pin_cpus=False)

    assert {gpu: entry["used"] for gpu, entry in plan.usage()["gpus"].items()} == {"0": 1.0, "1": 1.0}


def test_infeasible_check_lists_demand_per_deployment() -> None:
    plan = planner(0, 1)
    demands = {
        "Preprocess": (2, Resources(cpus=2)),
        "Classifier": (2, gpus(1, cpus=4)),
        "Embedder": (3, gpus(0.5)),
    }

    with pytest.raises(InsufficientResourcesError) as caught:
        plan.check(demands)

    message = str(caught.value)
    assert message.startswith(
        "the app needs 4 GPUs to start all its replicas at once, and has 2 GPUs 0,1 (from SERVEKIT_GPUS):"
    )
    assert "  Classifier: 2 replicas x 1 GPU (4 CPUs each) = 2 GPUs" in message
    assert "  Embedder: 3 replicas x 0.5 GPUs (1 CPU each) = 1.5 GPUs" in message
    assert "Preprocess" not in message
    assert "--gpus 0,1" in message
    assert "SERVEKIT_GPUS" in message
    assert isinstance(caught.value, DeploymentStartError)
    assert caught.value.to_dict()["type"] == "insufficient_resources"


def test_infeasible_check_names_a_hidden_inventory() -> None:
    plan = ResourcePlanner(GpuInventory((), "CUDA_VISIBLE_DEVICES", visible_ids=()), cpu_ids=(0,))

    with pytest.raises(InsufficientResourcesError, match=r"has no GPUs \(from CUDA_VISIBLE_DEVICES\)"):
        plan.check({"Model": (2, gpus(0.5))})


def test_infeasible_check_without_gpus_says_none_were_detected() -> None:
    plan = ResourcePlanner(GpuInventory((), "none"), cpu_ids=(0,))

    with pytest.raises(InsufficientResourcesError, match=r"needs 1 GPU .* has no GPUs \(none detected"):
        plan.check({"Model": (1, gpus(1))})


def test_insufficient_resources_error_survives_pickling() -> None:
    import pickle

    error = InsufficientResourcesError("the app needs 2 GPUs")

    assert str(pickle.loads(pickle.dumps(error))) == "the app needs 2 GPUs"


# -- cpu pinning --------------------------------------------------------------------------------


def test_pinned_replicas_get_dedicated_cores() -> None:
    plan = planner(cpus=(0, 1, 2, 3))

    first = plan.allocate("A#0", Resources(cpus=1.5), pin_cpus=True)
    second = plan.allocate("B#0", Resources(cpus=2), pin_cpus=True)

    assert first.cpu_ids == (0, 1)
    assert second.cpu_ids == (2, 3)


def test_pinning_falls_back_to_shared_cores_when_none_are_free(caplog: pytest.LogCaptureFixture) -> None:
    plan = planner(cpus=(0, 1))
    plan.allocate("A#0", Resources(cpus=2), pin_cpus=True)

    with caplog.at_level("DEBUG", logger="servekit.placement"):
        crowded = plan.allocate("B#0", Resources(cpus=1), pin_cpus=True)

    assert crowded.cpu_ids is None
    assert "runs unpinned" in caplog.text
    plan.release("A#0")
    assert plan.allocate("C#0", Resources(cpus=1), pin_cpus=True).cpu_ids == (0,)


def test_unpinned_and_zero_cpu_replicas_take_no_cores() -> None:
    plan = planner(cpus=(0,))

    assert plan.allocate("A#0", Resources(cpus=1), pin_cpus=False).cpu_ids is None
    assert plan.allocate("B#0", Resources(cpus=0), pin_cpus=True).cpu_ids is None
    assert plan.allocate("C#0", Resources(cpus=1), pin_cpus=True).cpu_ids == (0,)


def test_default_cores_are_this_process_affinity() -> None:
    plan = ResourcePlanner(GpuInventory((), "none"))

    assert set(plan.cpu_ids) == os.sched_getaffinity(0)


# -- device strings and worker environment ------------------------------------------------------


def test_device_strings() -> None:
    assert Placement((), 0.0, None).device(process=False) == "cpu"
    assert Placement((3,), 1.0, None).device(process=True) == "cuda:0"
    assert Placement((3,), 1.0, None).device(process=False) == "cuda:3"
    assert Placement((3, 5), 1.0, None, cuda_ordinals=(0, 1)).device(process=False) == "cuda:0"


def test_in_process_devices_follow_the_servers_visible_devices() -> None:
    inventory = GpuInventory((2, 3), "nvml", visible_ids=(2, 3))
    plan = ResourcePlanner(inventory, cpu_ids=())
    plan.allocate("A#0", gpus(1), pin_cpus=False)

    placement = plan.allocate("B#0", gpus(1), pin_cpus=False)

    assert placement.gpu_ids == (3,)
    assert placement.device(process=False) == "cuda:1"
    assert placement.device(process=True) == "cuda:0"
    assert placement.worker_env({})["CUDA_VISIBLE_DEVICES"] == "3"


def test_worker_env_shows_only_the_replicas_devices() -> None:
    assert Placement((1, 3), 1.0, None).worker_env({}) == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert Placement((), 0.0, None).worker_env({}) == {"CUDA_VISIBLE_DEVICES": ""}


def test_worker_env_sizes_thread_pools_to_pinned_cores() -> None:
    pinned = Placement((), 0.0, (4, 5))

    assert pinned.worker_env({}) == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert "OMP_NUM_THREADS" not in pinned.worker_env({"OMP_NUM_THREADS": "8"})


# -- inside the worker --------------------------------------------------------------------------


def test_apply_pins_the_process() -> None:
    before = os.sched_getaffinity(0)
    try:
        apply_placement_in_process(Placement((), 0.0, (min(before),)))
        assert os.sched_getaffinity(0) == {min(before)}
    finally:
        os.sched_setaffinity(0, before)


def test_apply_ignores_platforms_that_cannot_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, cpus: Any) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)

    apply_placement_in_process(Placement((), 0.0, (9999,)))


def test_apply_with_cpu_only_torch_does_nothing_to_cuda() -> None:
    apply_placement_in_process(Placement((0,), 0.5, None))  # torch here is CPU-only


def test_apply_caps_torch_memory_for_a_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    capped: list[tuple[float, int]] = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        set_per_process_memory_fraction=lambda fraction, device: capped.append((fraction, device)),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))

    apply_placement_in_process(Placement((0,), 0.5, None))
    apply_placement_in_process(Placement((0,), 1.0, None))
    apply_placement_in_process(Placement((), 0.0, None))

    assert capped == [(0.5, 0)]


def test_apply_never_imports_torch_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    apply_placement_in_process(Placement((0,), 0.5, None))

    assert "torch" not in sys.modules
