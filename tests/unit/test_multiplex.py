"""Multiplexing's parts alone: the per-replica LRU of models, and the routing decision."""

from __future__ import annotations

import asyncio

import pytest

import servekit as sk
from servekit._replica.multiplex import ModelMultiplexer, choose_replica
from servekit.errors import DeploymentOptionError, ModelLoadError


class Loader:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, model_id: str) -> str:
        self.loads.append(model_id)
        await self.release.wait()
        if model_id == "bad":
            raise ValueError("corrupt weights")
        return model_id.upper()


async def test_concurrent_requests_for_one_id_share_one_load() -> None:
    loader = Loader()
    multiplexer = ModelMultiplexer(loader, max_models=2)
    waiting = [asyncio.create_task(multiplexer.get("a")) for _ in range(5)]
    await asyncio.sleep(0)
    loader.release.set()
    assert await asyncio.gather(*waiting) == ["A"] * 5
    assert loader.loads == ["a"]
    assert multiplexer.stats["a"].misses == 1
    assert multiplexer.stats["a"].hits == 4


async def test_the_least_recently_used_model_is_evicted() -> None:
    loader = Loader()
    loader.release.set()
    multiplexer = ModelMultiplexer(loader, max_models=2)
    for model_id in ("a", "b", "a", "c"):
        await multiplexer.get(model_id)
    assert multiplexer.loaded == ["a", "c"]
    assert multiplexer.stats["b"].evictions == 1
    status = multiplexer.status()
    assert status["models"]["a"]["hits"] == 1
    assert status["models"]["a"]["loads"] == 1


async def test_a_failed_load_fails_its_requests_only_and_is_retried_later() -> None:
    loader = Loader()
    loader.release.set()
    multiplexer = ModelMultiplexer(loader, max_models=2, owner="deployment 'Adapters'")
    with pytest.raises(
        ModelLoadError, match=r"deployment 'Adapters': model id 'bad' failed to load: ValueError"
    ):
        await multiplexer.get("bad")
    assert await multiplexer.get("a") == "A"
    with pytest.raises(ModelLoadError):
        await multiplexer.get("bad")
    assert loader.loads == ["bad", "a", "bad"]
    with pytest.raises(ModelLoadError, match="names no model; send the header serve-multiplexed-model-id"):
        await multiplexer.get("")


@pytest.mark.parametrize(
    ("loads", "holds", "counts", "expected"),
    [
        ([0, 0], [False, True], [1, 1], 1),  # the holder
        ([3, 0], [True, False], [1, 0], 0),  # the holder, though busier, while it has room
        ([4, 0], [True, False], [1, 0], 1),  # the holder is full: another one loads it
        ([1, 0, 0], [False, False, False], [2, 3, 1], 2),  # fewest models first
        ([4, 4], [True, False], [1, 1], None),  # all full: wait
    ],
)
def test_choose_replica_prefers_holders_then_the_emptiest(
    loads: list[int], holds: list[bool], counts: list[int], expected: int | None
) -> None:
    assert choose_replica(loads, holds, counts, max_ongoing=4) == expected


def test_multiplexed_needs_an_async_method_and_a_positive_size() -> None:
    with pytest.raises(DeploymentOptionError, match="max_models_per_replica must be >= 1"):
        sk.multiplexed(max_models_per_replica=0)
    with pytest.raises(DeploymentOptionError, match="applies to an async method"):
        sk.multiplexed(max_models_per_replica=2)(lambda self, model_id: model_id)


def test_the_model_id_is_empty_outside_a_request() -> None:
    assert sk.get_multiplexed_model_id() == ""
