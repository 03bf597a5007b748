"""An app whose only deployment fails in its constructor."""

from __future__ import annotations

import servekit as sk


@sk.deployment
class Unstartable:
    def __init__(self) -> None:
        raise RuntimeError("model weights are missing")


app = Unstartable.bind()
