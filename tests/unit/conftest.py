"""Unit tests run without sockets, subprocesses or Ray (anything that tries fails loudly); `project`
gives a test a throwaway folder of user modules."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from user_project import UserProject


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("unit tests must not open network connections or start processes")


@pytest.fixture(autouse=True)
def _no_network_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "bind", _forbidden)
    monkeypatch.setattr(socket.socket, "connect", _forbidden)
    monkeypatch.setattr(socket, "create_connection", _forbidden)
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbidden)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import ray` fails: what unit tests cover of the Ray backend is the part that needs no Ray."""
    for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserProject]:
    """A `UserProject` in a fresh folder, first on `sys.path`; its modules are forgotten after."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    made = UserProject(root)
    yield made
    made.forget()
