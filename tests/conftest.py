"""Shared test configuration: HTTP clients for every test that talks to a server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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


WAIT_S = 30.0
"""How long a test waits for a condition before it fails (generous: CI machines are busy)."""


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.01)


async def _await_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """`wait_until(condition, what)`: poll until `condition()` holds, failing after `WAIT_S`."""
    return _wait_until


@pytest.fixture
def await_until() -> Callable[..., Awaitable[None]]:
    """`await await_until(condition, what)`: the same from async tests, without blocking the loop."""
    return _await_until
