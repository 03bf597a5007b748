"""Per-replica resource planning for the local runtime: which GPUs and CPU cores a replica gets.

Three steps, in the order the runtime takes them:

1. `servekit._runtime.gpus.detect_gpus` finds the GPU inventory (declared, else probed).
2. `ResourcePlanner.check` proves before anything starts that every deployment's replicas fit
   at once; if not, `InsufficientResourcesError` lists the demand per deployment.
3. `ResourcePlanner.allocate` gives each new replica a `Placement` (and `release` takes it back):
   whole GPUs are exclusive, fractions are packed best-fit onto shared devices, and CPU
   requests of process replicas get dedicated cores while free ones remain.

A process replica runs `Placement.worker_env()` as its environment (so it sees only its GPUs
through ``CUDA_VISIBLE_DEVICES``) and calls `apply_placement_in_process` first thing (CPU
affinity and the torch memory cap of a fractional GPU).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servekit._replica.devices import cap_torch_memory
from servekit._runtime.gpus import GpuInventory, number, plural
from servekit._spec.config import Resources
from servekit.errors import InsufficientResourcesError

logger = logging.getLogger("servekit.placement")

_EPSILON = 1e-9
"""Slack when summing fractions, so 0.1 x 10 still fits on one device."""

_HINT = (
    "Declare the GPUs this machine has with `servekit serve ... --gpus 0,1` (or SERVEKIT_GPUS=0,1, "
    "or sk.run(app, gpus='0,1')), or lower `gpus` (a fraction such as 0.5 packs two replicas onto one GPU)."
)


# -- placements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where one replica runs: its GPUs, its share of them, and its CPU cores."""

    gpu_ids: tuple[int, ...]
    """Physical GPU ids; empty for a CPU replica."""
    gpu_fraction: float
    """Share of each listed GPU: 1.0 for whole GPUs, e.g. 0.5 when packed, 0.0 without GPUs."""
    cpu_ids: tuple[int, ...] | None
    """The CPU affinity set; None means no pinning."""
    memory_bytes: int | None = None
    """Memory the replica asked for (recorded for status, not enforced)."""
    cuda_ordinals: tuple[int, ...] | None = None
    """How CUDA numbers `gpu_ids` in the server process (differs when it has ``CUDA_VISIBLE_DEVICES``)."""

    def device(self, process: bool) -> str:
        """The torch device string for the replica.

        A process replica sees only its GPUs, renumbered from 0, so it gets ``"cuda:0"``; an
        in-process replica gets its first GPU as the server process numbers it.
        """
        if not self.gpu_ids:
            return "cpu"
        if process:
            return "cuda:0"
        return f"cuda:{(self.cuda_ordinals or self.gpu_ids)[0]}"

    def worker_env(self, base: Mapping[str, str] = os.environ) -> dict[str, str]:
        """Environment variables to add for a process replica (on top of the server's `base`).

        ``CUDA_VISIBLE_DEVICES`` lists only its GPUs (empty for a CPU replica, which hides them
        all). Pinned replicas also get ``OMP_NUM_THREADS`` = their core count, unless `base`
        sets it already.
        """
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in self.gpu_ids)}
        if self.cpu_ids and "OMP_NUM_THREADS" not in base:
            env["OMP_NUM_THREADS"] = str(len(self.cpu_ids))
        return env

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for ``/-/status``."""
        return {
            "gpu_ids": list(self.gpu_ids),
            "gpu_fraction": self.gpu_fraction,
            "cpu_ids": None if self.cpu_ids is None else list(self.cpu_ids),
            "memory_bytes": self.memory_bytes,
        }


_CPU_PLACEMENT = Placement((), 0.0, None)


# -- packing ------------------------------------------------------------------------------------


class _GpuBook:
    """Which replicas hold which share of each GPU; the packing rules live here."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.shares: dict[int, dict[str, float]] = {gpu: {} for gpu in ids}
        self.exclusive: set[int] = set()

    def used(self, gpu: int) -> float:
        return 1.0 if gpu in self.exclusive else sum(self.shares[gpu].values())

    def fit(self, gpus: float) -> tuple[int, ...] | None:
        """The GPU ids a replica asking for `gpus` would get now, or None if none fit."""
        free = [gpu for gpu, holders in self.shares.items() if not holders]
        if gpus >= 1:
            count = int(gpus)
            return tuple(free[:count]) if len(free) >= count else None
        shared = [
            gpu
            for gpu, holders in self.shares.items()
            if holders and gpu not in self.exclusive and self.used(gpu) + gpus <= 1.0 + _EPSILON
        ]
        if shared:  # best fit: the fullest device that still has room
            return (max(shared, key=self.used),)
        return (free[0],) if free else None

    def take(self, replica_id: str, ids: tuple[int, ...], gpus: float) -> None:
        share = 1.0 if gpus >= 1 else gpus
        for gpu in ids:
            self.shares[gpu][replica_id] = share
            if gpus >= 1:
                self.exclusive.add(gpu)

    def drop(self, replica_id: str) -> None:
        for gpu, holders in self.shares.items():
            if holders.pop(replica_id, None) is not None and not holders:
                self.exclusive.discard(gpu)


