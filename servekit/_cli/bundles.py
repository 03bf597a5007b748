"""The bundle commands: `servekit build`, `servekit bundles list|show|rm` and `servekit deploy`.

Arguments in, one line per error out (`servekit: error: ...`, exit 1); the work is done by
`servekit._cli.build` and `servekit._bundle`, imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from servekit.errors import ServekitError

BUNDLE_COMMANDS = ("build", "bundles", "deploy")


def add_bundle_commands(commands: Any) -> None:
    """Add `build`, `bundles` and `deploy` to the `servekit` parser's subcommands."""
    build = commands.add_parser("build", help="build a reproducible, deployable bundle of an app")
    build.add_argument(
        "target",
        nargs="?",
        default=None,
        help="the app: pkg.module:app or path/to/file.py:app (with --check, default: the bundle's entrypoint "
        "from the current folder)",
    )
    build.add_argument(
        "-o", "--output", default="dist", help="folder to write NAME-VERSION.tar.gz to (default dist)"
    )
    build.add_argument(
        "--name", default=None, help="the bundle's name (default: the app's folder or package)"
    )
    build.add_argument(
        "--version", default=None, help="the bundle's version (default: a hash of the sources)"
    )
    build.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="bundle files matching GLOB even if ignored, secret-looking or large (repeatable)",
    )
    build.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="leave files out (repeatable)"
    )
    build.add_argument(
        "--requirements",
        default=None,
        help="the requirements file to lock (default: requirements.txt, "
        "pyproject.toml next to the app, else what its modules import)",
    )
    build.add_argument(
        "--max-file-mb", type=float, default=10.0, help="files above this need --include (default 10)"
    )
    build.add_argument(
        "--check",
        metavar="BUNDLE",
        default=None,
        help="rebuild BUNDLE from the sources (same name and version) and compare the bytes",
    )
    build.add_argument(
        "--no-store", action="store_true", help="do not copy the bundle into ~/.servekit/bundles"
    )

    bundles = commands.add_parser("bundles", help="the local bundle store (~/.servekit/bundles)")
    actions = bundles.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list stored bundles")
    show = actions.add_parser("show", help="print a bundle's manifest as a table")
    show.add_argument("bundle", help="NAME-VERSION, NAME (newest) or a path")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    remove = actions.add_parser("rm", help="remove a stored bundle")
    remove.add_argument("bundle", help="NAME-VERSION")

    deploy = commands.add_parser("deploy", help="deploy a bundle to a Ray cluster through Ray Serve")
    deploy.add_argument("bundle", help="a bundle (.tar.gz or its folder), or NAME[-VERSION] from the store")
    deploy.add_argument("--address", required=True, help="the cluster: auto, host:port or ray://host:10001")
    deploy.add_argument("--name", default=None, help="the Serve application's name (default: the bundle's)")
    deploy.add_argument("--dry-run", action="store_true", help="print the Serve config it would apply")
    deploy.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="the port of Serve's proxy when this deploy starts Serve (8000)",
    )


def run_bundle_command(args: argparse.Namespace) -> int:
    """Run `build`, `bundles` or `deploy`; the exit code."""
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "bundles":
            return _bundles(args)
        return _deploy(args)
    except ServekitError as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    from servekit._cli.build import BuildRequest, build  # noqa: PLC0415

    if args.check:
        return _check(args)
    if args.target is None:
        print("servekit: error: build needs a target, like app.py:app or pkg.module:app", file=sys.stderr)
        return 2
    request = BuildRequest(
        target=args.target,
        output=Path(args.output),
        name=args.name,
        version=args.version,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        requirements_file=Path(args.requirements) if args.requirements else None,
        max_file_bytes=int(args.max_file_mb * 2**20),
    )
    built = build(request)
    if not args.no_store:
        from servekit._bundle.store import add  # noqa: PLC0415

        add(built.path)
    print(built.path.resolve())
    print(f"  sha256 {built.sha256}")
    print(f"  size   {built.size} bytes ({len(built.manifest.files)} files)")
    for line in built.summary:
        print(f"  {line}")
    return 0


def _check(args: argparse.Namespace) -> int:
    import tempfile  # noqa: PLC0415

    from servekit._bundle.store import open_bundle, sha256_of  # noqa: PLC0415
    from servekit._cli.build import BuildRequest, build  # noqa: PLC0415

    archive = Path(args.check)
    manifest = open_bundle(args.check).manifest
    source = args.target or manifest.entrypoint
    with tempfile.TemporaryDirectory(prefix="servekit-check-") as folder:
        rebuilt = build(
            BuildRequest(
                target=source,
                output=Path(folder),
                name=manifest.name,
                version=manifest.version,
                include=tuple(args.include or manifest.include),
                exclude=tuple(args.exclude or manifest.exclude),
                requirements_file=Path(args.requirements) if args.requirements else None,
                max_file_bytes=int(args.max_file_mb * 2**20),
            )
        )
        expected = sha256_of(archive)
        if rebuilt.sha256 == expected:
            print(f"{archive}: reproducible (sha256 {expected})")
            return 0
        print(
            f"servekit: error: {archive}: the rebuild differs (sha256 {rebuilt.sha256}, bundle {expected})"
            f"{_differences(manifest, rebuilt.manifest)}",
            file=sys.stderr,
        )
        return 1


