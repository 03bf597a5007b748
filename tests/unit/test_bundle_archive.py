"""The bundle archive and manifest: same files, same bytes; a changed file is named when verified."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from servekit._bundle.archive import unpack_archive, write_archive
from servekit._bundle.manifest import MANIFEST_NAME, FileEntry, Manifest, file_entries, read_manifest, verify
from servekit._bundle.store import check_servekit_version
from servekit.errors import BundleError


def _bundle(folder: Path, files: dict[str, str]) -> list[str]:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    paths = sorted(files)
    manifest = _manifest(file_entries(folder, paths))
    (folder / MANIFEST_NAME).write_bytes(manifest.to_json())
    return [MANIFEST_NAME, *paths]


def _manifest(files: list[FileEntry], servekit: str = "0.1.0") -> Manifest:
    return Manifest(
        name="demo",
        version="1",
        entrypoint="app.py:app",
        ingress="Api",
        deployments={},
        routes=[["POST", "/x"]],
        python="3.11",
        servekit=servekit,
        requirements_source="declared in requirements.txt",
        dependencies={},
        files=files,
    )


def test_the_same_files_give_the_same_bytes_whatever_their_mtimes_and_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    files = {"src/app.py": "print(1)\n", "src/lib/x.py": "", "requirements.lock": "a==1\n"}
    paths_a = _bundle(first, files)
    paths_b = _bundle(second, dict(reversed(files.items())))
    os.utime(second / "src/app.py", (1, 1))
    write_archive(first, paths_a, tmp_path / "a.tar.gz")
    write_archive(second, list(reversed(paths_b)), tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_entries_are_sorted_owned_by_root_with_fixed_times_and_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    paths = _bundle(tmp_path / "b", {"src/z.py": "", "src/a.py": ""})
    write_archive(tmp_path / "b", paths, tmp_path / "out.tar.gz")
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(paths)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime, m.mode) for m in members} == {
        (0, 0, "", "", 1700000000, 0o644)
    }
    header = (tmp_path / "out.tar.gz").read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert gzip.decompress((tmp_path / "out.tar.gz").read_bytes())


def test_verify_names_a_tampered_a_missing_and_an_added_file(tmp_path: Path) -> None:
    paths = _bundle(tmp_path / "b", {"src/app.py": "x = 1\n", "src/lib.py": ""})
    write_archive(tmp_path / "b", paths, tmp_path / "out.tar.gz")
    unpack_archive(tmp_path / "out.tar.gz", tmp_path / "u")
    assert verify(tmp_path / "u").name == "demo"
    (tmp_path / "u/src/__pycache__").mkdir()
    (tmp_path / "u/src/__pycache__/app.cpython-311.pyc").write_bytes(b"")
    assert verify(tmp_path / "u").name == "demo"  # bytecode caches are not tampering
    (tmp_path / "u/src/app.py").write_text("x = 2\n")
    with pytest.raises(BundleError, match=r"bundle file 'src/app.py' does not match its sha256"):
        verify(tmp_path / "u")
    (tmp_path / "u/src/app.py").unlink()
    with pytest.raises(BundleError, match=r"'src/app.py' is missing"):
        verify(tmp_path / "u")
    unpack_archive(tmp_path / "out.tar.gz", tmp_path / "v")
    (tmp_path / "v/src/evil.py").write_text("")
    with pytest.raises(BundleError, match=r"'src/evil.py' is not listed"):
        verify(tmp_path / "v")


def test_a_bundle_for_a_newer_servekit_or_manifest_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        BundleError, match=r"built with servekit 99\.0, newer than this servekit .*pip install"
    ):
        check_servekit_version(_manifest([], servekit="99.0"), "b.tar.gz")
    (tmp_path / MANIFEST_NAME).write_text('{"format": 7, "servekit": "99.0"}')
    with pytest.raises(BundleError, match=r"manifest format 7, newer .* servekit 99.0: upgrade"):
        read_manifest(tmp_path)


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"is not a bundle: it has no servekit.json"):
        verify(tmp_path)
