"""Webhooks on job completion: the HMAC-SHA256 signature, and delivery with retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import urllib.request
from collections.abc import Callable

from servekit._replica.jobs.records import retry_delay_s

logger = logging.getLogger("servekit.jobs")
SIGNATURE_HEADER = "X-Servekit-Signature"
SECRET_VARIABLE = "SERVEKIT_WEBHOOK_SECRET"


def signature(secret: str, body: bytes) -> str:
    """The `X-Servekit-Signature` value of `body`: ``sha256=<hex HMAC-SHA256 with secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_secret(option: str | None) -> str | None:
    """The signing key: the endpoint's option, else the ``SERVEKIT_WEBHOOK_SECRET`` variable."""
    return option if option is not None else os.environ.get(SECRET_VARIABLE)


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)


async def deliver(
    url: str,
    body: bytes,
    secret: str | None,
    *,
    attempts: int,
    backoff_s: float = 0.5,
    post: Callable[[str, bytes, dict[str, str], float], int] = _post,
) -> bool:
    """POST `body` (JSON) to `url`, signed when there is a `secret`, until a 2xx or `attempts` runs out."""
    headers = {"Content-Type": "application/json", "User-Agent": "servekit-webhook"}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    for attempt in range(1, attempts + 1):
        try:
            status = await asyncio.to_thread(post, url, body, headers, 10.0)
            if 200 <= status < 300:
                return True
            problem = f"status {status}"
        except Exception as exc:  # an unreachable receiver, a 5xx (urllib raises), a timeout
            problem = f"{type(exc).__name__}: {exc}"
        logger.warning("webhook %s attempt %d/%d failed: %s", url, attempt, attempts, problem)
        if attempt < attempts:
            await asyncio.sleep(retry_delay_s(attempt, backoff_s, 30.0))
    return False
