"""The Ray option table in docs/ray.md names every servekit option, so the docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import servekit as sk

DOC = Path(__file__).resolve().parents[2] / "docs" / "ray.md"


def _mapping_rows() -> str:
    text = DOC.read_text()
    start = text.index("## How the options map")
    return text[start : text.index("\n## ", start + 1)]


def test_every_deployment_option_has_a_row_in_the_ray_mapping_table() -> None:
    rows = _mapping_rows()
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", rows))
    expected = {name for name in sk.DeploymentConfig.model_fields if name not in {"resources", "autoscaling"}}
    expected |= {f"resources.{name}" for name in sk.Resources.model_fields}
    expected |= {f"autoscaling.{name}" for name in sk.Autoscaling.model_fields}
    mentioned = named | {f"autoscaling.{name}" for name in named} | {f"resources.{name}" for name in named}
    assert sorted(expected - mentioned) == []
