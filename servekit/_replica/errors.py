"""Make an exception raised in user code name its deployment while keeping its type."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, cast

from servekit.errors import ServekitError, UserCodeError

_DEPLOYMENT_ATTR = "_servekit_deployment"


def attribute_to_deployment(exc: Exception, deployment: str) -> Exception:
    """An exception like `exc` whose message names `deployment`.

    The result is an instance of a subclass of both `type(exc)` and `UserCodeError`, so callers
    can still `except ValueError`. servekit's own errors, and exceptions already attributed to
    a deployment further down the graph, pass through unchanged. Where the type cannot be
    subclassed, the original gets a note naming the deployment instead.
    """
    if isinstance(exc, ServekitError | UserCodeError):
        return exc
    try:
        attributed = _attributed_type(cast(Hashable, type(exc)))
        new: Any = attributed.__new__(attributed, *exc.args)
        new.args = exc.args
        new.__dict__.update(exc.__dict__)
    except TypeError:
        exc.add_note(f"raised in deployment {deployment!r}")
        return exc
    setattr(new, _DEPLOYMENT_ATTR, deployment)
    new.message = str(new)
    return new.with_traceback(exc.__traceback__)  # type: ignore[no-any-return]


def deployment_of(exc: BaseException) -> str | None:
    """The deployment an attributed exception came from, if known."""
    name = getattr(exc, _DEPLOYMENT_ATTR, None)
    return name if isinstance(name, str) else None


@functools.lru_cache(maxsize=512)
def _attributed_type(cls: Any) -> type[Exception]:
    def __str__(self: Exception) -> str:
        return f"deployment {deployment_of(self)!r}: {cls.__str__(self)}"

    def __reduce__(self: Exception) -> tuple[Any, ...]:
        return (_rebuild, (cls, self.args, dict(self.__dict__)))

    namespace = {"__str__": __str__, "__reduce__": __reduce__, "__module__": cls.__module__}
    return type(cls.__name__, (cls, UserCodeError), namespace)


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    attributed = _attributed_type(cast(Hashable, cls))
    new: Any = attributed.__new__(attributed, *args)
    new.args = args
    new.__dict__.update(state)
    return new  # type: ignore[no-any-return]
