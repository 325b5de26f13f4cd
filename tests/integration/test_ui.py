"""The status page at /ui, in a real browser (Debian's chromium driven by playwright), during a load run.

A real gateway in front of two emulated pools and a background client streaming requests through it (the
official openai client, bounded in count and time). The test logs in with the admin token, sees the pools and
their live figures change, edits the price of the pool the traffic goes to on the page, and checks that the admin
API reflects it and that routing moves to the other pool. RICARDO_UI_SCREENSHOT=docs/ui.png keeps the screenshot
(the README shows it); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.integration.harness import REPO, Cluster, wait_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium: `make browser` installs Debian's chromium (apt-get, as root); "
    "the browser test never downloads a browser",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
POOLS = {"a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}
MAX_REQUESTS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("ui"), speed=4.0).start()
    yield cluster
    cluster.stop()


class Load:
    """Streams small requests one after another until stopped (at most MAX_REQUESTS); notes each one's pool."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        self.served: list[tuple[float, str]] = []  # (time sent, pool)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.served) < MAX_REQUESTS:
            sent = time.monotonic()
            raw = self.client.chat.completions.with_raw_response.create(
                model="llama2-7b",
                messages=[{"role": "user", "content": "What does a GPU hour cost?"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-emulator-output-tokens": "16"},
            )
            list(raw.parse())
            self.served.append((sent, raw.headers["x-ricardo-pool"]))
            self.stop.wait(0.05)

    def pools_since(self, moment: float) -> list[str]:
        return [pool for sent, pool in self.served if sent > moment]


def admin_pools(cluster: Cluster) -> dict[str, dict]:
    request = urllib.request.Request(cluster.url + "/admin/pools", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        return {p["name"]: p for p in json.loads(response.read())["pools"]}


def test_status_page_shows_live_figures_and_edits_a_price_that_moves_routing(cluster, tmp_path):
    expect = sync_api.expect
    token = cluster.admin_headers()["Authorization"].removeprefix("Bearer ")
    load = Load(cluster.url)
    load.thread.start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 440})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            response = page.goto(cluster.url + "/ui")
            assert response is not None and response.ok
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"

            # a wrong token is refused and not kept
            page.fill("#token", "not-the-admin-token-at-all")
            page.click("#login-form button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("refused")
            assert page.evaluate("sessionStorage.length") == 0
            errors.clear()  # the browser logs the refused call (401) as a console error

            page.fill("#token", token)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#board")).to_be_visible()
            assert token not in page.url and "token" not in page.url
            row = {name: page.locator(f"#pools tr[data-pool={name}]") for name in POOLS}
            expect(row["a100"].locator("td[data-col=price]")).to_have_text("3.67")
            expect(row["a10g"].locator("td[data-col=price]")).to_have_text("1.01")

            # live figures: the served pool's request count moves, its spend rate and chart fill in
            assert wait_for(lambda: len(load.served) >= 5, timeout=20), cluster.logs()
            busy, _ = Counter(pool for _, pool in load.served[-5:]).most_common(1)[0]
            other = next(name for name in POOLS if name != busy)
            requests_cell = row[busy].locator("td[data-col=requests]")
            before = requests_cell.inner_text()
            expect(requests_cell).not_to_have_text(before, timeout=10_000)
            expect(row[busy].locator("td[data-col=spend]")).to_have_text(re.compile(r"^\$\d"), timeout=15_000)
            assert wait_for(lambda: len(page.locator("#c-spend polyline").get_attribute("points").split()) >= 3, 15)

            # edit the busy pool's price on the page: the admin API has it, and the traffic moves to the other pool
            page.locator(f"#pools tr[data-pool={busy}] td[data-col=price] button").click()
            price_input = row[busy].locator("td[data-col=price] input")
            price_input.fill("50")
            changed = time.monotonic()
            price_input.press("Enter")
            expect(row[busy].locator("td[data-col=price]")).to_have_text("50.00")
            assert admin_pools(cluster)[busy]["price_per_hour"] == 50.0
            assert wait_for(lambda: load.pools_since(changed)[-5:] == [other] * 5, timeout=20), load.served[-20:]
            other_requests = row[other].locator("td[data-col=requests]")
            expect(other_requests).not_to_have_text(other_requests.inner_text(), timeout=10_000)

            time.sleep(3)  # a few more polls on the charts, for the picture
            shot = Path(os.environ.get("RICARDO_UI_SCREENSHOT") or tmp_path / "ui.png")
            page.screenshot(path=str(shot if shot.is_absolute() else REPO / shot), full_page=True)
            assert not errors, errors

            page.click("#logout")
            expect(page.locator("#login")).to_be_visible()
            assert page.evaluate("sessionStorage.length") == 0
            browser.close()
    finally:
        load.stop.set()
        load.thread.join(timeout=35)
    print(f"\n{len(load.served)} requests: before the change {busy}, after it {other}")
