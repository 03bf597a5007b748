"""One results file (``<stem>.json`` + ``<stem>.md``) shared by several benchmark scripts.

``benchmarks.run`` owns the wrk part of a file; ``benchmarks.hops``,
``benchmarks.step_load`` and ``benchmarks.soak`` each own one section (``hops``,
``step_load``, ``soak``) and merge it into the file named by their ``--out``, so the
commands with the same ``--out`` build one report.  Every write re-evaluates the targets
and re-renders the markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, report

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
#: Sections written by the scripts other than ``benchmarks.run``.
SECTIONS = ("hops", "step_load", "soak")


def default_stem(suffix: str = "process") -> Path:
    """``results/<date>-<host>-<suffix>``."""
    return RESULTS_DIR / f"{dt.date.today().isoformat()}-{machine.host_tag()}-{suffix}"


def load(stem: Path) -> dict[str, Any]:
    """The JSON of ``stem``, or ``{}`` when there is none yet."""
    path = stem.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}


def keep_sections(results: dict[str, Any], stem: Path) -> dict[str, Any]:
    """``results`` plus the :data:`SECTIONS` already in ``stem``'s JSON (``benchmarks.run`` uses it)."""
    previous = load(stem)
    return {**results, **{key: previous[key] for key in SECTIONS if key in previous and key not in results}}


def write(results: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """Re-evaluate the targets; write ``<stem>.json`` and ``<stem>.md``."""
    results["targets"] = report.targets(results)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(report.markdown(results) + "\n")
    return json_path, md_path


def merge_section(stem: Path, key: str, section: dict[str, Any]) -> tuple[Path, Path]:
    """Put ``section`` under ``key`` in ``stem``'s results (creating the file) and rewrite it."""
    results = load(stem)
    results[key] = section
    results.setdefault("machine", machine.describe(None))
    return write(results, stem)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.harness.results_file STEM [--notes FILE]``: re-render, optionally
    setting the hand-written summary (markdown shown under the targets)."""
    parser = argparse.ArgumentParser(description="re-render a results file")
    parser.add_argument("stem", type=Path)
    parser.add_argument("--notes", type=Path, default=None, help="markdown file: the summary")
    args = parser.parse_args(argv)
    results = load(args.stem)
    if not results:
        parser.error(f"{args.stem.with_suffix('.json')} does not exist")
    if args.notes is not None:
        results["notes"] = args.notes.read_text().strip()
    json_path, md_path = write(results, args.stem)
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
