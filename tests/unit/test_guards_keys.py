"""The keys document: parsed (YAML or JSON), refused with the fault named, found by hash, reloaded
when its file changes, and edited by `servekit keys` without ever storing a key."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from servekit._cli.main import main
from servekit._http.guards.keyfile import create_key, entries, revoke_key
from servekit._http.guards.keys import (
    DEFAULT_PUBLIC,
    KeyRing,
    KeySource,
    hash_key,
    key_source,
    new_key,
    parse_keys,
)
from servekit.errors import DeploymentOptionError

KEY = "sk_test_key_with_enough_entropy_0001"
OTHER = "sk_test_key_with_enough_entropy_0002"


def document(*keys: dict[str, object], **extra: object) -> str:
    return json.dumps({"keys": list(keys), **extra})


def entry(name: str = "web", key: str = KEY, **fields: object) -> dict[str, object]:
    return {"name": name, "hash": hash_key(key), "scopes": ["invoke"], **fields}


def test_a_key_is_found_by_its_hash_and_a_wrong_one_is_not() -> None:
    keys = parse_keys(document(entry()), "test")
    found = keys.lookup(KEY.encode())
    assert found is not None
    assert found.name == "web"
    assert keys.lookup(OTHER.encode()) is None
    assert keys.lookup(KEY[:-1].encode()) is None


def test_yaml_and_json_documents_read_the_same() -> None:
    yaml_text = f"""
keys:
  - name: web
    hash: {hash_key(KEY)}
    scopes: [invoke]
    expires: 2030-01-01
    rate_limit: 5/s burst 10
