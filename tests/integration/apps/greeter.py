"""A one-deployment app the CLI tests serve: greets, holds a request until told, reports body sizes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.requests import Request

import servekit as sk


@sk.deployment
class Greeter:
    """Served bound (`greeter.py:app`) or bare (`greeter.py:Greeter`, which the CLI binds)."""

    @sk.endpoint("/greet", methods=["GET"])
    async def greet(self, name: str = "world") -> dict[str, str]:
        return {"message": f"hello {name}"}

    @sk.endpoint("/wait", methods=["GET"])
    def wait(self, flag: str) -> dict[str, str]:
        """Answers once the file `flag` exists: a request that stays in flight as long as a test wants."""
        while not Path(flag).exists():
            time.sleep(0.01)
        return {"released": flag}

    @sk.endpoint("/size")
    async def size(self, request: Request) -> dict[str, Any]:
        return {"bytes": len(await request.body())}


app = Greeter.bind()
not_an_app = 42
