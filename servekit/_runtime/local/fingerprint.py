"""A deployment node's fingerprint: what a redeploy compares to decide whether to roll replicas."""

from __future__ import annotations

import hashlib
import inspect

from servekit._spec.graph import DeploymentNode


def fingerprint(node: DeploymentNode) -> str:
    """A digest of the node's code, options and constructor arguments.

    The code is the source of the class or function (and of what it is defined with, for a
    class: every method); where no source is available the object's identity stands in, so a
    reloaded object without source always counts as changed.
    """
    deployment = node.deployment
    digest = hashlib.sha256()
    digest.update(_source(deployment.target).encode())
    digest.update(repr(sorted(deployment.config.model_dump().items(), key=lambda item: item[0])).encode())
    digest.update(repr((node.init_args, sorted(node.init_kwargs.items()))).encode())
    return digest.hexdigest()


def _source(target: object) -> str:
    try:
        return inspect.getsource(target)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return f"<no source: id {id(target)}>"
