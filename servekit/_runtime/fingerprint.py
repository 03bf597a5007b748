"""A deployment node's fingerprint: what a redeploy compares to decide whether to roll replicas.

In: a graph node (its class or function, options and constructor arguments) and the source
files of the user's modules as they are on disk now. Out: hex digests; equal digests mean
nothing the replicas run has changed.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Collection

from servekit._runtime.user_modules import dependencies, read_source
from servekit._spec.graph import DeploymentNode


def fingerprint(node: DeploymentNode, ignore: Collection[str] = ()) -> str:
    """A digest of the node's code, options (but those named in `ignore`) and constructor arguments.

    The code is what `code_fingerprint` covers: a change to the defining module or to any user
    module it imports, directly or not, changes the fingerprint.
    """
    deployment = node.deployment
    digest = hashlib.sha256()
    digest.update(code_fingerprint(deployment.target).encode())
    options = deployment.config.model_dump(exclude=set(ignore))
    digest.update(repr(sorted(options.items(), key=lambda item: item[0])).encode())
    digest.update(repr((node.init_args, sorted(node.init_kwargs.items()))).encode())
    return digest.hexdigest()


def code_fingerprint(target: object) -> str:
    """A digest of the code `target` (a deployment's class or function) runs.

    It covers the source of the whole module that defines `target` (a change to a constant or
    helper beside it counts) and of every user module that module imports, transitively (not
    the standard library, installed packages or servekit); where the module has no source, the
    object's own source, and where there is none at all, the object's identity, so a reloaded
    object always counts as changed.
    """
    digest = hashlib.sha256()
    digest.update(_source(target).encode())
    module = inspect.getmodule(target)
    if module is not None:
        for name, path in dependencies(module).items():
            digest.update(f"\0{name}\0".encode())
            digest.update((read_source(path) or "<unreadable>").encode())
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
