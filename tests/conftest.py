"""Shared test configuration: HTTP clients for every test that talks to a server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

CLIENT_TIMEOUT_S = 30.0
"""Bounds every request a test makes (a Ray replica may take seconds to answer its first call)."""


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A sync client with a bounded timeout; pass full URLs (`server.url + path`)."""
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
        yield http


@pytest.fixture
async def async_client() -> AsyncIterator[httpx.AsyncClient]:
    """An async client with a bounded timeout and room for many concurrent connections."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
        yield http
