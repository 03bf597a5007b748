"""The model store on real fsspec filesystems (a local folder and `memory://`), and the node cache."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import servekit as sk
from servekit._models.cache import CacheEntry, ModelCache, evictable
from servekit._models.store import ModelStore
from servekit.errors import (
    DeploymentOptionError,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStoreError,
    ModelStoreUnavailableError,
)


@pytest.fixture(params=["local", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    url = f"memory://models-{uuid.uuid4().hex}"
    yield url
    ModelStore(url).fs.rm(ModelStore(url).root, recursive=True)


def _weights(folder: Path, text: str, name: str = "weights.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_push_is_content_addressed_and_identical_content_is_one_copy(store_url: str, tmp_path: Path) -> None:
    store = ModelStore(store_url)
    first = store.push("clf", _weights(tmp_path / "a", "w1"))
    again = store.push("clf", _weights(tmp_path / "b", "w1"))
    assert again == first
    assert first.version == first.sha256[:12]
    assert len(store.fs.ls(f"{store.root}/blobs/sha256")) == 1
    assert store.get_tag("clf", "latest").version == first.version


def test_a_folder_pushes_every_file_and_fetches_back(store_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _weights(folder, "config")
    _weights(folder / "sub", "layer", "layer.bin")
    store = ModelStore(store_url)
    info = store.push("clf", folder, version="v1", meta={"accuracy": "0.9"})
    assert [entry.path for entry in info.files] == ["sub/layer.bin", "weights.txt"]
    fetched = store.fetch(info, tmp_path / "out")
    assert (fetched / "sub" / "layer.bin").read_text() == "layer"
    assert store.version("clf", "v1").meta == {"accuracy": "0.9"}


def test_a_version_with_other_content_is_refused(store_url: str, tmp_path: Path) -> None:
    store = ModelStore(store_url)
    store.push("clf", _weights(tmp_path / "a", "w1"), version="v1")
    with pytest.raises(ModelStoreError, match=r"'clf' already has a version 'v1'.*another --version"):
        store.push("clf", _weights(tmp_path / "b", "w2"), version="v1")


def test_tags_move_with_history_and_roll_back(store_url: str, tmp_path: Path) -> None:
    store = ModelStore(store_url)
    store.push("clf", _weights(tmp_path / "a", "w1"), version="v1")
    store.push("clf", _weights(tmp_path / "b", "w2"), version="v2")
    store.tag("clf", "v1", "production")
    moved = store.tag("clf", "v2", "production")
    assert [version for version, _ in moved.history] == ["v1", "v2"]
    assert store.rollback("clf", "production").version == "v1"
    assert store.resolve("clf", "production").version == "v1"
    with pytest.raises(ModelStoreError, match="no earlier version to roll back to"):
        store.rollback("clf", "production")
    store.untag("clf", "production")
    assert [tag.tag for tag in store.tags("clf")] == ["latest"]


def test_unknown_models_versions_and_tags_name_the_fix(store_url: str, tmp_path: Path) -> None:
    store = ModelStore(store_url)
    with pytest.raises(
        ModelNotFoundError, match=r"model 'clf' is not in the store.*servekit models push clf"
    ):
        store.resolve("clf", "production")
    store.push("clf", _weights(tmp_path / "a", "w1"), version="v1")
    with pytest.raises(ModelNotFoundError, match=r"no tag 'production' \(tags: latest\).*models tag clf"):
        store.resolve("clf", "production")
    with pytest.raises(ModelNotFoundError, match=r"no version 'v9' \(versions: v1\)"):
        store.tag("clf", "v9", "production")


def test_rm_refuses_a_tagged_version_and_gc_frees_unreferenced_blobs(store_url: str, tmp_path: Path) -> None:
    store = ModelStore(store_url)
    store.push("clf", _weights(tmp_path / "a", "w1"), version="v1")
    store.push("clf", _weights(tmp_path / "b", "w2"), version="v2")
    with pytest.raises(ModelStoreError, match="tagged latest; move or remove the tag first"):
        store.remove("clf", "v2")
    store.remove("clf", "v1")
    assert store.versions("clf") == ["v2"]
    assert store.gc() == (1, 2)
    assert store.fetch(store.version("clf", "v2"), tmp_path / "out").read_text() == "w2"


def test_a_push_that_dies_midway_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(str(tmp_path / "store"))
    folder = tmp_path / "model"
    _weights(folder, "one", "a.bin")
    _weights(folder, "two", "b.bin")
    calls = []

    def dying_upload(source: Path, sha256: str) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(source, sha256)

    original = store._upload
    monkeypatch.setattr(store, "_upload", dying_upload)
    with pytest.raises(KeyboardInterrupt):
        store.push("clf", folder, version="v1")
    with pytest.raises(ModelNotFoundError):
        store.versions("clf")


def test_concurrent_pushes_of_many_versions_are_all_stored(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    sources = [_weights(tmp_path / f"src{i}", f"weights {i % 3}") for i in range(8)]
    errors: list[BaseException] = []

    def push(index: int) -> None:
        try:
            ModelStore(url).push("clf", sources[index], version=f"v{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = ModelStore(url)
    assert errors == []
    assert sorted(store.versions("clf")) == [f"v{i}" for i in range(8)]
    assert len(store.fs.ls(f"{store.root}/blobs/sha256")) == 3
    assert store.fs.ls(f"{store.root}/tmp") == []


def test_an_unopenable_store_names_the_url() -> None:
    with pytest.raises(ModelStoreUnavailableError, match="'nosuchproto://x' cannot be opened"):
        ModelStore("nosuchproto://x")


def test_the_cache_downloads_once_verifies_and_names_the_folder_of_a_corrupt_copy(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    info = store.push("clf", _weights(tmp_path / "a", "w1"), version="v1")
    cache = ModelCache(tmp_path / "cache")
    path = cache.get(store, info)
    assert path.read_text() == "w1"
    assert cache.get(store, info) == path
    path.write_text("tampered")
    with pytest.raises(ModelIntegrityError, match=r"model 'clf' version 'v1'.*corrupted cache.*delete"):
        cache.get(store, info)


def test_the_cache_evicts_least_recently_used_unpinned_versions(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    infos = [store.push("clf", _weights(tmp_path / f"s{i}", f"w{i}" * 10), version=f"v{i}") for i in range(3)]
    cache = ModelCache(tmp_path / "cache", max_bytes=50)
    cache.get(store, infos[0], pin="Clf#0")
    cache.get(store, infos[1])
    cache.get(store, infos[2])  # 60 bytes > 50: v1 goes (v0 is pinned, v2 just fetched)
    assert sorted(entry.key for entry in cache.entries()) == sorted([infos[0].sha256, infos[2].sha256])
    cache.unpin(infos[0], "Clf#0")
    cache.max_bytes = 20
    assert cache.evict() == [infos[0].sha256]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([CacheEntry("a", 10, 1, False), CacheEntry("b", 10, 2, False)], ["a"]),
        ([CacheEntry("a", 10, 1, True), CacheEntry("b", 10, 2, False)], ["b"]),
        ([CacheEntry("a", 10, 1, True), CacheEntry("keep", 10, 2, False)], []),
        ([CacheEntry("a", 5, 1, False)], []),
    ],
)
def test_eviction_takes_oldest_unpinned_first(entries: list[CacheEntry], expected: list[str]) -> None:
    assert evictable(entries, max_bytes=15, keep="keep") == expected


def test_the_python_api_round_trips(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    sk.models.push("clf", _weights(tmp_path / "a", "w1"), version="v1", store=url)
    sk.models.tag("clf", "v1", "production", store=url)
    path = sk.models.get("clf:production", store=url, cache_dir=tmp_path / "cache")
    assert path.read_text() == "w1"
    assert sk.models.resolve("clf@v1", store=url).version == "v1"
    assert sk.models.show("clf", store=url)["tags"]["production"]["version"] == "v1"
    assert sk.models.list_models(store=url) == ["clf"]


def test_model_references_are_checked_when_made() -> None:
    assert sk.model("clf").target == "clf:latest"
    assert sk.model("clf", version="v7").target == "clf@v7"
    with pytest.raises(DeploymentOptionError, match="a tag or a version, not both"):
        sk.model("clf", tag="production", version="v7")
    with pytest.raises(DeploymentOptionError, match="bad tag 'prod/1'"):
        sk.model("clf", tag="prod/1")
