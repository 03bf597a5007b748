"""Apps bound to model versions in a store, for the hot-swap suite (no state shared with the test).

`Rolling` swaps by rolling replicas (it has no `reconfigure_model`); `InPlace` swaps in place.
Both answer with the weights' text and the version their replica context names; weights that
read "broken" fail to load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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


@sk.deployment(num_replicas=2, max_ongoing_requests=32)
class Adapters:
    """Multiplexed: 'loads' an adapter per model id; counts loads of one id that overlap."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.overlapping_loads = 0

    @sk.multiplexed(max_models_per_replica=4)
    async def load(self, model_id: str) -> str:
        if model_id == "missing":
            raise FileNotFoundError(f"no adapter weights for {model_id}")
        self.active[model_id] = self.active.get(model_id, 0) + 1
        self.overlapping_loads += self.active[model_id] > 1
        await asyncio.sleep(0.02)  # a load takes a while: requests for the same id arrive meanwhile
        self.active[model_id] -= 1
        return model_id.upper()

    async def __call__(self) -> dict[str, Any]:
        model = await self.load(sk.get_multiplexed_model_id())
        return {
            "model": model,
            "replica": sk.replica_context().replica_id,
            "overlapping_loads": self.overlapping_loads,
        }


@sk.deployment
class AdapterApi:
    def __init__(self, adapters: sk.DeploymentHandle) -> None:
        self.adapters = adapters

    @sk.endpoint("/predict", methods=["GET"])
    async def predict(self) -> dict[str, Any]:
        model_id = sk.get_multiplexed_model_id()
        return await self.adapters.options(multiplexed_model_id=model_id)()  # type: ignore[no-any-return]


@sk.deployment
class Front:
    def __init__(
        self, rolling: sk.DeploymentHandle, in_place: sk.DeploymentHandle, adapters: sk.DeploymentHandle
    ) -> None:
        self.rolling, self.in_place, self.adapters = rolling, in_place, adapters

    @sk.endpoint("/rolling", methods=["GET"])
    async def get_rolling(self) -> dict[str, str | None]:
        return await self.rolling()  # type: ignore[no-any-return]

    @sk.endpoint("/in-place", methods=["GET"])
    async def get_in_place(self) -> dict[str, str | None]:
        return await self.in_place()  # type: ignore[no-any-return]

    @sk.endpoint("/predict", methods=["GET"])
    async def predict(self) -> dict[str, Any]:
        model_id = sk.get_multiplexed_model_id()
        return await self.adapters.options(multiplexed_model_id=model_id)()  # type: ignore[no-any-return]


def model_app(store: str, watch_s: float = 0.2) -> sk.Application:
    """Both hot-swap strategies, each bound to clf:production in `store`, and a multiplexer."""
    production = sk.model("clf", tag="production", store=store, watch_s=watch_s)
    return Front.bind(Rolling.bind(production), InPlace.bind(production), Adapters.bind())
