"""Redeploys are all or nothing, the same on every backend.

A redeploy whose new constructor fails leaves exactly the old version running and reported,
with the failure in the error raised; repeating it tries again; a good one then rolls.
"""

from __future__ import annotations

import asyncio

import behaviour_apps as apps
import pytest
from behaviour_support import HANDLE_BACKENDS, Backend

import servekit as sk
from servekit.errors import DeploymentStartError

pytestmark = pytest.mark.integration


@pytest.fixture(params=HANDLE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param, request)


async def _versions_served(handle: sk.AppHandle, calls: int = 12) -> set[str]:
    return {await handle() for _ in range(calls)}


@pytest.mark.timeout(360)  # on Ray, each failed redeploy waits out Ray's three start attempts
async def test_a_failed_redeploy_leaves_exactly_the_old_version(backend: Backend) -> None:
    handle = backend.run(apps.versioned_app("v1"))
    try:
        for _attempt in range(2):  # the same failing redeploy, twice: each one tries again
            with pytest.raises(DeploymentStartError, match="version v2 cannot load its weights"):
                await asyncio.to_thread(handle.redeploy, apps.versioned_app("v2", fail=True))
            status = handle.status()
            assert status["deployments"]["Versioned"]["version"] == "v1"
            assert status["last_rollout"]["state"] == "failed"
            assert "version v2 cannot load its weights" in status["last_rollout"]["error"]
            assert await _versions_served(handle) == {"v1"}
        await asyncio.to_thread(handle.redeploy, apps.versioned_app("v3"))
        status = handle.status()
        assert status["deployments"]["Versioned"]["version"] == "v3"
        assert status["last_rollout"]["state"] == "done"
        assert await _versions_served(handle) == {"v3"}
    finally:
        handle.shutdown(grace_s=5)
