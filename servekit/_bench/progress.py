"""The live progress line of a phase (tqdm): time elapsed of warm-up plus duration, requests,
the current request rate and errors. Off when stderr is not a terminal, unless forced."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm import tqdm

_RATE_WINDOW_S = 0.5


class PhaseProgress:
    """A progress bar for one phase; feed it with `update(finished, failed)` (totals so far)."""

    def __init__(self, label: str, seconds: float, enabled: bool | None) -> None:
        self._bar = tqdm(
            total=round(seconds, 1),
            desc=f"{label:>10}",
            unit="s",
            bar_format="{desc} {bar:20} {n:.1f}/{total:.1f} s {postfix}",
            disable=None if enabled is None else not enabled,  # None: only on a terminal
            file=sys.stderr,
            leave=False,
        )
        self._started = time.monotonic()
        self._last = (self._started, 0)
        self._rate = 0.0

    def update(self, finished: int, failed: int) -> None:
        """Show `finished` requests so far (`failed` of them errors)."""
        now = time.monotonic()
        then, before = self._last
        if now - then >= _RATE_WINDOW_S:
            self._rate = (finished - before) / (now - then)
            self._last = (now, finished)
        self._bar.n = min(round(now - self._started, 1), self._bar.total)
        text = f"{finished} requests, {self._rate:,.0f} req/s, {failed} errors"
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
