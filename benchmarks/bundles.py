"""Bundles of the classifier example: build time, bundle size, and the time from
`servekit serve bundle.tar.gz` to the first 200 on /classify (cold: the archive unpacked and
verified into an empty cache; warm: the cache already there, verified again).

    python -m benchmarks.bundles                  # -> benchmarks/results/<date>-<host>-bundles.{md,json}
    python -m benchmarks.bundles --out /tmp/b     # elsewhere

Needs torch (the example's model), uv (`pip install 'servekit[build]'`) and the package registry
(the build resolves requirements.lock). Each figure is one run on an otherwise idle machine:
read it as an order of magnitude, not a precise number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "classifier"
BODY = {"text": "Is this thing on?"}


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, SERVEKIT_HOME=str(home), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _build(out: Path, env: dict[str, str]) -> tuple[float, Path, str]:
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_weights.py")], env=env, check=True, capture_output=True
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "build", f"{EXAMPLE}/app.py:app", "-o", str(out),
         "--include", "weights/model.pt", "--no-store"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    sha = re.search(r"sha256 ([0-9a-f]{64})", done.stdout)
    assert sha is not None, done.stdout
    return elapsed, Path(done.stdout.splitlines()[0]), sha.group(1)


def _first_200(archive: Path, env: dict[str, str]) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/classify"
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "servekit", "serve", str(archive), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while True:
            try:
                if httpx.post(url, json=BODY, timeout=5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"servekit serve exited with {server.returncode}")
            if time.perf_counter() - started > 120:
                raise RuntimeError("no 200 within 120 s")
            time.sleep(0.01)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def measure() -> dict[str, object]:
    """One build and two serves (cold and warm cache) of the classifier example."""
    with tempfile.TemporaryDirectory(prefix="servekit-bench-bundles-") as folder:
        env = _env(Path(folder) / "home")
        build_s, archive, sha = _build(Path(folder) / "dist", env)
        size = archive.stat().st_size
        cold_s = _first_200(archive, env)
        warm_s = _first_200(archive, env)
        files = len(json.loads(subprocess.run(
            [sys.executable, "-m", "servekit", "bundles", "show", str(archive), "--json"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout)["files"])  # fmt: skip
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()}: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "bundle": archive.name,
        "sha256": sha,
        "files": files,
        "build_s": round(build_s, 2),
        "size_bytes": size,
        "first_200_cold_s": round(cold_s, 2),
        "first_200_warm_s": round(warm_s, 2),
    }


def report(result: dict[str, object]) -> str:
    """The result as a markdown page."""
    return "\n".join(
        [
            f"# Bundles: the classifier example ({result['date']})",
            "",
            f"Machine: {result['machine']}. One run each (`python -m benchmarks.bundles`).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| `servekit build` (uv lock resolution included) | {result['build_s']} s |",
            f"| bundle size ({result['files']} files, `{result['bundle']}`) | "
            f"{result['size_bytes']:,} bytes |",
            f"| `servekit serve bundle.tar.gz` to first 200, cold cache (unpack + verify) | "
            f"{result['first_200_cold_s']} s |",
            f"| the same, warm cache (verify only) | {result['first_200_warm_s']} s |",
            "",
            f"sha256 `{result['sha256']}`",
            "",
        ]
    )


def main() -> None:
    """Measure and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default=None, help="results path without suffix")
    args = parser.parse_args()
    result = measure()
    stem = Path(args.out or ROOT / "benchmarks" / "results" / f"{result['date']}-{platform.node()}-bundles")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
