"""Splitting text into lower-case words (a sibling module, bundled with the app)."""

import re

_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """The words of `text`, lower-cased, in order."""
    return _WORD.findall(text.lower())
