"""The gateway's HTTP surface: OpenAI endpoints, health, readiness and metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ricardo.gateway import embeddings, proxy
from ricardo.gateway.admin import add_admin_routes
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.logs import access_log
from ricardo.gateway.metrics import exposition
from ricardo.gateway.scaling_loop import ScalingLoop
from ricardo.gateway.security import AdminAccess, MetricsAccess, guard
from ricardo.gateway.state import GatewayState
from ricardo.gateway.ui import add_ui_routes
from ricardo.protocol.http import as_openai_error
from ricardo.protocol.openai import OpenAIError

log = logging.getLogger("ricardo.gateway")


def build_app(
    config: GatewayConfig, state: GatewayState, admin: AdminAccess, readers: MetricsAccess | None = None
) -> web.Application:
    """The gateway's application; `readers`: who may read /metrics (default: by the config alone, no environment)."""
    readers = readers or MetricsAccess.for_listener(config.host, config.auth.metrics_token)
    app = web.Application(
        client_max_size=config.limits.max_body_bytes, middlewares=[access_log, openai_errors, guard(admin, readers)]
    )
    app["state"] = state
    app["scaling"] = scaling = ScalingLoop(state)
    app["scaling_hints"] = scaling.current
    state.shaper.usage_hooks.append(scaling.observe)
    add_admin_routes(app)
    add_ui_routes(app)  # the status page; its data comes from the admin API
    for prefix in ("/v1", ""):  # many clients also call the un-prefixed paths
        app.router.add_post(f"{prefix}/chat/completions", chat)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_post(f"{prefix}/embeddings", embeddings.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)  # vLLM's and SGLang's name, which guidellm and others check first
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_start)
    app.on_cleanup.append(_close)
    return app


async def _start(app: web.Application) -> None:
    await app["state"].start()
    await app["scaling"].start()


async def _close(app: web.Application) -> None:
    await app["scaling"].close()
    await app["state"].close()


async def chat(request: web.Request) -> web.StreamResponse:
    return await proxy.handle(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await proxy.handle(request, "completions")


async def models(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    state.keys.authenticate(request)
    created = int(time.time())
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": created, "owned_by": "ricardo"}
                for model in state.config.models
            ],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when at least one backend of some pool can take requests and the gateway is not shutting down;
    says which pools can, and whether the shared state store answers (a replica without it serves on its last
    known state). Unauthenticated, as probes are: the store's last error is named by its kind only (its text
    holds the store's internal address; the admin API's `/admin/status` has it whole)."""
    state: GatewayState = request.app["state"]
    available = state.ready()
    ready = any(available.values()) and not state.draining
    store = state.store.status()
    store["last_error"] = store.pop("last_error_kind")
    return web.json_response(
        {
            "ready": ready,
            "draining": state.draining,
            "pools": available,
            "config_version": state.version,
            "store": store,
            "replica": state.replica_id,  # which replica (or worker process) answered
        },
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    return web.Response(body=exposition(state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure leaves as an OpenAI-shaped JSON error with the right status, never a traceback."""
    try:
        return await handler(request)
    except Exception as exc:
        error = as_openai_error(exc)
        if error is None and isinstance(exc, web.HTTPException):
            raise  # a redirect, not a failure
        if error is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            error = OpenAIError(500, "internal error", "api_error")
    status, body, headers = error.status, error.body(), error.headers
    state = request.app.get("state")
    if state is not None and request.path.endswith("completions"):
        state.metrics.requests.labels("-", "-", str(status)).inc()
    request_id = request.headers.get("x-request-id")
    if request_id and request_id.isascii() and request_id.isprintable():
        headers = {**headers, "x-request-id": request_id}
    return web.json_response(body, status=status, headers=headers)
