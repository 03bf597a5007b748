"""A deployment node's fingerprint: what a redeploy compares to decide whether to roll replicas."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Collection

from servekit._spec.graph import DeploymentNode


def fingerprint(node: DeploymentNode, ignore: Collection[str] = ()) -> str:
    """A digest of the node's code, options (but those named in `ignore`) and constructor arguments.

    The code is the source of the whole module that defines the class or function (a change
    to a constant or helper beside it counts), else of the object itself; where no source is
    available the object's identity stands in, so a reloaded object always counts as changed.
    """
    deployment = node.deployment
    digest = hashlib.sha256()
    digest.update(_source(deployment.target).encode())
    options = deployment.config.model_dump(exclude=set(ignore))
    digest.update(repr(sorted(options.items(), key=lambda item: item[0])).encode())
    digest.update(repr((node.init_args, sorted(node.init_kwargs.items()))).encode())
    return digest.hexdigest()


def _source(target: object) -> str:
    for holder in (inspect.getmodule(target), target):
        if holder is None:
            continue
        try:
            return inspect.getsource(holder)  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
    return f"<no source: id {id(target)}>"
