"""Run the test suite as two pytest processes side by side, each under coverage (what `nox -s tests` runs).

The tests marked `ray` (tests/backends/conftest.py marks those on the session's Ray cluster)
run in one process; everything else (tests/unit, tests/integration and the local backends of
tests/backends) in the other. Most of both waits on servers, subprocesses and Ray rather than
computing, so on a 2-core machine the two finish in about the time of the longer one. Each
process's output goes to its own log, printed whole when it ends (with a prefix per line), so a
failure reads as in a plain pytest run. A `-m EXPR` argument is combined with each group's
marker; other arguments go to both pytest runs; the exit status is the first non-zero one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROUPS = {
    "ray": (["tests/backends"], "ray"),
    "local": (["tests/unit", "tests/integration", "tests/backends"], "not ray"),
}
"""Each group's paths and marker expression."""


def split_marker(argv: list[str]) -> tuple[str | None, list[str]]:
    """The `-m` expression in `argv` (if any) and the other arguments."""
    marker, rest, args = None, [], iter(argv)
    for arg in args:
        if arg == "-m":
            marker = next(args)
        elif arg.startswith("-m") and len(arg) > 2:
            marker = arg[2:]
        else:
            rest.append(arg)
    return marker, rest


def main(argv: list[str]) -> int:
    logs = Path(tempfile.mkdtemp(prefix="servekit-tests-"))
    given, argv = split_marker(argv)
    running = {}
    for name, (paths, group_marker) in GROUPS.items():
        marker = group_marker if given is None else f"({given}) and ({group_marker})"
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
            "-m",
            marker,
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
