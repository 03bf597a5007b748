"""The classifier graph on Ray Serve: the same app code, with `backend="ray"`.

    python examples/ray_backend.py                  # starts a local Ray, stops it at the end
    python examples/ray_backend.py --address auto   # joins a running cluster (so does RAY_ADDRESS)

Needs `pip install -e '.[ray,torch]'`. The same app over HTTP, through Ray Serve's proxy:

    servekit serve examples/classifier/app.py:app --backend ray --port 8000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "classifier"))

from app import Req, app

import servekit as sk

TEXTS = ["Is this thing on?", "WE ARE LIVE!", "The sky is blue."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="a Ray cluster to join (auto, host:port, ray://...)")
    args = parser.parse_args()
    with sk.run(app, backend="ray", address=args.address) as pipeline:
        for text in TEXTS:
            print(f"{text}: {pipeline.classify(Req(text=text)).result(timeout=60).label}")
        for name, deployment in pipeline.status()["deployments"].items():
            nodes = sorted({replica["node_ip"] for replica in deployment["replicas"]})
            print(f"{name}: {deployment['running_replicas']} replica(s) on {', '.join(nodes)}")


if __name__ == "__main__":
    main()
