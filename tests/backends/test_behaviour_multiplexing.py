"""Multiplexing on the local runtime in depth: 20 model ids over 2 replicas holding at most 4
each, requests routed to the replica holding their model (so repeated ids hit), per-model
counters in status. (test_behaviour_models checks multiplexing on every backend.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import model_apps
import pytest

import servekit as sk

pytestmark = pytest.mark.integration
IDS = [f"m{index}" for index in range(20)]


def _multiplexed(status: dict[str, Any]) -> list[dict[str, Any]]:
    replicas = status["deployments"]["Adapters"]["replicas"]
    return [replica["model"]["multiplexed"]["load"] for replica in replicas]


def _check_counters(status: dict[str, Any]) -> None:
    per_replica = _multiplexed(status)
    assert len(per_replica) == 2
    for stats in per_replica:
        assert len(stats["loaded"]) <= 4
        for counters in stats["models"].values():
            assert counters["loads"] <= counters["misses"]
    evictions = sum(c["evictions"] for stats in per_replica for c in stats["models"].values())
    assert evictions > 0  # 20 ids over 8 places


async def test_twenty_models_over_two_replicas_by_header(async_client: httpx.AsyncClient) -> None:
    server = sk.serve(model_apps.AdapterApi.bind(model_apps.Adapters.bind()), port=0, blocking=False)
    try:

        async def predict(model_id: str) -> httpx.Response:
            headers = {"serve-multiplexed-model-id": model_id}
            return await async_client.get(server.url + "/predict", headers=headers)

        burst = await asyncio.gather(*(predict(model_id) for model_id in IDS for _ in range(3)))
        assert [r.json()["model"] for r in burst] == [model_id.upper() for model_id in IDS for _ in range(3)]
        assert {r.json()["overlapping_loads"] for r in burst} == {0}
        replicas = {(await predict("m7")).json()["replica"] for _ in range(5)}
        assert len(replicas) == 1  # a held model keeps going to the replica holding it
        missing = await predict("missing")
        assert missing.status_code == 503
        assert missing.json()["error"]["type"] == "model_load_error"
        assert "model id 'missing' failed to load: FileNotFoundError" in missing.json()["error"]["message"]
        assert (await predict("m7")).status_code == 200
        status = (await async_client.get(server.url + "/-/status")).json()
        _check_counters(status)
        held = next(stats for stats in _multiplexed(status) if "m7" in stats["models"])
        assert held["models"]["m7"]["hits"] >= 5
    finally:
        server.shutdown(grace_s=5)
