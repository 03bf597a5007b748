"""Which device an in-process replica should use."""

from __future__ import annotations

import sys
from typing import Any

from servekit._spec.config import Resources


def cuda_device_count() -> int:
    """CUDA devices torch can see; 0 without torch or CUDA. Imports torch only if installed."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install means no usable GPU
        return 0


def assign_device(resources: Resources, replica_index: int, device_count: int) -> tuple[str, tuple[int, ...]]:
    """The torch device string and GPU ids for replica number `replica_index`.

    Replicas that ask for no GPU, or run where there is none, use the CPU. Otherwise they are
    spread over the visible GPUs round-robin.
    """
    if resources.gpus <= 0 or device_count == 0:
        return "cpu", ()
    needed = max(1, int(resources.gpus))
    first = (replica_index * needed) % device_count
    ids = tuple((first + offset) % device_count for offset in range(min(needed, device_count)))
    return f"cuda:{ids[0]}", ids
