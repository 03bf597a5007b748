"""GPU detection: declared ids, SERVEKIT_GPUS, NVML, torch, CUDA_VISIBLE_DEVICES (no real GPUs needed)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from servekit._runtime import gpus as gpus_module
from servekit._runtime.gpus import GpuInventory, detect_gpus, parse_gpu_ids

GIB = 1 << 30


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Stand-ins for what NVML and torch would report (total memory per device)."""
    reported: dict[str, list[int]] = {"nvml": [], "torch": []}
    monkeypatch.setattr(gpus_module, "_nvml_memory", lambda: reported["nvml"])
    monkeypatch.setattr(gpus_module, "_torch_memory", lambda: reported["torch"])
    return reported


def test_detects_no_gpus_on_this_machine() -> None:
    inventory = detect_gpus(env={})

    assert inventory.ids == ()
    assert inventory.source == "none"


def test_declared_gpus_win_over_everything(probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [GIB] * 8
    env = {"SERVEKIT_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "5"}

    assert detect_gpus("2,3", env) == GpuInventory((2, 3), "--gpus", visible_ids=(5,))
    assert detect_gpus([4, 6], env).ids == (4, 6)


def test_servekit_gpus_wins_over_probes(probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [GIB] * 8

    inventory = detect_gpus(env={"SERVEKIT_GPUS": " 0, 1,2 ,3 "})

    assert (inventory.ids, inventory.source) == ((0, 1, 2, 3), "SERVEKIT_GPUS")


def test_declared_gpus_never_import_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> list[int]:
        raise AssertionError("probed although GPUs were declared")

    monkeypatch.setattr(gpus_module, "_nvml_memory", forbidden)
    monkeypatch.setattr(gpus_module, "_torch_memory", forbidden)

    assert detect_gpus(None, {"SERVEKIT_GPUS": "0"}).ids == (0,)
    assert detect_gpus("none", {}).ids == ()


@pytest.mark.parametrize("value", ["", "none", "None", "  "])
def test_empty_or_none_means_no_gpus(value: str, probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [GIB] * 2

    assert detect_gpus(value, {}).ids == ()
    assert detect_gpus(env={"SERVEKIT_GPUS": value}).ids == ()


def test_nvml_comes_before_torch(probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [16 * GIB, 24 * GIB]
    probes["torch"] = [GIB]

    inventory = detect_gpus(env={})

    assert inventory == GpuInventory((0, 1), "nvml", {0: 16 * GIB, 1: 24 * GIB})


def test_torch_is_used_without_nvml(probes: dict[str, list[int]]) -> None:
    probes["torch"] = [80 * GIB]

    assert detect_gpus(env={}) == GpuInventory((0,), "torch", {0: 80 * GIB})


def test_nvml_ids_are_the_visible_devices(probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [GIB, 2 * GIB, 3 * GIB, 4 * GIB]  # NVML sees every device

    inventory = detect_gpus(env={"CUDA_VISIBLE_DEVICES": "3,1"})

    assert inventory.ids == (3, 1)
    assert inventory.memory_bytes == {3: 4 * GIB, 1: 2 * GIB}
    assert inventory.cuda_ordinal(3) == 0
    assert inventory.cuda_ordinal(1) == 1


def test_torch_ids_are_the_visible_devices(probes: dict[str, list[int]]) -> None:
    probes["torch"] = [GIB, 2 * GIB]  # torch numbers only the visible devices

    inventory = detect_gpus(env={"CUDA_VISIBLE_DEVICES": "2,3"})

    assert (inventory.ids, inventory.source) == ((2, 3), "torch")
    assert inventory.memory_bytes == {2: GIB, 3: 2 * GIB}


def test_cuda_visible_devices_is_the_last_resort(probes: dict[str, list[int]]) -> None:
    inventory = detect_gpus(env={"CUDA_VISIBLE_DEVICES": "0,2"})

    assert (inventory.ids, inventory.source) == ((0, 2), "CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize(("value", "ids"), [("", ()), ("-1", ()), ("1,-1,2", (1,))])
def test_cuda_visible_devices_hides_like_cuda(
    value: str, ids: tuple[int, ...], probes: dict[str, list[int]]
) -> None:
    assert detect_gpus(env={"CUDA_VISIBLE_DEVICES": value}).ids == ids


def test_empty_cuda_visible_devices_skips_the_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus_module, "_nvml_memory", lambda: pytest.fail("probed"))

    assert detect_gpus(env={"CUDA_VISIBLE_DEVICES": ""}).ids == ()


def test_nvml_probe_reads_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=(handle + 1) * GIB),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    assert detect_gpus(env={}) == GpuInventory((0, 1), "nvml", {0: GIB, 1: 2 * GIB})
    assert calls == ["init", "shutdown"]


def test_nvml_without_a_driver_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    monkeypatch.setattr(gpus_module, "_torch_memory", list)

    assert detect_gpus(env={}).source == "none"


def test_torch_probe_reads_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_properties=lambda index: types.SimpleNamespace(total_memory=(index + 1) * GIB),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(gpus_module, "_nvml_memory", list)

    assert detect_gpus(env={"CUDA_VISIBLE_DEVICES": "4,6"}) == GpuInventory(
        (4, 6), "torch", {4: GIB, 6: 2 * GIB}, visible_ids=(4, 6)
    )


@pytest.mark.parametrize("value", ["0,a", "0,,1", "-1", "0;1", "1.5"])
def test_bad_ids_name_the_source_and_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"SERVEKIT_GPUS='.*' is not a list of GPU ids.*'0,1,3'"):
        detect_gpus(env={"SERVEKIT_GPUS": value})
    with pytest.raises(ValueError, match="--gpus="):
        detect_gpus(value, {})


def test_repeated_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="lists GPU 1 more than once"):
        parse_gpu_ids("1,0,1", "--gpus")


@pytest.mark.parametrize("declared", [2, [0, -1], [True]])
def test_declared_gpus_must_be_ids(declared: Any) -> None:
    with pytest.raises(ValueError, match="GPU ids"):
        detect_gpus(declared, {})


def test_uuid_cuda_visible_devices_asks_for_servekit_gpus(probes: dict[str, list[int]]) -> None:
    probes["nvml"] = [GIB]

    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES='GPU-8a1b'.*SERVEKIT_GPUS"):
        detect_gpus(env={"CUDA_VISIBLE_DEVICES": "GPU-8a1b"})
    assert detect_gpus(env={"CUDA_VISIBLE_DEVICES": "GPU-8a1b", "SERVEKIT_GPUS": "0"}).ids == (0,)
