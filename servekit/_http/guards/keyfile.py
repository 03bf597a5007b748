"""Edit a keys file: add a key (its hash only), revoke one, list them. For `servekit keys`.

A path and an entry in, the file rewritten atomically (a temporary file renamed over it, so a
server re-reading it never sees half a file); the rest of the document (``public``) is kept.
Files ending in ``.json`` are written as JSON, others as YAML.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from servekit._http.guards.keys import KeyEntry, KeysDocument, hash_key, new_key, parse_keys
from servekit.errors import DeploymentOptionError


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keys file at `path` as a plain document (an empty one if the file does not exist)."""
    file = Path(path)
    if not file.exists():
        return {"keys": []}
    text = file.read_text()
    parse_keys(text, str(path))  # refuse to edit a file the server would refuse
    raw = yaml.safe_load(text) if text.strip() else {}
    document: dict[str, Any] = {"keys": raw} if isinstance(raw, list) else dict(raw or {})
    document.setdefault("keys", [])
    return document


def entries(path: str | os.PathLike[str]) -> list[KeyEntry]:
    """The keys in the file at `path`."""
    return KeysDocument.model_validate(read_document(path)).keys


def create_key(
    path: str | os.PathLike[str],
    name: str,
    scopes: list[str],
    expires: dt.datetime | None = None,
    rate_limit: str | None = None,
) -> str:
    """Add a new key named `name` to the file at `path` (created if missing); returns the key,
    which is stored nowhere: only its hash goes into the file."""
    document = read_document(path)
    if any(entry.get("name") == name for entry in document["keys"]):
        raise DeploymentOptionError(f"{os.fspath(path)!r} already has a key named {name!r}; pick another")
    key = new_key()
    entry: dict[str, Any] = {"name": name, "hash": hash_key(key), "scopes": scopes}
    if expires is not None:
        entry["expires"] = (
            expires.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        )
    if rate_limit is not None:
        entry["rate_limit"] = rate_limit
    document["keys"] = [*document["keys"], entry]
    write_document(path, document)
    return key


def revoke_key(path: str | os.PathLike[str], name: str) -> None:
    """Remove the key named `name` from the file at `path`."""
    document = read_document(path)
    kept = [entry for entry in document["keys"] if entry.get("name") != name]
    if len(kept) == len(document["keys"]):
        names = ", ".join(repr(entry.get("name")) for entry in document["keys"]) or "none"
        raise DeploymentOptionError(f"{os.fspath(path)!r} has no key named {name!r} (it has {names})")
    write_document(path, {**document, "keys": kept})


def write_document(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write `document` to `path` atomically, after checking that a server would accept it."""
    target = Path(path)
    text = _render(document, target.suffix == ".json")
    parse_keys(text, str(path))
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _render(document: dict[str, Any], as_json: bool) -> str:
    plain = json.loads(json.dumps(document, default=_plain))
    if as_json:
        return json.dumps(plain, indent=2) + "\n"
    return str(yaml.safe_dump(plain, sort_keys=False, default_flow_style=None))


def _plain(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"cannot write {value!r} to a keys file")
