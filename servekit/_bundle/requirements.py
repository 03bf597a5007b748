"""A bundle's `requirements.lock`: what the app needs, resolved by uv from the package registry.

In: the app's declared requirements (`--requirements FILE`, else a `requirements.txt` or a
`pyproject.toml`'s `[project] dependencies` in the bundled folder) or, where it declares none,
the distributions its modules import in this environment, pinned to the installed versions;
servekit's own dependencies are added to either. Out: `uv pip compile --generate-hashes` text
(every distribution pinned, with hashes) and the sentence saying which input was used.
servekit itself is left out of the lock: it is installed next to it (see docs/bundles.md).
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from servekit.errors import BundleError

LOCK_NAME = "requirements.lock"
_INPUT_NAME = "requirements.in"
"""The name uv's `# via -r ...` comments show (the same in every build)."""


@dataclass(frozen=True)
class Requirements:
    """What the lock is resolved from, and a sentence saying where that came from."""

    lines: tuple[str, ...]
    source: str


def declared(root: Path, explicit: Path | None = None) -> Requirements | None:
    """The requirements the app declares: `explicit`, else `requirements.txt` or `pyproject.toml`
    in `root`; None when it declares none."""
    if explicit is not None:
        if not explicit.is_file():
            raise BundleError(f"requirements file not found: {str(explicit)!r}")
        return Requirements(_requirement_lines(explicit), f"declared in {explicit.name}")
    if (root / "requirements.txt").is_file():
        return Requirements(_requirement_lines(root / "requirements.txt"), "declared in requirements.txt")
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise BundleError(f"{str(pyproject)!r} is not valid TOML: {exc}") from None
        dependencies = project.get("dependencies")
        if isinstance(dependencies, list):
            return Requirements(tuple(map(str, dependencies)), "declared in pyproject.toml")
    return None


def imported(sources: Iterable[Path], local_names: set[str]) -> Requirements:
    """The installed distributions the Python files `sources` import, pinned to their versions."""
    owners = importlib.metadata.packages_distributions()
    pins: set[str] = set()
    for name in sorted(_top_level_imports(sources) - local_names - set(sys.stdlib_module_names)):
        for distribution in owners.get(name, []):
            public = importlib.metadata.version(distribution).split("+")[0]  # no local label (+cpu)
            pins.add(f"{distribution}=={public}")
    return Requirements(tuple(sorted(pins, key=str.lower)), "inferred from the modules' imports")


def servekit_requirements() -> tuple[str, ...]:
    """servekit's own runtime dependencies (its extras left out)."""
    try:
        found = importlib.metadata.requires("servekit") or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(line for line in found if "extra ==" not in line)


def lock(requirements: Requirements, python_version: str) -> str:
    """`requirements` plus servekit's own, resolved and pinned with hashes by uv."""
    lines = [line for line in requirements.lines if not _is_servekit(line)]
    lines += servekit_requirements()
    with tempfile.TemporaryDirectory(prefix="servekit-lock-") as folder:
        Path(folder, _INPUT_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        command = [
            _uv(),
            "pip",
            "compile",
            "--generate-hashes",
            "--no-header",
            "--quiet",
            "--python-version",
            python_version,
            _INPUT_NAME,
        ]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BundleError(
            f"cannot resolve the app's requirements ({requirements.source}): {_reason(done.stderr)}; "
            "fix or drop that requirement"
        )
    return done.stdout


def locked_versions(lock_text: str) -> dict[str, str]:
    """Each distribution pinned in a lock, and its version."""
    versions: dict[str, str] = {}
    for line in lock_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            versions[name.strip().lower()] = rest.split()[0].rstrip("\\").strip().split(";")[0].strip()
    return versions


def _requirement_lines(path: Path) -> tuple[str, ...]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return tuple(lines)


def _top_level_imports(sources: Iterable[Path]) -> set[str]:
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def _is_servekit(line: str) -> bool:
    name = line.split(";", 1)[0].strip()
    for separator in ("[", "=", "<", ">", "!", "~", " ", "@"):
        name = name.split(separator)[0]
    return name.lower() == "servekit"


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        raise BundleError("resolving requirements.lock needs uv: pip install 'servekit[build]'")
    return found


def _reason(stderr: str) -> str:
    """uv's explanation, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("hint:", "help:"))] or lines or ["uv failed"]
    return " ".join(useful)[:400]
