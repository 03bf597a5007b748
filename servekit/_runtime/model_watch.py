"""Rolling hot-swap: pin each bound model tag to its version, and redeploy when a tag moves.

In: an app graph whose nodes bind `servekit.model(...)` references that follow tags. Out: the
same graph with each reference pinned to the version its tag names now (`pin_models`, run
before an app starts or redeploys, so an unknown tag or an unreachable store fails the start
with one line), and `ModelWatcher`, which polls the tags and hands a repinned graph to the
app's redeploy (rolling replicas, no dropped request) when one moves. Deployments whose class
defines `reconfigure_model(path)` are left to swap in place (see `servekit._replica.models`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping

from servekit._models.api import current_version
from servekit._replica.models import watch_period_s
from servekit._spec.graph import AppGraph, DeploymentNode
from servekit._spec.models import ModelRef, iter_model_refs, replace_model_refs

logger = logging.getLogger("servekit.models")

TagKey = tuple[str | None, str, str]
"""(store URL, model name, tag)."""


def tag_key(ref: ModelRef) -> TagKey:
    """The tag a reference follows."""
    return (ref.store, ref.name, ref.tag or "latest")


def swaps_in_place(node: DeploymentNode) -> bool:
    """Whether the node's class defines `reconfigure_model(path)` (its replicas follow tags themselves)."""
    deployment = node.deployment
    return not deployment.is_function and callable(getattr(deployment.target, "reconfigure_model", None))


def followed_tags(graph: AppGraph, rolling_only: bool = False) -> list[ModelRef]:
    """The tag-following references bound in `graph` (with `rolling_only`, of nodes that roll)."""
    refs: list[ModelRef] = []
    for node in graph.nodes.values():
        if rolling_only and swaps_in_place(node):
            continue
        refs.extend(ref for ref in iter_model_refs((node.init_args, node.init_kwargs)) if ref.follows_tag)
    return refs


def repin(graph: AppGraph, versions: Mapping[TagKey, str], rolling_only: bool = False) -> AppGraph:
    """`graph` with each tag-following reference pinned to `versions[its tag]` (where given)."""

    def pin(ref: ModelRef) -> ModelRef:
        version = versions.get(tag_key(ref)) if ref.follows_tag else None
        return ref if version is None else ref.pin(version)

    nodes = {}
    for name, node in graph.nodes.items():
        if rolling_only and swaps_in_place(node):
            nodes[name] = node
            continue
        args, kwargs = replace_model_refs(node.init_args, pin), replace_model_refs(node.init_kwargs, pin)
        nodes[name] = dataclasses.replace(node, init_args=args, init_kwargs=kwargs)
    return AppGraph(graph.ingress, nodes)


def current_versions(refs: list[ModelRef]) -> dict[TagKey, str]:
    """What each followed tag points to now (one store read per tag)."""
    versions: dict[TagKey, str] = {}
    for ref in refs:
        key = tag_key(ref)
        if key not in versions:
            versions[key] = current_version(ref)
    return versions


def pin_models(graph: AppGraph) -> AppGraph:
    """`graph` with every tag-following reference pinned to the version its tag names now."""
    refs = followed_tags(graph)
    return repin(graph, current_versions(refs)) if refs else graph


def moved_tags(graph: AppGraph, versions: Mapping[TagKey, str]) -> dict[TagKey, str]:
    """The tags of rolling nodes whose version differs from the one the graph is pinned to."""
    moved = {}
    for ref in followed_tags(graph, rolling_only=True):
        now = versions.get(tag_key(ref))
        if now is not None and now != ref.pinned:
            moved[tag_key(ref)] = now
    return moved


class ModelWatcher:
    """Polls the tags an app's rolling deployments follow; redeploys the app when one moves."""

    def __init__(
        self, graph: Callable[[], AppGraph], redeploy: Callable[[AppGraph], None], period_s: float
    ) -> None:
        self._graph = graph
        self._redeploy = redeploy
        self.period_s = period_s
        self._stop = threading.Event()
        self._failed: dict[TagKey, str] = {}
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="servekit-model-watch", daemon=True)

    @classmethod
    def for_graph(
        cls, graph: Callable[[], AppGraph], redeploy: Callable[[AppGraph], None]
    ) -> ModelWatcher | None:
        """A watcher for the app, or None when no rolling deployment follows a tag."""
        refs = followed_tags(graph(), rolling_only=True)
        if not refs:
            return None
        return cls(graph, redeploy, min(watch_period_s(ref) for ref in refs))

    def start(self) -> None:
        """Start polling on a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a redeploy in progress)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception:
                logger.warning("cannot poll the model store", exc_info=True)

    def check(self) -> bool:
        """Redeploy if a followed tag moved (to a version that did not fail before); True if it did."""
        graph = self._graph()
        moved = moved_tags(graph, current_versions(followed_tags(graph, rolling_only=True)))
        moved = {key: version for key, version in moved.items() if self._failed.get(key) != version}
        if not moved or self._stop.is_set():
            return False
        try:
            self._redeploy(repin(graph, moved, rolling_only=True))
        except Exception as exc:
            self._failed.update(moved)
            names = ", ".join(f"{name}:{tag} -> {version}" for (_, name, tag), version in moved.items())
            self.last_error = f"moving {names} failed, the old version keeps serving: {exc}"
            logger.error("%s", self.last_error)
            return False
        self.last_error = None
        return True
