"""The GPUs this machine has, for planning replicas: declared, or found by probing.

`detect_gpus` answers, in this order: what the user declared (`--gpus`, `sk.run(gpus=...)`),
else ``SERVEKIT_GPUS``, else NVML, else ``torch.cuda``, else ``CUDA_VISIBLE_DEVICES``.
`parse_gpu_ids` checks a declared list. Every backend and the CLI use these; only the local
runtime plans with the inventory.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from servekit._replica.devices import torch_if_installed

logger = logging.getLogger("servekit.gpus")


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs available for planning, and where that knowledge came from."""

    ids: tuple[int, ...]
    """Physical GPU ids (the numbers ``CUDA_VISIBLE_DEVICES`` takes)."""
    source: str
    """Where the ids came from: ``"--gpus"``, ``"SERVEKIT_GPUS"``, ``"nvml"``, ``"torch"``,
    ``"CUDA_VISIBLE_DEVICES"`` or ``"none"``."""
    memory_bytes: dict[int, int] | None = field(default=None, hash=False)
    """Total memory per GPU id, when NVML or torch reported it."""
    visible_ids: tuple[int, ...] | None = None
    """This process's ``CUDA_VISIBLE_DEVICES`` as ids, when set: how CUDA numbers GPUs in-process."""

    def cuda_ordinal(self, gpu_id: int) -> int:
        """The index CUDA gives `gpu_id` in this process (``cuda:N`` for an in-process replica)."""
        if self.visible_ids is not None and gpu_id in self.visible_ids:
            return self.visible_ids.index(gpu_id)
        return gpu_id

    def describe(self) -> str:
        """A phrase for messages, like ``"GPUs 0,1 (from SERVEKIT_GPUS)"``."""
        if not self.ids:
            if self.source == "none":
                return "no GPUs (none detected: no NVML, no CUDA device in torch, no CUDA_VISIBLE_DEVICES)"
            return f"no GPUs (from {self.source})"
        return f"{plural(len(self.ids), 'GPU')} {join_ids(self.ids)} (from {self.source})"


def detect_gpus(
    declared: str | Sequence[int] | None = None, env: Mapping[str, str] = os.environ
) -> GpuInventory:
    """The GPUs to plan with: `declared` (``--gpus`` / ``sk.run(gpus=...)``), else detected.

    Precedence: `declared`, then ``SERVEKIT_GPUS`` in `env`, then NVML (when ``pynvml`` is
    installed), then ``torch.cuda`` (when torch is installed), then the digits of
    ``CUDA_VISIBLE_DEVICES``. ``""`` or ``"none"`` means no GPUs. NVML and torch are never
    consulted when GPUs are declared. When ``CUDA_VISIBLE_DEVICES`` is set, the ids are the ones
    it lists (an empty value means no GPUs, without probing). Raises `ValueError` naming the
    source and the value when ids do not parse.
    """
    visible = _visible_ids(env)
    if declared is not None:
        return GpuInventory(_declared_ids(declared), "--gpus", visible_ids=_lenient(visible))
    servekit_gpus = env.get("SERVEKIT_GPUS")
    if servekit_gpus is not None:
        ids = parse_gpu_ids(servekit_gpus, "SERVEKIT_GPUS")
        return GpuInventory(ids, "SERVEKIT_GPUS", visible_ids=_lenient(visible))
    if visible == ():
        return GpuInventory((), "CUDA_VISIBLE_DEVICES", visible_ids=())
    for source, probe in (("nvml", _nvml_memory), ("torch", _torch_memory)):
        memory = probe()
        if memory:
            return _from_probe(source, memory, visible)
    if visible is not None:
        ids = _strict(visible)
        return GpuInventory(ids, "CUDA_VISIBLE_DEVICES", visible_ids=ids)
    return GpuInventory((), "none")


def parse_gpu_ids(value: str, source: str) -> tuple[int, ...]:
    """``"0,1,3"`` as ``(0, 1, 3)``; ``""`` and ``"none"`` as ``()``. `source` names it in errors."""
    text = value.strip()
    if text.lower() in {"", "none"}:
        return ()
    tokens = [token.strip() for token in text.split(",")]
    if not all(token.isdigit() for token in tokens):
        raise ValueError(
            f"{source}={value!r} is not a list of GPU ids; expected comma-separated ids like "
            "'0,1,3', or '' / 'none' for no GPUs"
        )
    return _unique(tuple(int(token) for token in tokens), source, value)


