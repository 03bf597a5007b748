"""Copied into a temporary folder by the `--reload` test, which then rewrites VERSION."""

from __future__ import annotations

import servekit as sk

VERSION = "v1"


@sk.deployment
class Versioned:
    @sk.endpoint("/version", methods=["GET"])
    async def version(self) -> dict[str, str]:
        return {"version": VERSION}


app = Versioned.bind()
