"""A deployment that does not import the helper: an edit to `helpers.py` must not roll it."""

import servekit as sk


@sk.deployment
class Preprocess:
    def __call__(self, text: str) -> str:
        return text.strip().lower()
