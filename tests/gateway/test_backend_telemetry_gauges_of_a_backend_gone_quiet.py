"""The `ricardo_backend_{running,waiting,kv_cache_usage}` gauges say what the gateway knows of a backend's own load
now: once its /metrics page is gone (the backend stopped; the gateway holds no page of it, GET /admin/pools shows
`telemetry: null` and routing counts nothing), /metrics does not keep showing its last figures."""

from __future__ import annotations

import asyncio
import time
import warnings

from aiohttp import web
from ricardo.gateway.app import build_app
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess
from ricardo.gateway.state import GatewayState

from tests.gateway.fakes import ADMIN_TOKEN, backend_app, port, serve

PAGE = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama2-7b"} 30.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama2-7b"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="llama2-7b"} 0.5
"""


async def _until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_the_gauges_of_a_backend_whose_page_is_gone_do_not_keep_its_last_figures():
    async def never(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "not used"}}, status=500)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/plain")

    app = backend_app(never)
    app.router.add_get("/metrics", metrics)
    at = port()
    backend_runner = await serve(app, at)
    gw_port = port()
    config = GatewayConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": gw_port,
            "models": ["llama2-7b"],
            "health_interval_s": 0.2,
            "admin_token": ADMIN_TOKEN,
            "pools": [{"name": "p", "hardware": "A10G", "backends": [f"http://127.0.0.1:{at}"]}],
        }
    )
    state = GatewayState(config, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        gateway_app = build_app(config, state, AdminAccess(ADMIN_TOKEN))
    gateway_runner = await serve(gateway_app, gw_port)
    backend = f"http://127.0.0.1:{at}"
    registry = state.metrics.registry

    def running() -> float | None:
        return registry.get_sample_value("ricardo_backend_running", {"pool": "p", "backend": backend})

    try:
        assert await _until(lambda: running() == 30.0)
        await backend_runner.cleanup()  # the backend stops: probes and scrapes fail from now on
        backend_runner = None
        the_backend = state.pools["p"].backends[0]
        assert await _until(lambda: the_backend.telemetry is None and not the_backend.healthy)
        await asyncio.sleep(0.5)  # a few health ticks more
        assert registry.get_sample_value("ricardo_backend_up", {"pool": "p", "backend": backend}) == 0
        # the gateway has no page of it: /metrics should not go on saying it runs 30 requests
        assert running() != 30.0
    finally:
        await gateway_runner.cleanup()
        if backend_runner is not None:
            await backend_runner.cleanup()
