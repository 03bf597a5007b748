"""`servekit keys create|list|revoke|hash`: manage the API keys file a server reads (`--api-keys`).

`create` prints the new key once, on stdout, and writes only its sha256 to the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys

from servekit._http.guards.keyfile import create_key, entries, revoke_key
from servekit._http.guards.keys import MIN_KEY_CHARS, describe_entry, hash_key
from servekit.errors import ServekitError

_RELATIVE = re.compile(r"^(\d+)([dh])$")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `servekit keys ...` to the command's subcommands."""
    keys = commands.add_parser("keys", help="manage API keys: create, list, revoke, hash")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key: print it once, store its hash in the file")
    create.add_argument("--file", required=True, help="the keys file (YAML, or JSON by its .json suffix)")
    create.add_argument("--name", required=True, help="a unique name for the key (shown in logs and errors)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="what the key may call (repeat): invoke, 'invoke:/predict*', admin, metrics",
    )
    create.add_argument("--expires", default=None, help="when the key stops working: 2026-12-31, or 30d, 12h")
    create.add_argument("--rate-limit", default=None, help="this key's own limit, like '50/s burst 100'")
    listing = actions.add_parser("list", help="show the keys in the file (names, scopes, expiry; no keys)")
    listing.add_argument("--file", required=True, help="the keys file")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="remove a key from the file (servers drop it within 1 s)")
    revoke.add_argument("--file", required=True, help="the keys file")
    revoke.add_argument("--name", required=True, help="the key's name")
    actions.add_parser("hash", help="print the hash of a key read from stdin, for a key made elsewhere")


def run(args: argparse.Namespace) -> int:
    """Run `servekit keys ...`; returns the exit code."""
    try:
        return _run(args)
    except (ServekitError, OSError, ValueError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        key = create_key(args.file, args.name, args.scope, _expiry(args.expires), args.rate_limit)
        print(key)
        print(
            f"servekit: key {args.name!r} added to {args.file} (only its hash); the key above is shown "
            "once: store it now",
            file=sys.stderr,
        )
    elif args.keys_command == "list":
        described = [describe_entry(entry) for entry in entries(args.file)]
        print(json.dumps(described, indent=2) if args.json else _table(described))
    elif args.keys_command == "revoke":
        revoke_key(args.file, args.name)
        print(f"servekit: key {args.name!r} removed from {args.file}", file=sys.stderr)
    else:
        key = sys.stdin.readline().strip()
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"a key needs at least {MIN_KEY_CHARS} random characters; got {len(key)}")
        print(hash_key(key))
    return 0


def _expiry(text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """`--expires` as a time: an ISO date or time (UTC unless it says), or ``30d`` / ``12h`` from now."""
    if text is None:
        return None
    relative = _RELATIVE.match(text)
    if relative is not None:
        amount = int(relative[1])
        delta = dt.timedelta(days=amount) if relative[2] == "d" else dt.timedelta(hours=amount)
        return (now or dt.datetime.now(dt.UTC)) + delta
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--expires {text!r} is neither a date (2026-12-31) nor a duration (30d, 12h)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _table(described: list[dict[str, object]]) -> str:
    if not described:
        return "no keys"
    rows = [("NAME", "SCOPES", "EXPIRES", "RATE LIMIT", "STATE", "HASH")]
    rows += [
        (
            str(d["name"]),
            " ".join(map(str, d["scopes"])),  # type: ignore[call-overload]
            str(d["expires"] or "never"),
            str(d["rate_limit"] or "-"),
            str(d["state"]),
            str(d["hash"]),
        )
        for d in described
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