"""
    from_yaml = parse_keys(yaml_text, "keys.yaml").lookup(KEY.encode())
    from_json = parse_keys(
        document(entry(expires="2030-01-01T00:00:00Z", rate_limit="5/s burst 10")), "keys.json"
    ).lookup(KEY.encode())
    assert from_yaml == from_json
    assert from_yaml is not None
    assert from_yaml.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert str(from_yaml.rate_limit) == "5/s burst 10"


def test_a_bare_list_and_an_empty_document_are_accepted() -> None:
    assert len(parse_keys(json.dumps([entry()]), "test")) == 1
    empty = parse_keys("", "test")
    assert len(empty) == 0
    assert empty.public == DEFAULT_PUBLIC


def test_public_paths_default_to_the_docs_and_can_be_set() -> None:
    keys = parse_keys(document(), "test")
    assert [keys.is_public(p) for p in ["/docs", "/docs/x.css", "/openapi.json", "/predict"]] == [
        True,
        True,
        True,
        False,
    ]
    custom = parse_keys(document(public=["/metrics", "/demo/*"]), "test")
    assert [custom.is_public(p) for p in ["/metrics", "/demo/a", "/docs"]] == [True, True, False]
    assert not parse_keys(document(public=[]), "test").is_public("/docs")


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("keys: [", "not valid YAML or JSON"),
        (document({"name": "web", "hash": "md5:abc", "scopes": ["invoke"]}), "keys.0.hash"),
        (document({"name": "web", "hash": hash_key(KEY), "scopes": []}), "keys.0.scopes"),
        (document({"name": "web", "hash": hash_key(KEY)}), "keys.0.scopes: Field required"),
        (document(entry(key_text="x")), "keys.0.key_text: Extra inputs are not permitted"),
        (document(entry(), entry(key=OTHER)), "key 'web' (#2): the name is used twice"),
        (document(entry(), entry(name="copy")), "key 'copy' (#2): the same hash as key 'web'"),
        (document(entry(scopes=["read"])), "key 'web' (#1): scope 'read' is unknown"),
        (document(entry(rate_limit="lots")), "key 'web' (#1): rate limit 'lots' is malformed"),
        (document(entry(expires="someday")), "keys.0.expires"),
        (json.dumps({"users": []}), "users: Extra inputs are not permitted"),
    ],
)
def test_a_bad_document_is_refused_naming_the_fault(text: str, fault: str) -> None:
    with pytest.raises(DeploymentOptionError, match=r"API keys in keys\.yaml") as error:
        parse_keys(text, "keys.yaml")
    assert fault in str(error.value)


def test_keys_come_from_the_argument_then_the_file_variable_then_the_document_variable(
    tmp_path: Path,
) -> None:
    given, named = tmp_path / "given.yaml", tmp_path / "named.yaml"
    given.write_text(document(entry(name="given")))
    named.write_text(document(entry(name="named")))
    inline = document(entry(name="inline"))
    env = {"SERVEKIT_API_KEYS_FILE": str(named), "SERVEKIT_API_KEYS": inline}
    assert key_source(given, env) == KeySource(str(given), given.read_text(), str(given))
    assert key_source(None, env) == KeySource(str(named), named.read_text(), str(named))
    assert key_source(None, {"SERVEKIT_API_KEYS": inline}) == KeySource("$SERVEKIT_API_KEYS", inline)
    assert key_source(None, {}) is None


def test_an_unreadable_or_bad_keys_source_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(DeploymentOptionError, match="cannot read the API keys file"):
        key_source(tmp_path / "missing.yaml", {})
    with pytest.raises(DeploymentOptionError, match=r"API keys in \$SERVEKIT_API_KEYS: keys.0.name"):
        key_source(None, {"SERVEKIT_API_KEYS": document({"hash": hash_key(KEY), "scopes": ["invoke"]})})


def test_the_ring_rereads_a_changed_file_at_most_every_reload_s(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(document(entry()))
    ring = KeyRing(KeySource(str(path), path.read_text(), str(path)), reload_s=5.0)
    assert ring.current(0.0).lookup(KEY.encode()) is not None
    _replace(path, document(entry(name="other", key=OTHER)))
    assert ring.current(1.0).lookup(KEY.encode()) is not None  # checked at 0: next check at 5
    assert ring.current(5.0).lookup(KEY.encode()) is None
    assert ring.current(5.0).lookup(OTHER.encode()) is not None


def test_a_file_that_stops_parsing_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(document(entry()))
    ring = KeyRing(KeySource(str(path), path.read_text(), str(path)), reload_s=0.0)
    _replace(path, "keys: [")
    assert ring.current(1.0).lookup(KEY.encode()) is not None
    assert "keeping the previous keys" in caplog.text
    path.unlink()
    assert ring.current(2.0).lookup(KEY.encode()) is not None


def test_a_ring_whose_file_is_not_here_serves_the_keys_read_at_start(tmp_path: Path) -> None:
    """As on a Ray node without the file: the text read where `serve` ran travels with the options."""
    ring = KeyRing(KeySource("keys.yaml", document(entry()), str(tmp_path / "elsewhere.yaml")))
    assert ring.current(0.0).lookup(KEY.encode()) is not None
    assert not ring.check()


def _replace(path: Path, text: str) -> None:
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def test_create_writes_only_the_hash_and_the_key_works(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = create_key(path, "web", ["invoke:/predict*"], dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "5/s")
    text = path.read_text()
    assert key.startswith("sk_")
    assert key not in text
    assert hash_key(key) in text
    assert "2030-01-01T00:00:00Z" in text
    found = parse_keys(text, str(path)).lookup(key.encode())
    assert found is not None
    assert found.scopes.describe() == ["invoke:/predict*"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_create_keeps_the_rest_of_the_document_and_its_format(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(document(entry(), public=["/metrics"]))
    create_key(path, "second", ["metrics"])
    written = json.loads(path.read_text())
    assert [k["name"] for k in written["keys"]] == ["web", "second"]
    assert written["public"] == ["/metrics"]


def test_create_and_revoke_refuse_what_would_break_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    create_key(path, "web", ["invoke"])
    with pytest.raises(DeploymentOptionError, match="already has a key named 'web'"):
        create_key(path, "web", ["invoke"])
    with pytest.raises(DeploymentOptionError, match="scope 'reader' is unknown"):
        create_key(path, "other", ["reader"])
    with pytest.raises(DeploymentOptionError, match=r"has no key named 'nope' \(it has 'web'\)"):
        revoke_key(path, "nope")
    revoke_key(path, "web")
    assert entries(path) == []


def test_new_keys_are_long_and_distinct() -> None:
    made = {new_key() for _ in range(100)}
    assert len(made) == 100
    assert all(len(key) == 46 for key in made)


def test_the_keys_command_creates_lists_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "keys.yaml")
    args = ["keys", "create", "--file", path, "--name", "ops", "--scope", "admin", "--scope", "metrics"]
    assert main([*args, "--expires", "30d", "--rate-limit", "5/s"]) == 0
    created = capsys.readouterr()
    key = created.out.strip()
    assert "shown once" in created.err
    assert parse_keys(Path(path).read_text(), path).lookup(key.encode()) is not None
    assert main(["keys", "list", "--file", path, "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["scopes"], listed["state"]) == ("ops", ["admin", "metrics"], "active")
    assert key not in json.dumps(listed)
    monkeypatch.setattr("sys.stdin", _Stdin(key + "\n"))
    assert main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_key(key)
    assert main(["keys", "revoke", "--file", path, "--name", "ops"]) == 0
    assert main(["keys", "list", "--file", path]) == 0
    assert "no keys" in capsys.readouterr().out


def test_the_keys_command_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys.yaml")
    base = ["keys", "create", "--file", path, "--name", "x"]
    assert main([*base, "--scope", "invoke:predict"]) == 1
    assert "a route pattern starts with '/'" in capsys.readouterr().err
    assert main([*base, "--scope", "invoke", "--expires", "soon"]) == 1
    assert "neither a date (2026-12-31) nor a duration (30d, 12h)" in capsys.readouterr().err
    assert not Path(path).exists()


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def readline(self) -> str:
        return self.text
