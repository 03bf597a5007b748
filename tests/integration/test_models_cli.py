"""`servekit models ...` as a real subprocess against a real store folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SERVEKIT_MODEL_STORE": str(store),
        "SERVEKIT_MODEL_CACHE": str(store.parent / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "servekit", "models", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_push_tag_promote_roll_back_and_errors_from_the_shell(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (tmp_path / "w1").write_text("one")
    (tmp_path / "w2").write_text("two")
    pushed = _cli(store, "push", "clf", str(tmp_path / "w1"), "--version", "v1", "--meta", "acc=0.9")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("pushed clf@v1 sha256:")
    assert _cli(store, "push", "clf", str(tmp_path / "w2"), "--version", "v2").returncode == 0
    assert _cli(store, "tag", "clf", "v1", "production").stdout.strip() == "clf:production -> v1"
    assert _cli(store, "tag", "clf", "v2", "production").returncode == 0
    path = _cli(store, "get", "clf:production").stdout.strip()
    assert Path(path).read_text() == "two"
    assert _cli(store, "rollback", "clf", "production").stdout.strip() == "clf:production -> v1 (rolled back)"
    shown = json.loads(_cli(store, "show", "clf").stdout)
    assert shown["tags"]["production"] == {"version": "v1", "history": ["v1"]}
    assert shown["versions"][0]["meta"] == {"acc": "0.9"}
    assert _cli(store, "list").stdout.split() == ["clf"]
    missing = _cli(store, "get", "clf:staging")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "servekit: error: model 'clf' has no tag 'staging' (tags: latest, production); "
        "set it with `servekit models tag clf VERSION staging`"
    )
    bad_meta = _cli(store, "push", "clf", str(tmp_path / "w1"), "--meta", "novalue")
    assert "is not KEY=VALUE" in bad_meta.stderr
