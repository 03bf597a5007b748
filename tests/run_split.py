"""Run the test suite as two pytest processes side by side, each under coverage (what `nox -s tests` runs).

tests/backends (the backend-parametrized suites and everything that needs Ray: one session Ray
cluster) runs in one process; tests/unit and tests/integration in the other. Most of both
waits on servers, subprocesses and Ray rather than computing, so on a 2-core machine the two
finish in about the time of the longer one. Each process's output goes to its own log, printed
whole when it ends (with a prefix per line), so a failure reads as in a plain pytest run. Extra
arguments go to both pytest runs; the exit status is the first non-zero one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROUPS = {"backends": ["tests/backends"], "unit+integration": ["tests/unit", "tests/integration"]}


def main(argv: list[str]) -> int:
    logs = Path(tempfile.mkdtemp(prefix="servekit-tests-"))
    running = {}
    for name, paths in GROUPS.items():
        log = (logs / f"{name}.log").open("w")
        basetemp = logs / f"{name.replace('+', '-')}-tmp"  # each run its own: neither cleans up the other's
        command = [
            sys.executable,
            "-m",
            "coverage",
            "run",
            "-m",
            "pytest",
            *paths,
            f"--basetemp={basetemp}",
            *argv,
        ]
        running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"started {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    status = 0
    pending = dict(running)
    while pending:
        for name, (proc, log) in list(pending.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del pending[name]
            elapsed = time.monotonic() - started
            print(f"\n===== {name}: exit {code} after {elapsed:.0f} s =====", flush=True)
            for line in (logs / f"{name}.log").read_text(errors="replace").splitlines():
                print(f"[{name}] {line}")
            sys.stdout.flush()
            status = status or code
        time.sleep(0.5)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
