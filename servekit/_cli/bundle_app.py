"""A verified bundle folder in, its app out: for `servekit serve BUNDLE`, and as the application
builder that Ray Serve calls when its own `serve deploy` runs a bundle's `ray/serve_config.yaml`
(Ray sets the bundle as the working directory)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from servekit._bundle.manifest import Manifest, verify
from servekit._bundle.models import MODELS_DIR, serve_models_from
from servekit._bundle.store import check_servekit_version
from servekit._cli.target import TargetError, load_app
from servekit._http.app import build_asgi_app
from servekit._runtime.backends import cluster_backend
from servekit._runtime.interface import HttpIngress
from servekit._spec.deployment import Application
from servekit._spec.graph import build_graph
from servekit.errors import BundleError


def load_bundle_app(folder: Path, manifest: Manifest, models_store: str | None = None) -> Application:
    """Import the app of the bundle unpacked at `folder` (its `src/` first on `sys.path`), its model
    references pinned to the versions in the bundle's `models/` (or `models_store`, the same folder
    as the replicas will find it) unless SERVEKIT_MODEL_STORE or a reference's `store=` says otherwise."""
    src = (folder / "src").resolve()
    if sys.path[:1] != [str(src)]:
        sys.path.insert(0, str(src))
    location, _, attribute = manifest.entrypoint.partition(":")
    target = f"{src / location}:{attribute}" if location.endswith(".py") else manifest.entrypoint
    try:
        app = load_app(target)
    except TargetError as exc:
        raise BundleError(f"the bundle's app {manifest.entrypoint!r} does not load: {exc}") from None
    return serve_models_from(app, manifest.models, models_store or str(folder / MODELS_DIR))


def build(args: dict[str, Any] | None = None) -> Any:
    """Ray Serve's application builder: the bundle in the current directory as a Serve app.

    `args` may name the Serve application (`app_name`; by default the bundle's name) and say which
    bundle it is (`bundle`: name, version, sha256, which status shows).
    """
    folder = Path.cwd()
    manifest = verify(folder)
    check_servekit_version(manifest, str(folder))
    # Ray starts every replica in its node's copy of the working_dir: a relative store finds it there.
    graph = build_graph(load_bundle_app(folder, manifest, models_store=MODELS_DIR))
    http = HttpIngress("0.0.0.0", 8000, build_asgi_app)
    name = str((args or {}).get("app_name") or manifest.name)
    return cluster_backend().application(graph, http, name)
