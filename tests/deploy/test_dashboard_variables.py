"""Every variable of the Grafana dashboard changes some panel: one that no query reads offers the operator a
choice (the SLO's bucket edge) that moves nothing on the board."""

from __future__ import annotations

import json
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_dashboard_variable_is_read_by_a_panel():
    dashboard = json.loads((DEPLOY / "grafana" / "ricardo-dashboard.json").read_text())
    queries = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    unread = [v["name"] for v in dashboard["templating"]["list"] if f"${v['name']}" not in queries]
    assert unread == []
