"""The `@deployment` decorator, `Deployment` (a class or function plus its config) and `Application`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack, overload

from servekit._spec.config import DeploymentConfig, DeploymentOptions, parse_config
from servekit.errors import DeploymentOptionError


class Deployment:
    """A class or function to serve, with its validated options. Make one with `@servekit.deployment`."""

    def __init__(self, target: type | Callable[..., Any], config: DeploymentConfig) -> None:
        self._target = target
        self._config = config

    @property
    def target(self) -> type | Callable[..., Any]:
        """The user's class or function."""
        return self._target

    @property
    def config(self) -> DeploymentConfig:
        """The validated options."""
        return self._config

    @property
    def name(self) -> str:
        """The deployment's name: the `name` option, else the class or function name."""
        return self._config.name or self._target.__name__

    @property
    def is_function(self) -> bool:
        """Whether the deployment wraps a plain function rather than a class."""
        return not inspect.isclass(self._target)

    def options(self, **options: Unpack[DeploymentOptions]) -> Deployment:
        """Return a copy with `options` changed (same names as `@deployment`), validated now."""
        return Deployment(self._target, self._config.updated(self.name, **options))

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """Bind constructor arguments, making a node of an application graph.

        Bound deployments among the arguments (also inside lists, tuples and dicts) arrive in
        `__init__` as handles. Binding the same deployment twice makes two nodes.
        """
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"deployment {self.name!r} cannot be called directly; "
            f"use {self.name}.bind(...) to build an app, then servekit.run(app) or servekit.serve(app)"
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"


@dataclass(eq=False)
class Application:
    """A deployment bound to constructor arguments: one node of an application graph.

    The node passed to `servekit.run` / `servekit.serve` is the ingress.
    """

    deployment: Deployment
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Application(ingress={self.deployment.name!r})"


@overload
def deployment(target: type, /) -> Deployment: ...
@overload
def deployment(target: Callable[..., Any], /) -> Deployment: ...
@overload
def deployment(
    target: None = None, /, **options: Unpack[DeploymentOptions]
) -> Callable[[Any], Deployment]: ...


def deployment(
    target: type | Callable[..., Any] | None = None, /, **options: Unpack[DeploymentOptions]
) -> Deployment | Callable[[Any], Deployment]:
    """Mark a class or function as a deployment, with or without options.

    ```python
    @servekit.deployment(num_replicas=2, max_ongoing_requests=64)
    class Model: ...
    ```

    Options are those of `DeploymentConfig`; a bad one raises `DeploymentOptionError` here,
    naming the option, the value and what is allowed.
    """

    def decorate(obj: Any) -> Deployment:
        if isinstance(obj, Deployment):
            raise DeploymentOptionError(f"{obj.name!r} is already a deployment; use .options(...)")
        if not callable(obj):
            raise DeploymentOptionError(
                f"@deployment applies to a class or a function, got {type(obj).__name__}"
            )
        owner = options.get("name") or getattr(obj, "__name__", repr(obj))
        return Deployment(obj, parse_config(str(owner), options))

    if target is None:
        return decorate
    if options:
        raise DeploymentOptionError("use @deployment(...) with options, or bare @deployment")
    return decorate(target)
