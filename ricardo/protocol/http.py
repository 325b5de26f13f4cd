"""aiohttp's own HTTP errors (body too large, method not allowed ...) in the OpenAI error shape."""

from __future__ import annotations

from aiohttp import web

from ricardo.protocol.openai import OpenAIError


def as_openai_error(exc: BaseException) -> OpenAIError | None:
    """The OpenAI-shaped error for `exc`, or None when it is not an HTTP error (a bug, or a 3xx to let through)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return OpenAIError(413, f"request body too large: {exc.text}")
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return OpenAIError(exc.status, exc.reason, "invalid_request_error" if exc.status < 500 else "api_error")
    return None
