"""What a replica does with the devices it was given, on any backend: the torch CUDA memory cap."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

logger = logging.getLogger("servekit.devices")


def torch_if_installed() -> Any:
    """The torch module if it is imported or installed (then imported), else None."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def cap_torch_memory(fraction: float) -> None:
    """Cap torch's CUDA allocator at `fraction` of device 0 (a replica's share of a fractional GPU).

    A no-op without torch or without CUDA, so CPU-only machines are fine.
    """
    torch = torch_if_installed()
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
    except Exception:  # a broken CUDA install: the replica finds out when it uses it
        logger.warning("could not cap CUDA memory at %s of the device", fraction, exc_info=True)
