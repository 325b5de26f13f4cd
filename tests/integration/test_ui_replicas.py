"""The status page behind a load balancer that sends each poll to either of two gateway replicas (a Kubernetes
Service through an ingress, the compose pair behind a proxy): each replica's totals are its own, so the page's
rates come from two polls of the same replica, never from one replica's total minus the other's.

The page runs in Debian's chromium (playwright); its files are the package's and `GET /admin/status` is answered
by the test, in turn as replica A and replica B: both bill the pool $3.60 an hour, B's total started $5 higher."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import pytest
from ricardo.gateway.ui import FILES, HEADERS

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` installs it")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
ORIGIN = "http://gateway.test"
USD_PER_S = 0.001  # $3.60/h on either replica
OFFSET = {"replica-a": 0.0, "replica-b": 5.0}  # B's counters began earlier


def status(replica: str, started: float) -> dict:
    now = time.time()
    spent = OFFSET[replica] + USD_PER_S * (now - started)
    pool = {
        "name": "l4", "hardware": "L4", "price_per_hour": 0.7, "pair": False, "price_source": "price set",
        "backends": 1, "replicas": 1, "desired_replicas": 1, "fleet_usd_per_hour": 0.7, "in_flight": 0,
        "utilization": 0.1, "ttft_ms": 50.0, "latency_per_token_ms": 20.0, "requests": spent * 1000,
        "cost_usd": spent, "slo_judged": spent * 1000, "slo_met": spent * 1000,
    }  # fmt: skip
    return {
        "time": now, "replica": replica, "version": 1, "refused_version": None, "policy": "cost-aware",
        "slo": {"ttft_ms": 2000, "tpot_ms": 120}, "pools": [pool],
        "predictor": {"n": 0, "mae_p50": None, "p90_coverage": None, "model_version": 1},
        "scaling": {"desired_cost_per_hour": 0.7, "computed_at": now, "note": None},
    }  # fmt: skip


def test_rates_come_from_polls_of_one_replica_when_polls_alternate():
    folder = resources.files("ricardo.gateway").joinpath("data/ui")
    started, polls = time.time(), []

    def answer(route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path == "/admin/status":
            replica = ("replica-a", "replica-b")[len(polls) % 2]
            polls.append(replica)
            route.fulfill(status=200, content_type="application/json", body=json.dumps(status(replica, started)))
        elif path in FILES:
            name, content_type = FILES[path]
            body = folder.joinpath(name).read_bytes()
            route.fulfill(status=200, headers={**HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}, body=body)
        else:
            route.fulfill(status=404, body="")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route(f"{ORIGIN}/**", answer)
            page.goto(ORIGIN + "/ui")
            page.fill("#token", "an-admin-token-of-some-length")
            page.press("#token", "Enter")
            shown = []
            while len(polls) < 12:
                page.wait_for_timeout(500)
                shown.append((len(polls), page.text_content("#t-spend"), page.text_content("[data-col=spend]")))
        finally:
            browser.close()
    late = shown[-6:]  # both replicas polled a few times: every rate is between polls of one replica
    assert all(total == row == "$3.60" for _, total, row in late), shown