def _declared_ids(declared: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(declared, str):
        return parse_gpu_ids(declared, "--gpus")
    if isinstance(declared, int):
        raise ValueError(f"gpus={declared!r} must list GPU ids, like '0,1' or [0, 1], not a count")
    ids = tuple(declared)
    if not all(isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= 0 for gpu in ids):
        raise ValueError(f"gpus={declared!r} must list GPU ids (integers >= 0), like [0, 1]")
    return _unique(ids, "gpus", declared)


def _unique(ids: tuple[int, ...], source: str, value: object) -> tuple[int, ...]:
    repeated = sorted({gpu for gpu in ids if ids.count(gpu) > 1})
    if repeated:
        raise ValueError(f"{source}={value!r} lists GPU {join_ids(repeated)} more than once")
    return ids


def _visible_ids(env: Mapping[str, str]) -> tuple[int, ...] | ValueError | None:
    """``CUDA_VISIBLE_DEVICES`` as ids; None when unset; the parse error when it is not ids.

    Like CUDA, a negative entry ends the list (``"-1"`` hides every GPU).
    """
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    tokens = [token.strip() for token in value.split(",")]
    kept = []
    for token in tokens:
        if token.startswith("-") and token[1:].isdigit():
            break
        kept.append(token)
    try:
        return parse_gpu_ids(",".join(kept), "CUDA_VISIBLE_DEVICES")
    except ValueError as error:
        return ValueError(f"{error}. UUIDs and MIG names cannot be planned with; set SERVEKIT_GPUS=0,1")


def _lenient(visible: tuple[int, ...] | ValueError | None) -> tuple[int, ...] | None:
    return None if isinstance(visible, ValueError) else visible


def _strict(visible: tuple[int, ...] | ValueError) -> tuple[int, ...]:
    if isinstance(visible, ValueError):
        raise visible
    return visible


def _from_probe(source: str, memory: list[int], visible: tuple[int, ...] | ValueError | None) -> GpuInventory:
    """An inventory from a probe's per-device memory, mapped through ``CUDA_VISIBLE_DEVICES``.

    NVML ignores ``CUDA_VISIBLE_DEVICES`` (it sees every device, so the visible ids select from
    them); torch applies it (its device N is the N-th visible id).
    """
    if visible is None:
        ids = tuple(range(len(memory)))
        return GpuInventory(ids, source, dict(enumerate(memory)))
    visible_ids = _strict(visible)
    if source == "nvml":
        ids = tuple(gpu for gpu in visible_ids if gpu < len(memory))
        return GpuInventory(ids, source, {gpu: memory[gpu] for gpu in ids}, visible_ids)
    ids = visible_ids[: len(memory)]
    return GpuInventory(ids, source, dict(zip(ids, memory, strict=False)), visible_ids)


def _nvml_memory() -> list[int]:
    """Total memory of each device NVML sees; empty without ``pynvml`` or a driver."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return []
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, or an NVML library that does not load
        return []
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(nvml.nvmlDeviceGetCount())]
        return [int(nvml.nvmlDeviceGetMemoryInfo(handle).total) for handle in handles]
    except Exception:
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            logger.debug("nvmlShutdown failed", exc_info=True)


def _torch_memory() -> list[int]:
    """Total memory of each CUDA device torch sees; empty without torch or CUDA."""
    torch = torch_if_installed()
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        count = int(torch.cuda.device_count())
        return [int(torch.cuda.get_device_properties(index).total_memory) for index in range(count)]
    except Exception:  # a broken CUDA install means no usable GPU
        return []


def number(value: float) -> str:
    """`value` without a trailing .0."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def plural(count: float, noun: str) -> str:
    """Like "2 GPUs", "1 GPU" or "0.5 GPUs"."""
    return f"{number(count)} {noun}{'' if count == 1 else 's'}"


def join_ids(ids: Iterable[int]) -> str:
    """GPU ids as "0,1"."""
    return ",".join(str(gpu) for gpu in ids)
