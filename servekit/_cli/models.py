"""`servekit models push|list|show|tag|untag|rollback|rm|gc|get`: the model store from a shell.

Arguments in, one line per result out (or JSON with `show`), one line per error
(`servekit: error: ...`, exit 1). The work is done by `servekit._models.api`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from servekit._models import api
from servekit.errors import ServekitError


def add_model_commands(commands: Any) -> None:
    """Add `models` and its subcommands to the `servekit` parser's subcommands."""
    models = commands.add_parser("models", help="push, tag and roll back model versions in the store")
    models.add_argument(
        "--store",
        default=None,
        help="the store's URL or folder (default SERVEKIT_MODEL_STORE or ~/.servekit/models)",
    )
    actions = models.add_subparsers(dest="models_command", required=True)
    push = actions.add_parser("push", help="store a file or folder as a new version")
    push.add_argument("name", help="the model's name, like clf")
    push.add_argument("path", help="the file or folder to store")
    push.add_argument("--version", default=None, help="the version (default: 12 digits of its sha256)")
    push.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata, repeatable")
    actions.add_parser("list", help="list the models")
    show = actions.add_parser("show", help="a model's versions and tags, as JSON")
    show.add_argument("name")
    tag = actions.add_parser("tag", help="point a tag (like production) at a version")
    for name in ("name", "version", "tag"):
        tag.add_argument(name)
    untag = actions.add_parser("untag", help="remove a tag")
    untag.add_argument("name")
    untag.add_argument("tag")
    rollback = actions.add_parser("rollback", help="move a tag back to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("tag")
    rm = actions.add_parser("rm", help="delete a version no tag points to")
    rm.add_argument("name")
    rm.add_argument("version")
    actions.add_parser("gc", help="delete blobs no version references")
    get = actions.add_parser("get", help="print a local path to NAME:TAG, NAME@VERSION or NAME")
    get.add_argument("target")


def run_model_command(args: argparse.Namespace) -> int:
    """Run a `servekit models ...` command; returns the exit code."""
    try:
        print(_run(args))
    except ServekitError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _meta(pairs: list[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ServekitError(f"--meta {pair!r} is not KEY=VALUE; write it like --meta accuracy=0.91")
        meta[key] = value
    return meta


def _run(args: argparse.Namespace) -> str:  # noqa: PLR0911 (one branch per subcommand)
    store = args.store
    match args.models_command:
        case "push":
            info = api.push(args.name, args.path, version=args.version, meta=_meta(args.meta), store=store)
            return f"pushed {info.name}@{info.version} sha256:{info.sha256[:12]} ({info.size} bytes)"
        case "list":
            return "\n".join(api.list_models(store=store))
        case "show":
            return json.dumps(api.show(args.name, store=store), indent=2)
        case "tag":
            moved = api.tag(args.name, args.version, args.tag, store=store)
            return f"{moved.name}:{moved.tag} -> {moved.version}"
        case "untag":
            api.untag(args.name, args.tag, store=store)
            return f"removed {args.name}:{args.tag}"
        case "rollback":
            moved = api.rollback(args.name, args.tag, store=store)
            return f"{moved.name}:{moved.tag} -> {moved.version} (rolled back)"
        case "rm":
            api.rm(args.name, args.version, store=store)
            return f"removed {args.name}@{args.version}"
        case "gc":
            files, freed = api.gc(store=store)
            return f"freed {files} files, {freed} bytes"
        case _:
            return str(api.get(args.target, store=store))