def packing_order(demands: Mapping[str, tuple[int, Resources]]) -> list[str]:
    """Deployment names in the order `ResourcePlanner.check` packs them.

    Whole GPUs first (most first), then fractions (largest first), then CPU-only deployments.
    Allocating a graph's first replicas in this order succeeds whenever `check` does.
    """

    def key(name: str) -> tuple[int, float]:
        gpus = demands[name][1].gpus
        return (0 if gpus >= 1 else 1 if gpus > 0 else 2, -gpus)

    return sorted(demands, key=key)


class ResourcePlanner:
    """Hands out GPUs and CPU cores to replicas and takes them back; one per local runtime."""

    def __init__(self, inventory: GpuInventory, cpu_ids: Sequence[int] | None = None) -> None:
        """Plan over `inventory` and the cores in `cpu_ids` (default: this process's affinity)."""
        self.inventory = inventory
        self.cpu_ids: tuple[int, ...] = tuple(cpu_ids) if cpu_ids is not None else _affinity()
        self._gpus = _GpuBook(inventory.ids)
        self._cpu_owner: dict[int, str] = {}
        self._placements: dict[str, Placement] = {}

    def check(self, demands: Mapping[str, tuple[int, Resources]]) -> None:
        """Raise `InsufficientResourcesError` unless every replica in `demands` fits at once.

        `demands` maps a deployment name to (replicas, per-replica resources). The check packs
        onto the whole inventory, ignoring what is allocated now. CPUs never fail it (they are
        shared when there are not enough to dedicate).
        """
        book = _GpuBook(self.inventory.ids)
        for name in packing_order(demands):
            replicas, resources = demands[name]
            for index in range(replicas if resources.gpus > 0 else 0):
                ids = book.fit(resources.gpus)
                if ids is None:
                    raise InsufficientResourcesError(self._infeasible_message(demands))
                book.take(f"{name}#{index}", ids, resources.gpus)

    def allocate(self, replica_id: str, resources: Resources, pin_cpus: bool) -> Placement:
        """A placement for a new replica; raises `InsufficientResourcesError` when no GPU has room.

        `pin_cpus` asks for ``ceil(resources.cpus)`` dedicated cores (for process replicas whose
        ``cpus`` was set); without enough free cores the replica is not pinned.
        """
        if replica_id in self._placements:
            raise ValueError(f"replica {replica_id!r} already holds a placement; release it first")
        gpu_ids: tuple[int, ...] = ()
        if resources.gpus > 0:
            fitted = self._gpus.fit(resources.gpus)
            if fitted is None:
                raise InsufficientResourcesError(self._no_room_message(replica_id, resources))
            gpu_ids = fitted
        cpu_ids = self._pick_cpus(replica_id, resources.cpus) if pin_cpus else None
        if gpu_ids:
            self._gpus.take(replica_id, gpu_ids, resources.gpus)
        for cpu in cpu_ids or ():
            self._cpu_owner[cpu] = replica_id
        placement = Placement(
            gpu_ids,
            min(resources.gpus, 1.0) if gpu_ids else 0.0,
            cpu_ids,
            resources.memory,
            tuple(self.inventory.cuda_ordinal(gpu) for gpu in gpu_ids) or None,
        )
        self._placements[replica_id] = placement
        return placement

    def release(self, replica_id: str) -> None:
        """Give back what `replica_id` holds (nothing happens for an unknown id)."""
        if self._placements.pop(replica_id, None) is None:
            return
        self._gpus.drop(replica_id)
        for cpu in [cpu for cpu, owner in self._cpu_owner.items() if owner == replica_id]:
            del self._cpu_owner[cpu]

    def placement(self, replica_id: str) -> Placement | None:
        """What `replica_id` holds, if anything."""
        return self._placements.get(replica_id)

    def usage(self) -> dict[str, Any]:
        """JSON-ready usage for ``/-/status``: per GPU id the replicas and their shares."""
        memory = self.inventory.memory_bytes or {}
        return {
            "source": self.inventory.source,
            "gpus": {
                str(gpu): {
                    "used": round(self._gpus.used(gpu), 6),
                    "replicas": dict(holders),
                    "memory_bytes": memory.get(gpu),
                }
                for gpu, holders in self._gpus.shares.items()
            },
            "cpus": {
                "available": list(self.cpu_ids),
                "pinned": {str(cpu): owner for cpu, owner in sorted(self._cpu_owner.items())},
            },
            "replicas": {replica: placement.to_dict() for replica, placement in self._placements.items()},
        }

    def _pick_cpus(self, replica_id: str, cpus: float) -> tuple[int, ...] | None:
        needed = math.ceil(cpus)
        if needed == 0:
            return None
        free = [cpu for cpu in self.cpu_ids if cpu not in self._cpu_owner]
        if len(free) < needed:
            logger.debug(
                "%s asks for %s dedicated CPUs, %d are free; it runs unpinned", replica_id, needed, len(free)
            )
            return None
        return tuple(free[:needed])

    def _infeasible_message(self, demands: Mapping[str, tuple[int, Resources]]) -> str:
        gpu_demands = {name: demand for name, demand in demands.items() if demand[1].gpus > 0}
        needed = _devices_needed(gpu_demands)
        lines = [
            f"the app needs {plural(needed, 'GPU')} to start all its replicas at once, "
            f"and has {self.inventory.describe()}:"
        ]
        lines += [f"  {_demand_line(name, *demand)}" for name, demand in gpu_demands.items()]
        lines.append(_HINT)
        return "\n".join(lines)

    def _no_room_message(self, replica_id: str, resources: Resources) -> str:
        holders = sorted({replica for shares in self._gpus.shares.values() for replica in shares})
        held = f"held by {', '.join(holders)}" if holders else "all free, but too few"
        return (
            f"no room for replica {replica_id} (gpus={number(resources.gpus)}): "
            f"{self.inventory.describe()}, {held}. Lower max_replicas or gpus, or declare more GPUs "
            "with --gpus / SERVEKIT_GPUS."
        )


