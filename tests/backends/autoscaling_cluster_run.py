"""Run an app that needs a node the cluster does not have on a real autoscaling Ray cluster.

Run as a script (a Ray driver joins one cluster per process, and the test process has its own):
``python autoscaling_cluster_run.py RESULT.json``. It starts a local Ray head with an
autoscaling config whose node provider is Ray's fake multi-node provider (it launches "nodes"
as Ray processes on this machine, the way a cloud provider launches machines), runs an app
whose replica needs a `late_node` resource that only the provider's "late-worker" node type
has, and writes what happened: the node the replica ran on, and servekit's log. Everything
it started is stopped before it exits, the launched node included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

os.environ["RAY_FAKE_CLUSTER"] = "1"  # allows the fake provider; read by Ray's processes
os.environ["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"
os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"] = "5"  # noqa: SIM112 (Ray config names are lower case)

import psutil
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.experimental.internal_kv import _internal_kv_get

import servekit as sk

LATE_WORKER = {"resources": {"CPU": 1, "late_node": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}


@sk.deployment(resources=sk.Resources(cpus=0.1, custom={"late_node": 1}))
class OnLateNode:
    def __call__(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def autoscaling_config(gcs_address: str) -> dict[str, Any]:
    """A cluster config for the fake provider: a 2-CPU head and up to one late-worker."""
    return {
        "cluster_name": "servekit-autoscaling-test",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "late-worker": LATE_WORKER,
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        **{key: {} for key in ("auth", "docker", "file_mounts")},
        **{
            key: []
            for key in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
            )
        },
        "file_mounts_sync_continuously": False,
    }


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_leftovers(started: list[psutil.Process], session_dir: str, within_s: float) -> list[int]:
    """Wait for the processes of this script's Ray session to exit (`started`: found while it ran,
    with their children, which rename themselves; and any still naming the session); kill those
    that have not within `within_s`. Returns the pids killed."""
    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in {*started, *session_processes(session_dir)} if _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return [process.pid for process in left]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_processes(session_dir: str) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess):
            if session_dir in " ".join(process.info["cmdline"] or ()):
                found[process.pid] = process
                found.update((child.pid, child) for child in process.children(recursive=True))
    return list(found.values())


def wait_for_the_autoscaler(within_s: float) -> None:
    """Wait until the autoscaler has reported once (on a real cluster it has long since)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = _internal_kv_get("__autoscaling_status")
        if status and "autoscaler_report" in json.loads(status):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the autoscaler did not report within {within_s} s")


def main(result_path: Path, work: Path) -> None:
    port = free_port()
    gcs_address = f"{ray._private.services.get_node_ip_address()}:{port}"
    config_path = work / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(autoscaling_config(gcs_address)))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "gcs_server_port": port,
            "num_cpus": 2,
            "autoscaling_config": str(config_path),
            "include_dashboard": False,
        },
    )
    session_dir = cluster.head_node.get_session_dir_path()
    recorder = Recorder()
    logging.getLogger("servekit.ray").addHandler(recorder)
    logging.getLogger("servekit.ray").setLevel(logging.INFO)
    result: dict[str, Any] = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        wait_for_the_autoscaler(within_s=60)
        started = time.monotonic()
        with sk.run(OnLateNode.bind(), backend="ray", start_timeout_s=150) as handle:
            result["start_s"] = time.monotonic() - started
            node_id = handle().result(timeout=30)
            resources = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
            result["ran_on"] = resources.get(node_id, {})
    finally:
        result["log"] = recorder.lines
        started_processes = session_processes(session_dir)
        ray.shutdown()
        cluster.shutdown()
        result["killed"] = stop_leftovers(started_processes, session_dir, within_s=10)
        result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[1]).parent)
