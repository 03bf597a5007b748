"""The HTTP server's transport: every event loop and parser serves with TCP_NODELAY set."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest
import uvloop

import servekit as sk
from servekit.errors import DeploymentOptionError

pytestmark = pytest.mark.integration

StartServer = Callable[..., sk.Server]


@sk.deployment
class Echo:
    @sk.endpoint("/echo")
    async def echo(self, payload: dict[str, list[float]]) -> dict[str, list[float]]:
        return payload


def _server_sockets(server: sk.Server) -> list[socket.socket]:
    """The server side of every open connection (from uvicorn's connection registry)."""
    http = server._front._http  # type: ignore[attr-defined]
    return [conn.transport.get_extra_info("socket") for conn in http.server_state.connections]


@pytest.mark.parametrize(
    ("loop", "http"),
    [("asyncio", "h11"), ("asyncio", "httptools"), ("uvloop", "h11"), ("uvloop", "httptools")],
)
def test_connections_are_served_without_nagle_delays(serve_app: StartServer, loop: str, http: str) -> None:
    server = serve_app(Echo.bind(), loop=loop, http=http)
    with httpx.Client(timeout=10) as client:
        for _ in range(3):  # keep-alive: one connection, several requests
            assert client.post(server.url + "/echo", json={"x": [1.0]}).json() == {"x": [1.0]}
        sockets = _server_sockets(server)
        assert len(sockets) == 1
        assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_chosen_event_loop_runs_the_app(serve_app: StartServer) -> None:
    server = serve_app(Echo.bind(), loop="asyncio")
    loop = server.handle._dispatcher.loop  # type: ignore[attr-defined]
    assert isinstance(loop, asyncio.BaseEventLoop)
    assert not isinstance(loop, uvloop.Loop)


def test_an_unknown_http_parser_is_refused(serve_app: StartServer) -> None:
    with pytest.raises(DeploymentOptionError, match="http='fast' is unknown; use one of 'auto', 'h11'"):
        serve_app(Echo.bind(), http="fast")  # type: ignore[arg-type]
