"""docs/cli.md documents every flag of `servekit serve`, and no flag the command lacks."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from servekit._cli.main import build_parser

CLI_PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _serve_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {
        option
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_serve_flag_is_documented() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)", CLI_PAGE.read_text(), re.MULTILINE))
    assert documented == _serve_flags()
