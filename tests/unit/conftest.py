"""Unit tests run without sockets or subprocesses: anything that tries fails loudly."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("unit tests must not open network connections or start processes")


@pytest.fixture(autouse=True)
def _no_network_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "bind", _forbidden)
    monkeypatch.setattr(socket.socket, "connect", _forbidden)
    monkeypatch.setattr(socket, "create_connection", _forbidden)
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbidden)
