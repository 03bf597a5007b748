"""docs/bench.md documents every flag of `servekit bench`, and no flag the command lacks."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from servekit._cli.main import build_parser

BENCH_PAGE = Path(__file__).resolve().parents[2] / "docs" / "bench.md"


def _bench_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        option
        for action in commands.choices["bench"]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_bench_flag_is_documented() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)", BENCH_PAGE.read_text(), re.MULTILINE))
    assert documented == _bench_flags()
