"""A bundle's `models/`: the versions a graph references, pinned into a store of their own at build
time (fixed metadata, so the same versions give the same bytes), and the serve-time rewrite that
resolves references from there unless the user points at a store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import servekit as sk
from servekit._bundle.manifest import ModelEntry
from servekit._bundle.models import bundle_models, describe_models, serve_models_from
from servekit._models.store import ModelStore
from servekit._spec.graph import build_graph, map_model_refs
from servekit._spec.models import iter_model_refs
from servekit.errors import BundleError


@sk.deployment
class Model:
    def __init__(self, weights: str) -> None:
        self.weights = weights


@sk.deployment
class Api:
    def __init__(self, first: sk.DeploymentHandle, second: sk.DeploymentHandle, extra: object = None) -> None:
        self.first, self.second = first, second


def _store(root: Path, tmp_path: Path) -> ModelStore:
    """A store with model 'clf' v1 (a file) and v2, 'production' moved v1 -> v2 -> v1, and a folder model."""
    store = ModelStore(str(root))
    for version, text in (("v1", "hello"), ("v2", "howdy")):
        (tmp_path / version).mkdir(parents=True, exist_ok=True)
        (tmp_path / version / "greeting.txt").write_text(text)
        store.push("clf", tmp_path / version / "greeting.txt", version=version, meta={"note": version})
    store.tag("clf", "v1", "production")
    store.tag("clf", "v2", "production")
    store.rollback("clf", "production")
    folder = tmp_path / "tok"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("a b c")
    (folder / "sub" / "merges.txt").write_text("ab")
    store.push("tok", folder, version="t1")
    return store


def _app(store: str | None = None) -> sk.Application:
    return Api.bind(
        Model.bind(sk.model("clf", tag="production", store=store)),
        Model.options(name="Tokenizer").bind(sk.model("tok", version="t1", store=store)),
    )


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_bundled_store_holds_the_pinned_versions_and_servekit_reads_it(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", tmp_path)
    entries, files = bundle_models(build_graph(_app(store.url)), tmp_path / "bundle", "app.py:app")
    v1, t1 = store.version("clf", "v1"), store.version("tok", "t1")
    assert entries == [
        ModelEntry(name="clf", version="v1", tag="production", sha256=v1.sha256, size=5),
        ModelEntry(name="tok", version="t1", tag=None, sha256=t1.sha256, size=7),
    ]
    blobs = sorted(f"models/blobs/sha256/{entry.sha256}" for entry in (*v1.files, *t1.files))
    assert files == sorted(
        [*blobs, "models/models/clf/tags/production.json", "models/models/clf/versions/v1.json",
         "models/models/tok/versions/t1.json"]
    )  # fmt: skip
    bundled = ModelStore(str(tmp_path / "bundle" / "models"))
    assert bundled.models() == ["clf", "tok"]
    assert bundled.versions("clf") == ["v1"]  # v2 is not referenced: not bundled
    tag = bundled.get_tag("clf", "production")
    assert (tag.version, tag.history) == ("v1", (("v1", 0.0),))
    info = bundled.resolve("clf", "production")
    assert (info.sha256, info.meta, info.created_at) == (v1.sha256, {"note": "v1"}, 0.0)
    assert bundled.fetch(info, tmp_path / "out").read_text() == "hello"
    folder = bundled.fetch(bundled.version("tok", "t1"), tmp_path / "out2")
    assert (folder / "sub" / "merges.txt").read_text() == "ab"


def test_the_same_versions_pushed_elsewhere_and_later_give_the_same_bytes(tmp_path: Path) -> None:
    first = _store(tmp_path / "one", tmp_path / "a")
    second = _store(tmp_path / "two", tmp_path / "b")  # other push and tag times, another place
    second.tag("clf", "v2", "staging")  # tags the graph does not reference are not bundled
    bundle_models(build_graph(_app(first.url)), tmp_path / "x", "app.py:app")
    bundle_models(build_graph(_app(second.url)), tmp_path / "y", "app.py:app")
    assert _digests(tmp_path / "x") == _digests(tmp_path / "y")


def test_a_graph_without_models_bundles_none(tmp_path: Path) -> None:
    assert bundle_models(build_graph(Model.bind("w.pt")), tmp_path, "app.py:app") == ([], [])
    assert not (tmp_path / "models").exists()


def test_a_tag_that_does_not_resolve_is_one_line_naming_the_model_the_tag_and_the_fix(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", tmp_path)
    app = Model.bind(sk.model("clf", tag="staging", store=store.url))
    with pytest.raises(BundleError) as raised:
        bundle_models(build_graph(app), tmp_path / "bundle", "app.py:app")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cannot build 'app.py:app': deployment 'Model' binds model 'clf' tag 'staging'")
    assert "servekit models tag clf VERSION staging" in message
    missing = Model.bind(sk.model("nope", version="v9", store=store.url))
    with pytest.raises(BundleError, match=r"binds model 'nope' version 'v9'.*servekit models push nope PATH"):
        bundle_models(build_graph(missing), tmp_path / "bundle", "app.py:app")


def test_one_tag_pointing_to_two_versions_in_two_stores_is_refused(tmp_path: Path) -> None:
    one, two = _store(tmp_path / "one", tmp_path / "a"), _store(tmp_path / "two", tmp_path / "b")
    two.tag("clf", "v2", "production")
    app = Api.bind(Model.bind(sk.model("clf", tag="production", store=one.url)),
                   Model.bind(sk.model("clf", tag="production", store=two.url)))  # fmt: skip
    with pytest.raises(
        BundleError, match=r"model 'clf' tag 'production' points to 'v1' in one store and to 'v2'"
    ):
        bundle_models(build_graph(app), tmp_path / "bundle", "app.py:app")


ENTRIES = [
    ModelEntry(name="clf", version="v1", tag="production", sha256="a" * 64, size=5),
    ModelEntry(name="tok", version="t1", tag=None, sha256="b" * 64, size=7),
]


def _refs(app: sk.Application) -> list[sk.ModelRef]:
    return [ref for node in build_graph(app).nodes.values() for ref in iter_model_refs(node.init_args)]


def test_serving_pins_references_to_the_bundled_versions_in_the_bundled_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SERVEKIT_MODEL_STORE", raising=False)
    served = serve_models_from(_app(), ENTRIES, "/bundle/models")
    assert [(ref.name, ref.version, ref.tag, ref.store) for ref in _refs(served)] == [
        ("clf", "v1", None, "/bundle/models"),
        ("tok", "t1", None, "/bundle/models"),
    ]
    assert not any(ref.follows_tag for ref in _refs(served))  # pinned: nothing polls a tag


def test_a_store_the_user_names_wins_over_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_MODEL_STORE", raising=False)
    own = serve_models_from(_app(store="s3://bucket/models"), ENTRIES, "/bundle/models")
    assert [(ref.tag, ref.store) for ref in _refs(own)] == [
        ("production", "s3://bucket/models"),
        (None, "s3://bucket/models"),
    ]
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", "/elsewhere")
    app = _app()
    assert serve_models_from(app, ENTRIES, "/bundle/models") is app


def test_a_reference_the_bundle_lacks_names_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_MODEL_STORE", raising=False)
    with pytest.raises(
        BundleError,
        match=r"carries no model 'clf' tag 'staging' in models/ \(its models: clf:production, tok@t1\); rebuild",
    ):
        serve_models_from(Model.bind(sk.model("clf", tag="staging")), ENTRIES, "/bundle/models")


def test_rewriting_model_references_keeps_the_graph_shape_and_leaves_the_app_alone() -> None:
    shared = Model.bind(sk.model("clf", tag="production"))
    split = sk.split(
        {"a": shared, "b": Model.options(name="B").bind(sk.model("tok", version="t1"))},
        weights={"a": 1, "b": 1},
        name="r",
    )
    app = Api.bind(shared, split, extra=[{"ref": sk.model("tok", version="t1")}])
    copied = map_model_refs(app, lambda ref: sk.model(ref.name, version="pinned"))
    before, after = build_graph(app), build_graph(copied)
    assert sorted(after.nodes) == sorted(before.nodes)
    assert after.routers["r"].arms == before.routers["r"].arms
    assert {
        ref.version
        for node in after.nodes.values()
        for ref in iter_model_refs((node.init_args, node.init_kwargs))
    } == {"pinned"}
    assert shared.args[0].tag == "production"  # the user's objects are untouched


def test_serving_says_where_the_models_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_MODEL_STORE", raising=False)
    assert describe_models([]) is None
    assert describe_models(ENTRIES) == (
        "models from the bundle: clf:production -> v1, tok@t1 (a reference's own store= uses its store)"
    )
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", "/elsewhere")
    assert (
        describe_models(ENTRIES)
        == "models from SERVEKIT_MODEL_STORE=/elsewhere (not the bundle's pinned versions)"
    )
