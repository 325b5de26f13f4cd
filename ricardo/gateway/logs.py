"""The gateway's logs: text or JSON lines, and one access line per request on the logger `ricardo.access`.

The access line says who answered, how fast and at what cost, not what was asked: it carries no prompt or answer
text unless the config's `log_prompts` asks for the prompt (its first PROMPT_LOG_CHARS characters, JSON-quoted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Literal

from aiohttp import web
from pythonjsonlogger.json import JsonFormatter

access = logging.getLogger("ricardo.access")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# probes and scrapes come every few seconds: their lines are DEBUG, so INFO shows traffic only
QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}
# where proxy.handle leaves the request's Trip for the access line
TRIP_KEY = "ricardo.trip"
PROMPT_LOG_CHARS = 4000


def setup_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Root logging: one line per record on stderr; JSON objects carry ts, level, logger, msg and the extras."""
    handler = logging.StreamHandler()
    if fmt == "json":
        names = {"timestamp": "ts", "levelname": "level", "name": "logger", "message": "msg"}
        handler.setFormatter(
            JsonFormatter("{levelname}{name}{message}", style="{", rename_fields=names, timestamp=True)
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@web.middleware
async def access_log(request: web.Request, handler):
    """Outermost middleware: after the error middleware has turned a failure into its answer, log the request."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:  # the client went away: nginx's 499
        status = 499
        raise
    finally:
        _log(request, status, (time.monotonic() - started) * 1000)


def _log(request: web.Request, status: int, latency_ms: float) -> None:
    level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
    if not access.isEnabledFor(level):
        return
    request_id = request.headers.get("x-request-id")
    fields: dict = {
        # as sent on by proxy.handle: printable ASCII only, so that a text line stays one line
        "request_id": request_id if request_id and request_id.isascii() and request_id.isprintable() else None,
        "method": request.method,
        "path": request.raw_path.partition("?")[0],  # still percent-encoded; no query string
        "status": status,
        "latency_ms": round(latency_ms, 1),
    }
    trip = request.get(TRIP_KEY)
    if trip is not None:
        usage = trip.usage or {}
        fields |= {
            "request_id": trip.request_id,
            "model": trip.shape.model,
            "pool": trip.choice.pool if trip.choice is not None else None,
            "backend": trip.served_by,
            "input_tokens": usage.get("prompt_tokens"),
            "output_tokens": usage.get("completion_tokens"),
            "ttft_ms": None if trip.first_token_at is None else round((trip.first_token_at - trip.started) * 1000, 1),
            "cost_usd": trip.cost_usd,
        }
        if trip.prompt is not None:  # only with log_prompts: quoted, so that a text line stays one line
            fields["prompt"] = json.dumps(trip.prompt, ensure_ascii=True)
    text = " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items() if k not in ("method", "path"))
    access.log(level, "%s %s %s", request.method, fields["path"], text, extra=fields)
