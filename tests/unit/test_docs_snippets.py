"""Snippet includes in docs/: well formed, shielded from the formatter, and checked in the built HTML.

The docs build runs docs/hooks/snippets_check.py on every page (mkdocs.yml); these tests pin
its rules without mkdocs, and check every page's source against them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FMT_OFF, FMT_ON = "<!-- fmt: off -->", "<!-- fmt: on -->"


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "snippets_check", ROOT / "docs" / "hooks" / "snippets_check.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _hook()


def test_the_docs_build_runs_the_snippet_check() -> None:
    assert "docs/hooks/snippets_check.py" in (ROOT / "mkdocs.yml").read_text()


def test_the_docs_include_examples() -> None:
    included = {path for page in PAGES for path in hook.includes(page.read_text())}
    assert {
        "examples/hello.py",
        "examples/handles.py",
        "examples/batching.py",
        "examples/http_api.py",
    } <= included


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_include_is_well_formed_and_names_a_file(page: Path) -> None:
    text = page.read_text()
    assert hook.malformed_markers(text) == []
    assert [path for path in hook.includes(text) if not (ROOT / path).is_file()] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_include_is_shielded_from_the_formatter(page: Path) -> None:
    """ruff (>= 0.16) formats Python fences in Markdown and turns `--8<-- "x"` into `--8 < --"x"`."""
    shielded = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        shielded = {FMT_OFF: True, FMT_ON: False}.get(line.strip(), shielded)
        if hook.MARKER.search(line):
            assert shielded, f"{page.name}:{number}: put the include's fence between {FMT_OFF} and {FMT_ON}"


def _highlighted(source: str) -> str:
    """`source` as a highlighter renders it: one span per token, entities escaped."""
    spans = "".join(f'<span class="n">{token}</span>' for token in re.split(r"(\s+)", source))
    return f'<div class="highlight"><pre><code>{spans}</code></pre></div>'


def test_a_rendered_include_passes(tmp_path: Path) -> None:
    (tmp_path / "ex.py").write_text('def f(a, b):\n    return a < b and "x"\n')
    html = _highlighted("def f(a, b):\n    return a &lt; b and &quot;x&quot;\n")
    assert hook.problems('```python\n--8<-- "ex.py"\n```\n', html, tmp_path) == []


def test_an_include_whose_content_is_missing_from_the_page_fails(tmp_path: Path) -> None:
    (tmp_path / "ex.py").write_text("print('hi')\n")
    found = hook.problems('```python\n--8<-- "ex.py"\n```\n', "<pre><code></code></pre>", tmp_path)
    assert found == ["the content of 'ex.py' is not in the rendered page"]


def test_a_missing_included_file_fails(tmp_path: Path) -> None:
    found = hook.problems('--8<-- "nope.py"\n', "<p></p>", tmp_path)
    assert found == ["included file 'nope.py' does not exist"]


def test_a_formatter_mangled_include_fails(tmp_path: Path) -> None:
    markdown = '```python\n--8 < --"examples/hello.py"\n```\n'
    found = hook.problems(
        markdown, "<pre><code>--8 &lt; --&quot;examples/hello.py&quot;</code></pre>", tmp_path
    )
    assert len(found) == 2
    assert "not a snippet include" in found[0]
    assert "still shows include text" in found[1]