def _differences(old: Any, new: Any) -> str:
    before = {entry.path: entry.sha256 for entry in old.files}
    after = {entry.path: entry.sha256 for entry in new.files}
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    files = f"; files that differ: {', '.join(changed[:10])}" if changed else ""
    return files + _model_differences(old, new)


def _model_differences(old: Any, new: Any) -> str:
    """The model references that resolve to another version now than when the bundle was built."""
    before = {(model.name, model.tag): model.version for model in old.models}
    after = {(model.name, model.tag): model.version for model in new.models}
    keys = sorted(before.keys() | after.keys(), key=lambda key: (key[0], key[1] or ""))
    moved = [
        f"{name}{'' if tag is None else ':' + tag} {before.get((name, tag), 'none')} -> "
        f"{after.get((name, tag), 'none')}"
        for name, tag in keys
        if before.get((name, tag)) != after.get((name, tag))
    ]
    return f"; models that resolve to another version now: {', '.join(moved)}" if moved else ""


def _bundles(args: argparse.Namespace) -> int:
    from servekit._bundle import store  # noqa: PLC0415

    if args.action == "list":
        stored = store.stored_bundles()
        if not stored:
            print(f"no bundles in {store.store()}")
        for archive in stored:
            name, size = archive.name.removesuffix(".tar.gz"), archive.stat().st_size
            print(f"{name:<40} {size:>12} bytes  sha256 {store.sha256_of(archive)[:16]}")
        return 0
    archive = store.find(args.bundle)
    if args.action == "rm":
        if archive.parent != store.store():
            print(
                f"servekit: error: {str(archive)!r} is not in the store {str(store.store())!r}",
                file=sys.stderr,
            )
            return 1
        archive.unlink()
        print(f"removed {archive.name}")
        return 0
    manifest = store.manifest_of(archive)
    if args.json:
        print(manifest.to_json().decode(), end="")
    else:
        print(render_manifest(manifest, store.sha256_of(archive) if archive.is_file() else None))
    return 0


def render_manifest(manifest: Any, sha256: str | None) -> str:
    """A manifest as a table: the bundle, its deployments, routes, dependencies and files."""
    rows = [
        ("name", manifest.name),
        ("version", manifest.version),
        ("sha256", sha256 or "-"),
        ("entrypoint", manifest.entrypoint),
        ("python", manifest.python),
        ("servekit", manifest.servekit),
        ("requirements", manifest.requirements_source),
        (
            "git",
            f"{manifest.git.commit[:12]}{' (dirty)' if manifest.git.dirty else ''}" if manifest.git else "-",
        ),
    ]
    lines = [f"{key:<14} {value}" for key, value in rows]
    lines.append(f"\n{'DEPLOYMENT':<24} {'REPLICAS':>8} {'CPUS':>6} {'GPUS':>6}  TARGET")
    for name, entry in manifest.deployments.items():
        resources = entry.options.get("resources", {})
        lines.append(
            f"{name:<24} {entry.options.get('num_replicas')!s:>8} {resources.get('cpus')!s:>6} "
            f"{resources.get('gpus')!s:>6}  {entry.target}"
        )
    lines.append(f"\n{'ROUTE':<10} PATH")
    lines += [f"{methods:<10} {path}" for methods, path in manifest.routes]
    if manifest.models:
        lines.append(f"\n{'MODEL':<24} {'TAG':<16} {'VERSION':<16} {'BYTES':>10}  SHA256")
        lines += [
            f"{model.name:<24} {model.tag or '-':<16} {model.version:<16} {model.size:>10}  "
            f"{model.sha256[:16]}"
            for model in manifest.models
        ]
    lines.append(f"\n{'DEPENDENCY':<32} VERSION")
    lines += [f"{name:<32} {version}" for name, version in sorted(manifest.dependencies.items())]
    lines.append(f"\n{'FILE':<48} {'BYTES':>10}  SHA256")
    lines += [f"{entry.path:<48} {entry.size:>10}  {entry.sha256[:16]}" for entry in manifest.files]
    return "\n".join(lines)


def _deploy(args: argparse.Namespace) -> int:
    from servekit._cli.deploy import deploy  # noqa: PLC0415

    return deploy(args.bundle, args.address, args.name, dry_run=args.dry_run, http_port=args.http_port)
