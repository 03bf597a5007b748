"""docs/observability.md lists every metric family servekit exposes, with its type and labels, and
the example Grafana dashboard charts every family and only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

from servekit._telemetry.metrics import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "observability.md"
GRAFANA = ROOT / "examples" / "observability" / "grafana-dashboard.json"
ROW = re.compile(r"^\| `(servekit_\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def test_the_metrics_table_lists_every_family_with_its_type_and_labels() -> None:
    documented = {
        name: (kind, tuple(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in ROW.findall(PAGE.read_text())
    }
    assert documented == {name: (info.kind, info.labels) for name, info in FAMILIES.items()}


def test_the_grafana_dashboard_charts_every_family_and_no_other() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bservekit_\w+", expr)
    }
    assert used == set(FAMILIES)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "deployment"}
