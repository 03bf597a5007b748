"""The API key the client commands (`servekit status --url`, `servekit rollout --url`) send.

``SERVEKIT_API_KEY`` in, an ``Authorization: Bearer`` header out (none when it is unset).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CLIENT_KEY_ENV = "SERVEKIT_API_KEY"


def client_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `Authorization` header for the key in ``SERVEKIT_API_KEY``, if set."""
    key = (os.environ if environ is None else environ).get(CLIENT_KEY_ENV, "").strip()
    return {"authorization": f"Bearer {key}"} if key else {}
