"""A backend whose /metrics could not be read for a while (not reached, timed out, 5xx) is read again once it
answers: only a page that shows none of the names known (a 404, another server's page) stops the scrapes
(gateway/health.py, gateway/telemetry.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from ricardo.gateway.config import LimitsConfig, OutlierConfig
from ricardo.gateway.health import MAX_TELEMETRY_MISSES, Health
from ricardo.gateway.pools import new_backend

from tests.gateway.fakes import port, serve

PAGE = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1.0
"""


async def _scrapes(health: Health, backend, start: float, times: int) -> float:
    """Scrape whenever due, one health interval (1 s) apart, `times` intervals; the clock after them."""
    now = start
    for _ in range(times):
        if health._scrape_due(backend, now, 1.0):
            health._scrape(backend, now)
            await asyncio.gather(*health._tasks)
        now += 1.0
    return now


async def test_a_metrics_page_that_failed_for_a_while_is_read_again_once_it_answers():
    failing = True  # the backend's /metrics answers 503 for a few intervals (a proxy in front, a restarting exporter)

    async def metrics(request: web.Request) -> web.Response:
        if failing:
            return web.Response(status=503, text="metrics unavailable")
        return web.Response(text=PAGE, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    at = port()
    runner = await serve(app, at)
    backend = new_backend(f"http://127.0.0.1:{at}", LimitsConfig(), OutlierConfig(), None)
    health = Health(state=None)  # type: ignore[arg-type]  # scraping reads no state
    try:
        now = await _scrapes(health, backend, 100.0, MAX_TELEMETRY_MISSES + 1)
        assert backend.telemetry is None
        failing = False  # it answers again: its load is read again
        await _scrapes(health, backend, now, 3)
        assert backend.telemetry is not None and backend.telemetry.running == 3.0
    finally:
        await backend.session.close()
        await runner.cleanup()


async def test_a_metrics_page_unreachable_for_a_while_is_read_again_once_it_answers():
    at = port()
    backend = new_backend(f"http://127.0.0.1:{at}", LimitsConfig(), OutlierConfig(), None)
    health = Health(state=None)  # type: ignore[arg-type]  # scraping reads no state
    try:
        # not reached for a few intervals (an ejected backend restarting: no probe marks it down meanwhile)
        now = await _scrapes(health, backend, 100.0, MAX_TELEMETRY_MISSES + 1)
        assert backend.telemetry is None
        app = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/plain")

        app.router.add_get("/metrics", metrics)
        runner = await serve(app, at)
        try:
            await _scrapes(health, backend, now, 3)
        finally:
            await runner.cleanup()
        assert backend.telemetry is not None and backend.telemetry.running == 3.0
    finally:
        await backend.session.close()


async def test_a_page_without_known_names_stops_the_scrapes():
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="# TYPE up gauge\nup 1\n", content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    at = port()
    runner = await serve(app, at)
    backend = new_backend(f"http://127.0.0.1:{at}", LimitsConfig(), OutlierConfig(), None)
    health = Health(state=None)  # type: ignore[arg-type]
    try:
        now = await _scrapes(health, backend, 100.0, MAX_TELEMETRY_MISSES)
        assert not health._scrape_due(backend, now + 10.0, 1.0)  # as before: another server's page is not asked again
    finally:
        await backend.session.close()
        await runner.cleanup()
