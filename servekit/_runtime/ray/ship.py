"""What travels to Ray replicas: a `ReplicaSpec`, cloudpickled with the user's own code by value.

Ray workers import servekit and installed packages as usual, but not the user's modules (a
file served as ``app.py``, a notebook, a test folder): those are pickled by value, so the
same app runs on a local Ray and on a remote cluster without shipping a working directory.
The spec travels once per deployment (`pack`); while the app runs, `UserCode` also has Ray's
own pickler send the user's types by value (a pydantic model passed to a handle call, say).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ray import cloudpickle as ray_cloudpickle

from servekit._spec.graph import DeploymentNode
from servekit._spec.routing import RouterNode
from servekit._telemetry.logs import LogFormat
from servekit._telemetry.tracing import TracingSettings


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything one Ray Serve deployment needs to run a servekit deployment's replicas."""

    node: DeploymentNode
    app_name: str
    methods: Mapping[str, Mapping[str, bool]]
    """Public methods of every deployment of the app, and whether each streams (for handles)."""
    idempotent: Mapping[str, frozenset[str]]
    """Methods safe to retry on another replica, per deployment."""
    versions: Mapping[str, str | None] = field(default_factory=dict)
    """Each deployment's `version` label, shown in status."""
    build_app: Callable[[Any], Any] | None = None
    """For the ingress served over HTTP: builds its ASGI app from the replica's `ServingRuntime`."""
    timeouts: Mapping[str, float | None] = field(default_factory=dict)
    """Each deployment's `request_timeout_s`, applied by the callers of its replicas."""
    routers: Mapping[str, RouterNode] = field(default_factory=dict)
    node_names: frozenset[str] = frozenset()
    """Every deployment of the app."""
    """The app's traffic-split routers: handles to them route in the replica (state: the actor)."""
    annotation_names: Mapping[str, Any] = field(default_factory=dict)
    """Names the target's string annotations use (`from __future__ import annotations`), which
    a function pickled by value does not carry in its globals; see `restore_annotation_names`."""
    tracing: TracingSettings | None = None
    """How the replica traces (None: it does not)."""
    log_format: LogFormat | None = None
    """How the replica's process logs, when servekit configures it there (None: Ray's way)."""


def pack(spec: ReplicaSpec, modules: list[ModuleType]) -> bytes:
    """`spec` as bytes, `modules` (the user's, from `user_modules`) pickled by value.

    Ray's own cloudpickle does it, so a class sent by value and sent back (a user exception
    raised in a replica, say) is the caller's class again, not a copy.
    """
    with by_value(ray_cloudpickle, modules):
        blob: bytes = ray_cloudpickle.dumps(spec)  # type: ignore[no-untyped-call]
    return blob


class UserCode:
    """Ray's pickler sends `modules` by value from this process until `close()`."""

    def __init__(self, modules: list[ModuleType]) -> None:
        self._registration = by_value(ray_cloudpickle, modules)
        self._registration.__enter__()

    def close(self) -> None:
        """Back to Ray's usual pickling by reference."""
        self._registration.__exit__(None, None, None)


def unpack(blob: bytes) -> ReplicaSpec:
    """The inverse of `pack`, run in the replica."""
    spec = ray_cloudpickle.loads(blob)
    if not isinstance(spec, ReplicaSpec):
        raise TypeError(f"expected a ReplicaSpec, got {type(spec).__name__}")
    return spec


@contextlib.contextmanager
def by_value(pickler: Any, modules: list[ModuleType]) -> Iterator[None]:
    registered = []
    for module in modules:
        if module.__name__ in pickler.list_registry_pickle_by_value():
            continue  # the user registered it: theirs to undo
        pickler.register_pickle_by_value(module)
        registered.append(module)
    try:
        yield
    finally:
        for module in registered:
            pickler.unregister_pickle_by_value(module)


def user_modules(nodes: Iterable[DeploymentNode]) -> list[ModuleType]:
    """The user's modules the app may reach: those not installed, under the folders of its code."""
    homes = {
        _module_folder(sys.modules.get(getattr(node.deployment.target, "__module__", ""))) for node in nodes
    }
    roots = [home for home in homes if home is not None]
    found = []
    for module in list(sys.modules.values()):
        folder = _module_folder(module)
        if folder is not None and any(folder.is_relative_to(root) for root in roots):
            found.append(module)
    return found


def _module_folder(module: ModuleType | None) -> Path | None:
    """The folder of a user module; None for `__main__`, built-in, installed or servekit modules."""
    file = getattr(module, "__file__", None)
    if module is None or not file or module.__name__ == "__main__":  # cloudpickle ships __main__ itself
        return None
    if module.__name__.split(".")[0] == "servekit":
        return None
    path = Path(file).resolve()
    if any(path.is_relative_to(root) for root in _installed_roots()):
        return None
    return path.parent


def _installed_roots() -> tuple[Path, ...]:
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)}
    return tuple(Path(path).resolve() for path in paths)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def annotation_names(target: object) -> dict[str, Any]:
    """The module-level objects named in the string annotations of `target`'s functions.

    The HTTP edge reads endpoint signatures with `typing.get_type_hints`, which evaluates
    string annotations in the function's globals; cloudpickle ships only the globals a
    function's code uses, so a model named only in an annotation would be missing there.
    """
    module = sys.modules.get(getattr(target, "__module__", ""))
    if module is None:
        return {}
    names: dict[str, Any] = {}
    for func in _functions(target):
        for annotation in getattr(func, "__annotations__", {}).values():
            if not isinstance(annotation, str):
                continue
            for name in _IDENTIFIER.findall(annotation):
                if name in module.__dict__ and name not in names:
                    names[name] = module.__dict__[name]
    return names


def restore_annotation_names(target: object, names: Mapping[str, Any]) -> None:
    """Give `target`'s by-value functions the names their annotations use (in the replica)."""
    for func in _functions(target):
        namespace = getattr(func, "__globals__", None)
        if isinstance(namespace, dict):
            for name, value in names.items():
                namespace.setdefault(name, value)


def _functions(target: object) -> list[Any]:
    if not isinstance(target, type):
        return [target]
    found = []
    for value in vars(target).values():
        func = getattr(value, "__func__", value)  # staticmethod / classmethod
        func = inspect.unwrap(func) if callable(func) else func
        if inspect.isfunction(func):
            found.append(func)
    return found
