"""`servekit deploy BUNDLE --address ...`: a placeholder until the Ray deploy lands."""

from __future__ import annotations

from servekit.errors import BundleError


def deploy(bundle: str, address: str, name: str | None, *, dry_run: bool) -> int:
    """Deploy `bundle` to the Ray cluster at `address`."""
    raise BundleError("servekit deploy is not implemented yet")
