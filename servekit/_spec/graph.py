"""Build an app graph from bound deployments: unique node names, cycle and signature checks."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from servekit._spec.deployment import Application, Deployment
from servekit._spec.models import ModelRef
from servekit._spec.routing import RouterNode, Split
from servekit.errors import GraphError


@dataclass(frozen=True)
class HandleRef:
    """Stands in a node's constructor arguments for the handle of another node."""

    deployment: str


@dataclass(frozen=True)
class DeploymentNode:
    """One deployment of a built graph: unique name, arguments (handles as `HandleRef`)."""

    name: str
    deployment: Deployment
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    dependencies: tuple[str, ...]


@dataclass(frozen=True)
class AppGraph:
    """A validated graph: nodes in start order (dependencies first) and the ingress node's name."""

    ingress: str
    nodes: dict[str, DeploymentNode]
    routers: dict[str, RouterNode] = field(default_factory=dict)
    """Traffic-split routers by name; a `HandleRef` names a router or a deployment."""

    @property
    def ingress_node(self) -> DeploymentNode:
        """The node that receives HTTP requests and whose handle `run` returns."""
        return self.nodes[self.ingress]


def build_graph(app: object) -> AppGraph:
    """Validate `app` and turn it into an `AppGraph`; raises `GraphError` naming the deployment."""
    if isinstance(app, Deployment):
        raise GraphError(
            f"deployment {app.name!r} is not bound: pass {app.name}.bind(...) to run or serve it"
        )
    if not isinstance(app, Application):
        raise GraphError(
            f"no ingress: expected an application made with Deployment.bind(...), got {type(app).__name__}"
        )
    builder = _GraphBuilder()
    ingress = builder.visit(app, path=())
    clashes = sorted(set(builder.routers) & set(builder.nodes))
    if clashes:
        raise GraphError(f"router name {clashes[0]!r} is also a deployment's name; name the split otherwise")
    return AppGraph(ingress=ingress, nodes=builder.nodes, routers=builder.routers)


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: dict[str, DeploymentNode] = {}
        self.routers: dict[str, RouterNode] = {}
        self._splits: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._taken: set[str] = set()

    def visit(self, app: Application, path: tuple[Application, ...]) -> str:
        if any(app is seen for seen in path):
            cycle = " -> ".join(node.deployment.name for node in (*path, app))
            raise GraphError(f"the graph has a cycle: {cycle}")
        if id(app) in self._names:
            return self._names[id(app)]
        name = self._unique_name(app.deployment.name)
        self._names[id(app)] = name
        _check_signature(app)
        dependencies: list[str] = []
        args = tuple(self._replace(a, (*path, app), dependencies) for a in app.args)
        kwargs = {k: self._replace(v, (*path, app), dependencies) for k, v in app.kwargs.items()}
        self.nodes[name] = DeploymentNode(name, app.deployment, args, kwargs, tuple(dependencies))
        return name

    def _replace(self, value: Any, path: tuple[Application, ...], found: list[str]) -> Any:
        if isinstance(value, Application):
            name = self.visit(value, path)
            found.append(name)
            return HandleRef(name)
        if isinstance(value, Split):
            return HandleRef(self.visit_split(value, path, found))
        if isinstance(value, Deployment):
            owner = path[-1].deployment.name
            raise GraphError(
                f"deployment {owner!r} got the unbound deployment {value.name!r} as an argument; "
                f"pass {value.name}.bind(...) instead"
            )
        if isinstance(value, list | tuple):
            replaced = [self._replace(item, path, found) for item in value]
            return replaced if isinstance(value, list) else type(value)(replaced)
        if isinstance(value, dict):
            return {key: self._replace(item, path, found) for key, item in value.items()}
        return value

    def visit_split(self, split: Split, path: tuple[Application, ...], found: list[str]) -> str:
        """Register `split` as a router (once per object); its arms become nodes the caller depends on."""
        name = self._splits.get(id(split))
        if name is None:
            if split.name is not None and split.name in self.routers:
                raise GraphError(
                    f"two different splits are named {split.name!r}; router names must be unique"
                )
            name = split.name or self._unique_name("split")
            self._taken.add(name)
            self._splits[id(split)] = name
            arms = {arm: self.visit(app, path) for arm, app in split.arms.items()}
            shadows = {arm: self.visit(app, path) for arm, app in split.shadow.items()}
            self.routers[name] = RouterNode(
                name,
                arms,
                dict(split.weights),
                split.sticky,
                shadows,
                split.shadow_fraction,
                split.on_unavailable,
                split.output,
                split.canary,
            )
        found.extend(self.routers[name].all_arms.values())
        return name

    def _unique_name(self, base: str) -> str:
        name, counter = base, 0
        while name in self._taken:
            counter += 1
            name = f"{base}_{counter}"
        self._taken.add(name)
        return name


