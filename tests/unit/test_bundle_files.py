"""Which project files a bundle takes: ignore files, debris, secrets, sizes, --include/--exclude."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit._bundle.files import Selection, looks_secret, select_files
from servekit.errors import BundleError


def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_gitignore_servekitignore_and_debris_are_left_out(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app.py": "",
            "lib/util.py": "",
            "lib/__pycache__/util.cpython-311.pyc": "",
            ".gitignore": "*.log\nbuild/\n",
            ".servekitignore": "notes/\n",
            "run.log": "",
            "build/out.txt": "",
            "notes/todo.md": "",
            "lib/.gitignore": "scratch.py\n",
            "lib/scratch.py": "",
            ".venv/lib/x.py": "",
        },
    )
    assert select_files(root) == [".gitignore", ".servekitignore", "app.py", "lib/.gitignore", "lib/util.py"]


def test_a_parent_gitignore_up_to_the_repository_root_applies(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {".git/HEAD": "", ".gitignore": "app/weights/\n", "app/main.py": "", "app/weights/w.bin": ""},
    )
    assert select_files(tmp_path / "app") == ["main.py"]


def test_include_brings_back_an_ignored_file_and_exclude_drops_one(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, {".gitignore": "weights/\n", "app.py": "", "tests/test_app.py": "", "weights/m.pt": ""}
    )
    chosen = select_files(root, Selection(include=["weights/m.pt"], exclude=["tests/"]))
    assert chosen == [".gitignore", "app.py", "weights/m.pt"]


@pytest.mark.parametrize(
    "name", [".env", ".env.production", "id_rsa", "server.pem", "tls.key", "credentials.json"]
)
def test_a_secret_looking_file_is_refused_naming_it_unless_included(tmp_path: Path, name: str) -> None:
    root = _tree(tmp_path, {"app.py": "", f"conf/{name}": "x"})
    with pytest.raises(BundleError, match=f"'conf/{name}' looks like a secret.*--include"):
        select_files(root)
    assert f"conf/{name}" in select_files(root, Selection(include=[f"conf/{name}"]))


def test_example_env_files_are_not_secrets() -> None:
    assert not looks_secret(".env.example")
    assert not looks_secret("app.py")


def test_a_file_over_the_size_limit_is_refused_unless_included(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"app.py": "", "data.bin": "x" * 2048})
    with pytest.raises(BundleError, match=r"'data.bin' is .* over the .* limit.*--include 'data.bin'"):
        select_files(root, Selection(max_file_bytes=1024))
    assert select_files(root, Selection(include=["*.bin"], max_file_bytes=1024)) == ["app.py", "data.bin"]
