"""`servekit deploy BUNDLE --address ...`: a verified bundle in, its app running on a Ray cluster out.

The bundle's own `ray/serve_config.yaml` is what is applied, with the app's name, the bundle's
identity (name, version, sha256, shown by `servekit status --address`) and, as working_dir, the
bundle folder, which Ray uploads to the cluster. The same bundle again changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from servekit._bundle.deploy_files import yaml_text
from servekit._bundle.store import find, open_bundle
from servekit.errors import BundleError

DEPLOY_TIMEOUT_S = 600.0


def deploy_config(bundle: str, name: str | None, http_port: int | None = None) -> tuple[Path, dict[str, Any]]:
    """The verified bundle folder, and the Serve config (one application) to apply for it."""
    opened = open_bundle(str(find(bundle)))
    manifest = opened.manifest
    config: dict[str, Any] = yaml.safe_load((opened.folder / "ray" / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    app_name = name or manifest.name
    identity = {"name": manifest.name, "version": manifest.version, "sha256": opened.sha256 or "-"}
    app.update(name=app_name, args={"app_name": app_name, "bundle": identity})
    app["runtime_env"] = {"working_dir": str(opened.folder)}
    if http_port is not None:
        config["http_options"]["port"] = http_port
    return opened.folder, config


def deploy(
    bundle: str, address: str, name: str | None, *, dry_run: bool, http_port: int | None = None
) -> int:
    """Deploy `bundle` to the Ray cluster at `address` (or with `dry_run` print the config); exit code."""
    from servekit._runtime.backends import cluster_backend  # noqa: PLC0415

    folder, config = deploy_config(bundle, name, http_port)
    if dry_run:
        print(f"# servekit deploy would apply (working_dir {folder} is uploaded to the cluster)")
        print(yaml_text(config), end="")
        return 0
    (app,) = config["applications"]
    try:
        changed = cluster_backend().deploy_config(
            address, folder, app, config["http_options"], DEPLOY_TIMEOUT_S
        )
    except ImportError as exc:
        raise BundleError(f"deploying to Ray: {exc}") from None
    identity = app["args"]["bundle"]
    what = "deployed" if changed else "already running (nothing to do):"
    print(f"servekit: {what} {identity['name']} {identity['version']} as app {app['name']!r} on {address}")
    print(f"  sha256 {identity['sha256']}", file=sys.stdout)
    return 0
