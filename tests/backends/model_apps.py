"""Apps bound to model versions in a store, for the hot-swap suite (no state shared with the test).

`Rolling` swaps by rolling replicas (it has no `reconfigure_model`); `InPlace` swaps in place.
Both answer with the weights' text and the version their replica context names; weights that
read "broken" fail to load.
"""

from __future__ import annotations

from pathlib import Path

import servekit as sk


def read_weights(path: str) -> str:
    text = Path(path).read_text()
    if text == "broken":
        raise ValueError(f"cannot load the weights at {path}")
    return text


@sk.deployment(num_replicas=2)
class Rolling:
    def __init__(self, weights: str) -> None:
        self.answer = read_weights(weights)

    def __call__(self) -> dict[str, str | None]:
        return {"answer": self.answer, "version": sk.replica_context().model_version}


@sk.deployment(num_replicas=2)
class InPlace:
    def __init__(self, weights: str) -> None:
        self.answer = read_weights(weights)

    def reconfigure_model(self, path: str) -> None:
        self.answer = read_weights(path)  # loads while the old answer serves; then one assignment

    def __call__(self) -> dict[str, str | None]:
        return {"answer": self.answer, "version": sk.replica_context().model_version}


@sk.deployment
class Front:
    def __init__(self, rolling: sk.DeploymentHandle, in_place: sk.DeploymentHandle) -> None:
        self.rolling, self.in_place = rolling, in_place

    @sk.endpoint("/rolling", methods=["GET"])
    async def get_rolling(self) -> dict[str, str | None]:
        return await self.rolling()  # type: ignore[no-any-return]

    @sk.endpoint("/in-place", methods=["GET"])
    async def get_in_place(self) -> dict[str, str | None]:
        return await self.in_place()  # type: ignore[no-any-return]


def model_app(store: str, watch_s: float = 0.2) -> sk.Application:
    """Both strategies, each bound to clf:production in `store`."""
    production = sk.model("clf", tag="production", store=store, watch_s=watch_s)
    return Front.bind(Rolling.bind(production), InPlace.bind(production))
