"""A module that exists but imports a sibling that does not: its target must not read as missing."""

from __future__ import annotations

import apps.missing  # noqa: F401

app = None
