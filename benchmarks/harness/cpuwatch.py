"""How busy the machine was during a measurement window (this repo's benchmarks share a small VM).

:class:`CpuWatch` reads ``/proc/stat`` (machine-wide busy and steal time), the CPU time of
the process trees it is told about (ours), and the load average, at the start and the end
of a window.  ``others_busy_pct`` is the machine's busy time minus ours: what other
tenants of the machine used meanwhile, in % of the whole machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from benchmarks.harness.server import tree_cpu_s


def _proc_stat() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle - fields[7], fields[7], sum(fields)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu_s(pid: int) -> float:
    """CPU seconds of the children ``pid`` has waited for (cutime + cstime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as file:
        return float(file.read().split()[0])


class CpuWatch:
    """Context manager: machine busy/steal % and our own CPU % over the ``with`` block.

    ``pids`` is a callable so that process trees started inside the block (worker
    processes) are counted too; it is read at the start and at the end.
    """

    def __init__(self, pids: Callable[[], Sequence[int]] = lambda: (os.getpid(),)) -> None:
        """Watch the trees rooted at ``pids()`` (default: this process and its children)."""
        self._pids = pids
        self.result: dict[str, Any] = {}

    def _own_cpu_s(self) -> float:
        # live descendants, plus what reaped children used (a worker that exits inside the
        # window moves its CPU time into its parent's cutime/cstime)
        return sum(tree_cpu_s(pid) + reaped_children_cpu_s(pid) for pid in self._pids())

    def __enter__(self) -> Self:
        """Start the window."""
        self._t0 = time.perf_counter()
        self._stat0 = _proc_stat()
        self._own0 = self._own_cpu_s()
        self._load0 = loadavg()
        return self

    def __exit__(self, *exc: object) -> None:
        """End the window and fill :attr:`result`."""
        wall = time.perf_counter() - self._t0
        busy1, steal1, total1 = _proc_stat()
        own = self._own_cpu_s() - self._own0
        busy0, steal0, total0 = self._stat0
        total = (total1 - total0) or 1
        ncpu = os.cpu_count() or 1
        machine_busy = 100 * (busy1 - busy0) / total
        own_pct_machine = 100 * own / (wall * ncpu) if wall > 0 else 0.0
        self.result = {
            "wall_s": wall,
            "machine_busy_pct": machine_busy,
            "steal_pct": 100 * (steal1 - steal0) / total,
            "own_cpu_pct_of_one_core": 100 * own / wall if wall > 0 else 0.0,
            "others_busy_pct": max(0.0, machine_busy - own_pct_machine),
            "loadavg_1m": [self._load0, loadavg()],
            "ncpu": ncpu,
        }


def describe(result: dict[str, Any]) -> str:
    """One line for a report."""
    if not result:
        return "not measured"
    return (
        f"machine busy {result['machine_busy_pct']:.0f}% of {result['ncpu']} cores"
        f" (ours {result['own_cpu_pct_of_one_core']:.0f}% of one core,"
        f" others ~{result['others_busy_pct']:.0f}% of the machine),"
        f" steal {result['steal_pct']:.1f}%,"
        f" load average {result['loadavg_1m'][0]:.2f} -> {result['loadavg_1m'][1]:.2f}"
    )
