"""`servekit build`: an app target in, a reproducible `NAME-VERSION.tar.gz` bundle out.

Loads the app (so a target that fails to import, or a graph whose bound arguments cannot be
rebuilt by re-importing it, fails here with one line), pins the model-store versions it
references into `models/`, picks its source files, resolves its requirements into a lock,
renders the deployment files and the manifest, and writes the archive
(`servekit._bundle.archive`: the same inputs give the same bytes).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servekit._bundle import requirements
from servekit._bundle.archive import write_archive
from servekit._bundle.deploy_files import (
    DeploymentPlan,
    dockerfile,
    dockerignore,
    rayservice,
    serve_config,
    uses_gpus,
    yaml_text,
)
from servekit._bundle.files import Selection, select_files
from servekit._bundle.manifest import (
    MANIFEST_NAME,
    DeploymentEntry,
    GitSource,
    Manifest,
    ModelEntry,
    file_entries,
)
from servekit._bundle.models import bundle_models
from servekit._bundle.store import sha256_of
from servekit._cli.target import TargetError, load_app
from servekit._http.app import DEFAULT_MAX_BODY_BYTES, describe_routes
from servekit._http.openapi import openapi_document
from servekit._http.routes import ingress_routes
from servekit._runtime.backends import cluster_backend
from servekit._spec.graph import AppGraph, DeploymentNode, HandleRef, build_graph
from servekit._version import __version__
from servekit.errors import BundleError, ServekitError

_NAME = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class BuildRequest:
    """What `servekit build` was asked for."""

    target: str
    output: Path = Path("dist")
    name: str | None = None
    version: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    requirements_file: Path | None = None
    max_file_bytes: int = Selection.max_file_bytes


@dataclass(frozen=True)
class BuiltBundle:
    """A written bundle archive."""

    path: Path
    sha256: str
    size: int
    manifest: Manifest
    summary: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    root: Path
    """The folder whose files go into src/ (a file's folder, or a package's parent)."""
    entrypoint: str
    """The target as seen from src/."""
    package: str | None
    """For a `pkg.module:app` target: the top-level package, the only folder taken from root."""


def build(request: BuildRequest) -> BuiltBundle:
    """Build the bundle `request` describes; `BundleError` (one line) when it cannot."""
    source = _locate(request.target)
    try:
        app = load_app(request.target)
    except TargetError as exc:
        raise BundleError(f"cannot build {request.target!r}: {exc}") from None
    except Exception as exc:  # the user's module raised while importing
        raise BundleError(
            f"cannot build {request.target!r}: importing it raised {type(exc).__name__}: {exc}"
        ) from None
    graph = build_graph(app)
    for node in graph.nodes.values():
        check_rebuildable(node, source.entrypoint)
    with tempfile.TemporaryDirectory(prefix="servekit-build-") as tmp:
        staging = Path(tmp)
        models, model_files = bundle_models(graph, staging, request.target)
        src_files = _copy_sources(source, request, staging)
        lock_text, requirements_source = _lock(source, request, staging / "src", src_files)
        name = _bundle_name(request.name or _default_name(source))
        version = request.version or _default_version(staging, src_files, models)
        plans = _plans(graph)
        _write_deploy_files(staging, graph, name, version, plans)
        (staging / requirements.LOCK_NAME).write_text(lock_text, encoding="utf-8")
        paths = sorted(
            [*(f"src/{path}" for path in src_files), *model_files, *_generated_files()],
        )
        manifest = Manifest(
            name=name,
            version=version,
            entrypoint=source.entrypoint,
            ingress=graph.ingress,
            deployments={node_name: _entry(node) for node_name, node in graph.nodes.items()},
            routes=[list(route) for route in describe_routes(ingress_routes(graph.ingress_node.deployment))],
            python=f"{sys.version_info.major}.{sys.version_info.minor}",
            servekit=__version__,
            requirements_source=requirements_source,
            dependencies=requirements.locked_versions(lock_text),
            git=git_source(source.root),
            include=list(request.include),
            exclude=list(request.exclude),
            models=models,
            files=file_entries(staging, paths),
        )
        (staging / MANIFEST_NAME).write_bytes(manifest.to_json())
        request.output.mkdir(parents=True, exist_ok=True)
        archive = request.output / f"{name}-{version}.tar.gz"
        write_archive(staging, [MANIFEST_NAME, *paths], archive)
    return BuiltBundle(archive, sha256_of(archive), archive.stat().st_size, manifest, summarize(manifest))


def check_rebuildable(node: DeploymentNode, entrypoint: str) -> None:
    """Refuse a bound argument that re-importing the app cannot give again (a lambda, an open
    file, an object of a class defined in `__main__`), naming it."""
    names = _parameter_names(node)
    bound = [*enumerate(node.init_args), *node.init_kwargs.items()]
    for key, value in bound:
        if isinstance(value, HandleRef):
            continue
        label = names[key] if isinstance(key, int) and key < len(names) else key
        reason = _not_rebuildable(value)
        if reason is not None:
            raise BundleError(
                f"deployment {node.name!r}: bound argument {label!r} ({reason}) cannot be rebuilt when the "
                f"bundle re-imports {entrypoint!r}; bind a value made at import time by a module-level "
                "name (a path, a number, a pydantic model), not a local object"
            )


def _not_rebuildable(value: Any) -> str | None:
    module = getattr(type(value), "__module__", "")
    if module == "__main__":
        return f"a {type(value).__name__} defined in __main__"
    try:
        pickle.dumps(value)
    except Exception as exc:
        return f"a {type(value).__name__}: {str(exc).splitlines()[0][:80]}"
    return None


def _parameter_names(node: DeploymentNode) -> list[str]:
    target = node.deployment.target
    try:
        signature = inspect.signature(target.__init__ if isinstance(target, type) else target)  # type: ignore[misc]
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name != "self"]


def _locate(target: str) -> _Source:
    location, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if location.endswith(".py") or "/" in location:
        path = Path(location).resolve()
        if not path.is_file():
            raise BundleError(f"cannot build {target!r}: file not found: {location!r}")
        return _Source(path.parent, f"{path.name}:{attribute}", None)
    top = location.split(".")[0]
    sys.path.insert(0, str(Path.cwd()))
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(str(Path.cwd()))
    if spec is None or spec.origin is None:
        raise BundleError(
            f"cannot build {target!r}: no module named {top!r} (run from the folder that holds it)"
        )
    origin = Path(spec.origin).resolve()
    if spec.submodule_search_locations:  # a package: take its folder
        return _Source(origin.parent.parent, f"{location}:{attribute}", top)
    return _Source(origin.parent, f"{location}:{attribute}", None)


def _copy_sources(source: _Source, request: BuildRequest, staging: Path) -> list[str]:
    selection = Selection(
        request.include, request.exclude, request.max_file_bytes, _inside(source.root, request.output)
    )
    if source.package is not None:
        files = [f"{source.package}/{path}" for path in select_files(source.root / source.package, selection)]
    else:
        files = select_files(source.root, selection)
    for path in files:
        destination = staging / "src" / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.root / path, destination)
        shutil.copymode(source.root / path, destination)
    return files


def _inside(root: Path, output: Path) -> tuple[str, ...]:
    try:
        return (output.resolve().relative_to(root).as_posix() + "/",)
    except ValueError:
        return ()


def _lock(source: _Source, request: BuildRequest, src: Path, files: list[str]) -> tuple[str, str]:
    declared = requirements.declared(source.root, request.requirements_file)
    if declared is None:
        local = {Path(path).parts[0].removesuffix(".py") for path in files}
        declared = requirements.imported((src / path for path in files if path.endswith(".py")), local)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return requirements.lock(declared, python), declared.source


def _plans(graph: AppGraph) -> dict[str, DeploymentPlan]:
    try:
        options = cluster_backend().serve_options(graph)
    except ServekitError as exc:
        raise BundleError(f"the app cannot be configured for Ray: {exc}") from None
    plans = {}
    for name, node in graph.nodes.items():
        config = node.deployment.config
        replicas = config.autoscaling.max_replicas if config.autoscaling is not None else config.num_replicas
        plans[name] = DeploymentPlan(replicas, config.resources.cpus, config.resources.gpus, options[name])
    return plans


def _write_deploy_files(
    staging: Path, graph: AppGraph, name: str, version: str, plans: dict[str, DeploymentPlan]
) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = ingress_routes(graph.ingress_node.deployment)
    openapi = openapi_document(name, version, list(found.endpoints), DEFAULT_MAX_BODY_BYTES)
    (staging / "openapi.json").write_text(json.dumps(openapi, indent=2, sort_keys=True) + "\n")
    (staging / "Dockerfile").write_text(dockerfile(python, __version__, uses_gpus(plans)))
    (staging / ".dockerignore").write_text(dockerignore())
    config = serve_config(name, plans)
    (staging / "ray").mkdir()
    (staging / "ray" / "serve_config.yaml").write_text(yaml_text(config))
    (staging / "k8s").mkdir()
    service = rayservice(name, f"{name}:{version}", config, plans)
    (staging / "k8s" / "rayservice.yaml").write_text(yaml_text(service))


def _generated_files() -> list[str]:
    return [
        requirements.LOCK_NAME,
        "openapi.json",
        "Dockerfile",
        ".dockerignore",
        "ray/serve_config.yaml",
        "k8s/rayservice.yaml",
    ]


def _entry(node: DeploymentNode) -> DeploymentEntry:
    target = node.deployment.target
    return DeploymentEntry(
        target=f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', '?')}",
        dependencies=sorted(node.dependencies),
        options=node.deployment.config.model_dump(mode="json", exclude={"autoscaling": {"policy"}}),
    )


def _default_name(source: _Source) -> str:
    return source.package or source.root.name


def _bundle_name(name: str) -> str:
    cleaned = _NAME.sub("-", name.lower()).strip("-.")
    if not cleaned:
        raise BundleError(f"--name {name!r} has no usable characters; use letters, digits, '.', '_' or '-'")
    return cleaned


def _default_version(staging: Path, files: list[str], models: list[ModelEntry]) -> str:
    """The first 12 hex digits of the sources' and bundled models' sha256: the same code and
    models give the same version, and a moved model tag another."""
    entries = file_entries(staging / "src", files)
    text = "".join(f"{entry.path}\0{entry.sha256}\n" for entry in entries)
    text += "".join(f"model\0{model.name}\0{model.tag}\0{model.sha256}\n" for model in models)
    return sha256_text(text)[:12]


def sha256_text(text: str) -> str:
    """Hex sha256 of `text` (UTF-8)."""
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(text.encode()).hexdigest()


def git_source(folder: Path) -> GitSource | None:
    """The commit `folder` is checked out at, and whether its tracked files changed; None outside git."""
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        changed = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return GitSource(commit=commit.strip(), dirty=bool(changed.strip()))


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def summarize(manifest: Manifest) -> list[str]:
    """Lines describing the bundle: deployments with their resources, then routes."""
    lines = [
        f"app {manifest.entrypoint} (ingress {manifest.ingress}), requirements {manifest.requirements_source}"
    ]
    for name, entry in manifest.deployments.items():
        options = entry.options
        resources = options.get("resources", {})
        autoscaling = options.get("autoscaling")
        replicas = (
            f"{autoscaling['min_replicas']}-{autoscaling['max_replicas']}"
            if autoscaling
            else options.get("num_replicas")
        )
        lines.append(
            f"  deployment {name:<20} replicas {replicas}  "
            f"cpus {resources.get('cpus')}  gpus {resources.get('gpus')}"
        )
    for methods, path in manifest.routes:
        lines.append(f"  route {methods:<10} {path}")
    for model in manifest.models:
        source = f"tag {model.tag} -> " if model.tag is not None else ""
        lines.append(
            f"  model {model.name:<25} {source}version {model.version}  {model.size} bytes  "
            f"sha256 {model.sha256[:12]}"
        )
    return lines


def describe_machine() -> str:
    """This machine in words (for benchmark results)."""
    return f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
