"""mkdocs hook: fail the build when a page's snippet include did not make it into its HTML.

In: each page's Markdown source (after the other hooks) and its rendered HTML. Out: nothing,
or a `PluginError` naming the page and the include. A page passes when every
`--8<-- "path"` line names a file whose text appears in the rendered page (tags stripped,
whitespace collapsed), and no include text is left in the HTML or the source in a form
pymdownx.snippets does not recognise (`--8 < --"path"` is what a Python formatter makes of
an include inside a ``python`` fence). `mkdocs build --strict` alone does not catch a
mangled include: the line is just text to it.

The functions below do not import mkdocs, so tests/unit/test_docs_snippets.py checks them
(and every page's source) without building the site.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: pymdownx.snippets' single-line include, as `base_path: ["."]` resolves it (repo root).
INCLUDE = re.compile(r"""^[ \t]*-{1,}8<-{1,}[ \t]+(["'])(?P<path>[^"'\n]+)\1[ \t]*$""", re.MULTILINE)
#: Anything that looks like an include marker, well formed or not.
MARKER = re.compile(r"-+\s*8\s*<\s*-+")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def includes(markdown: str) -> list[str]:
    """The paths of the well-formed single-line includes in `markdown`, in order."""
    return [match.group("path") for match in INCLUDE.finditer(markdown)]


def malformed_markers(markdown: str) -> list[str]:
    """Lines that carry an include marker but are not a well-formed include."""
    return [
        line.strip() for line in markdown.splitlines() if MARKER.search(line) and not INCLUDE.fullmatch(line)
    ]


def visible_text(page_html: str) -> str:
    """The text of `page_html`: tags removed, entities decoded, whitespace collapsed."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub("", page_html))).strip()


def _file_text(path: str, root: Path) -> str | None:
    file = root / path
    return file.read_text() if file.is_file() else None


def problems(markdown: str, page_html: str, root: Path = REPO_ROOT) -> list[str]:
    """Everything wrong with one page's includes; empty when each one rendered."""
    found = [
        f"not a snippet include (pymdownx.snippets ignores it): {line!r}"
        for line in malformed_markers(markdown)
    ]
    text = visible_text(page_html)
    for path in includes(markdown):
        content = _file_text(path, root)
        if content is None:
            found.append(f"included file {path!r} does not exist")
        elif _SPACE.sub(" ", content).strip() not in text:
            found.append(f"the content of {path!r} is not in the rendered page")
    if MARKER.search(text):
        found.append("the rendered page still shows include text ('--8<--')")
    return found


def on_page_content(html: str, page: Any, **_: Any) -> str:
    """Check the page just rendered; raise a `PluginError` listing what went wrong."""
    found = problems(page.markdown or "", html)
    if found:
        from mkdocs.exceptions import PluginError  # noqa: PLC0415 (the tests import this file without mkdocs)

        raise PluginError(f"{page.file.src_path}: " + "; ".join(found))
    return html