def _devices_needed(demands: Mapping[str, tuple[int, Resources]]) -> int:
    """How many GPUs the packing rules use for `demands` on an unbounded inventory."""
    bound = sum(replicas * max(1, math.ceil(resources.gpus)) for replicas, resources in demands.values())
    book = _GpuBook(range(bound))
    for name in packing_order(demands):
        replicas, resources = demands[name]
        for index in range(replicas):
            ids = book.fit(resources.gpus)
            assert ids is not None  # the bound leaves a device for every replica
            book.take(f"{name}#{index}", ids, resources.gpus)
    return sum(1 for holders in book.shares.values() if holders)


def _demand_line(name: str, replicas: int, resources: Resources) -> str:
    cpus = f" ({plural(resources.cpus, 'CPU')} each)" if resources.cpus else ""
    return (
        f"{name}: {plural(replicas, 'replica')} x {plural(resources.gpus, 'GPU')}{cpus} "
        f"= {plural(replicas * resources.gpus, 'GPU')}"
    )


def _affinity() -> tuple[int, ...]:
    """The cores this process may run on; empty where the OS cannot pin (then nothing is pinned)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return ()
    return tuple(sorted(getaffinity(0)))


# -- inside a worker process --------------------------------------------------------------------


def apply_placement_in_process(placement: Placement) -> None:
    """Apply `placement` to the calling worker process, before user code runs.

    Pins the process to `cpu_ids` where the OS allows, and caps torch's CUDA allocator at
    `gpu_fraction` of the device for a fractional GPU (only when torch is installed and sees
    CUDA; CPU-only torch and no torch are fine).
    """
    if placement.cpu_ids:
        try:
            os.sched_setaffinity(0, placement.cpu_ids)
        except (OSError, AttributeError):
            logger.debug("could not pin this process to CPUs %s", placement.cpu_ids, exc_info=True)
    if placement.gpu_ids and 0 < placement.gpu_fraction < 1:
        cap_torch_memory(placement.gpu_fraction)