def _check_signature(app: Application) -> None:
    deployment = app.deployment
    if deployment.is_function:
        if app.args or app.kwargs:
            raise GraphError(f"deployment {deployment.name!r} is a function and takes no bind() arguments")
        return
    try:
        inspect.signature(deployment.target).bind(*app.args, **app.kwargs)
    except TypeError as exc:
        raise GraphError(
            f"deployment {deployment.name!r}: bind() arguments do not match "
            f"__init__{inspect.signature(deployment.target)}: {exc}"
        ) from None


def iter_handle_refs(value: Any) -> Iterator[HandleRef]:
    """Every `HandleRef` inside `value` (nested lists, tuples and dicts)."""
    if isinstance(value, HandleRef):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_handle_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_handle_refs(item)


def with_handles(value: Any, make_handle: Callable[[str], Any]) -> Any:
    """`value` with every `HandleRef` (also in nested lists, tuples and dicts) replaced by a handle.

    `make_handle` gets the deployment name; each backend passes its own handle factory.
    """
    if isinstance(value, HandleRef):
        return make_handle(value.deployment)
    if isinstance(value, list | tuple):
        replaced = [with_handles(item, make_handle) for item in value]
        return replaced if isinstance(value, list) else type(value)(replaced)
    if isinstance(value, dict):
        return {key: with_handles(item, make_handle) for key, item in value.items()}
    return value


def map_model_refs(app: Application, change: Callable[[ModelRef], ModelRef]) -> Application:
    """A copy of the application `app` with every bound `ModelRef` replaced by `change(ref)`.

    The copy has the same shape: a node (or split) bound in two places is one node in the copy,
    and the user's objects are left as they are.
    """
    copies: dict[int, Any] = {}

    def copy(value: Any) -> Any:
        if isinstance(value, ModelRef):
            return change(value)
        if isinstance(value, Application | Split):
            if id(value) not in copies:
                copies[id(value)] = _copied(value, copies, copy)
            return copies[id(value)]
        if isinstance(value, list | tuple):
            replaced = [copy(item) for item in value]
            return replaced if isinstance(value, list) else type(value)(replaced)
        if isinstance(value, dict):
            return {key: copy(item) for key, item in value.items()}
        return value

    copied: Application = copy(app)
    return copied


def _copied(value: Application | Split, copies: dict[int, Any], copy: Callable[[Any], Any]) -> Any:
    """A copy of one node or split, registered in `copies` before its arguments are copied (so a
    cycle stays a cycle, for `build_graph` to report)."""
    if isinstance(value, Application):
        node = Application(value.deployment)
        copies[id(value)] = node
        node.args = tuple(copy(item) for item in value.args)
        node.kwargs = {key: copy(item) for key, item in value.kwargs.items()}
        return node
    split = dataclasses.replace(value)
    copies[id(value)] = split
    split.arms = {arm: copy(item) for arm, item in value.arms.items()}
    split.shadow = {arm: copy(item) for arm, item in value.shadow.items()}
    return split
