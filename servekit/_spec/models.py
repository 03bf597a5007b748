"""`servekit.model(...)`: a reference to a model version in a store, bound like any argument.

In: a model name and a tag or version (and optionally the store's URL). Out: a frozen
`ModelRef` that the replica turns into a local path before calling the constructor, and
`model_refs(...)`, which lists the references in a graph's arguments (for bundles and the
hot-swap watcher). Pure data: nothing here touches a store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from servekit.errors import DeploymentOptionError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Model names, versions and tags: a letter or digit, then letters, digits, '.', '_' or '-'."""


@dataclass(frozen=True)
class ModelRef:
    """A model version in a store: by `tag` (which may move) or by fixed `version`.

    `pinned` is the version a tag resolved to when the app was (re)deployed; the runtime sets
    it so a moved tag changes the node's arguments and rolls its replicas.
    """

    name: str
    tag: str | None = None
    version: str | None = None
    store: str | None = None
    """The store's URL; None: ``SERVEKIT_MODEL_STORE`` or ``~/.servekit/models`` where the replica runs."""
    pinned: str | None = None
    watch_s: float | None = None
    """How often the tag is polled while the app runs (default ``SERVEKIT_MODEL_WATCH_S`` or 2 s)."""

    @property
    def target(self) -> str:
        """What the reference names, like ``"clf:production"`` or ``"clf@v7"``."""
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}:{self.tag}"

    @property
    def follows_tag(self) -> bool:
        """Whether the reference follows a tag (and so may move while the app runs)."""
        return self.version is None

    def pin(self, version: str) -> ModelRef:
        """The same reference, pinned to `version` (what its tag points to now)."""
        return replace(self, pinned=version)

    def __repr__(self) -> str:
        pinned = "" if self.pinned is None else f" -> {self.pinned}"
        return f"servekit.model({self.target!r}{pinned})"


def model(
    name: str,
    *,
    tag: str | None = None,
    version: str | None = None,
    store: str | None = None,
    watch_s: float | None = None,
) -> ModelRef:
    """Reference a model version in the store, for `.bind(...)`: the constructor gets its local path.

    ```python
    app = Classifier.bind(servekit.model("clf", tag="production"))
    ```

    Give a `tag` (it may move: bound deployments follow it while the app runs) or a fixed
    `version`; with neither, the tag ``"latest"``. `store` is the store's URL (any fsspec URL);
    by default ``SERVEKIT_MODEL_STORE``, else ``~/.servekit/models``. `watch_s` is how often
    the tag is polled while the app runs (default ``SERVEKIT_MODEL_WATCH_S``, else 2 s).
    """
    if tag is not None and version is not None:
        raise DeploymentOptionError(
            f"servekit.model({name!r}): give a tag or a version, not both "
            f"(got tag={tag!r}, version={version!r})"
        )
    for what, value in (("name", name), ("tag", tag), ("version", version)):
        if value is not None and not NAME.match(value):
            raise DeploymentOptionError(
                f"servekit.model: bad {what} {value!r}; use letters, digits, '.', '_' and '-', like 'clf-v7'"
            )
    if tag is None and version is None:
        tag = "latest"
    if watch_s is not None and not watch_s > 0:
        raise DeploymentOptionError(f"servekit.model({name!r}): watch_s must be > 0 seconds, got {watch_s!r}")
    return ModelRef(name, tag, version, store, watch_s=watch_s)


def iter_model_refs(value: Any) -> Iterator[ModelRef]:
    """Every `ModelRef` inside `value` (nested lists, tuples and dicts)."""
    if isinstance(value, ModelRef):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_model_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_model_refs(item)


def replace_model_refs(value: Any, change: Any) -> Any:
    """`value` with every `ModelRef` replaced by `change(ref)` (also in nested lists, tuples and dicts)."""
    if isinstance(value, ModelRef):
        return change(value)
    if isinstance(value, list | tuple):
        replaced = [replace_model_refs(item, change) for item in value]
        return replaced if isinstance(value, list) else type(value)(replaced)
    if isinstance(value, dict):
        return {key: replace_model_refs(item, change) for key, item in value.items()}
    return value


def model_refs(nodes: Mapping[str, Any]) -> dict[str, list[ModelRef]]:
    """The model references bound in each node of a graph (`AppGraph.nodes`), nodes without any left out."""
    found: dict[str, list[ModelRef]] = {}
    for name, node in nodes.items():
        refs = [*iter_model_refs(node.init_args), *iter_model_refs(node.init_kwargs)]
        if refs:
            found[name] = refs
    return found
