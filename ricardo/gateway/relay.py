"""Relaying an upstream stream to the client, and checking that it is complete.

A stream is complete when every choice it sent carried a `finish_reason` and the stream ended with `data: [DONE]`;
it is relayed until `[DONE]` (or its end), however many choices finished before. Judged by the choices seen, not by
the `n` asked for: a backend that ignores `n` answers one choice, whole, and is not a failure.
One that ends without them, breaks off, stalls past the idle timeout or carries an upstream error event ends, for the
client, with an OpenAI-shaped error event (`data: {"error": {...}}`, then the end of the stream: the openai
client raises it), never as if it were complete; and it counts as a failed answer of its backend (metrics,
outlier detection). Usage is always asked of the upstream and priced when it arrives (`trip.priced`): the usage
carries the answer's actual cost as an extension (`usage.ricardo_cost_usd`, with the estimate the pool was chosen on,
`usage.ricardo_expected_cost_usd`; the official openai client keeps unknown usage fields). A client that asked for
usage (`stream_options.include_usage`) gets it in the usual final chunk with no choices; one that did not may not be
sent such a chunk, so its usage rides on the last chunk that carries a `finish_reason` (as vLLM's continuous usage
stats put usage on chunks with choices), which is held back until the usage arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ricardo.gateway.dispatch import MAX_ANSWER_BYTES, Answer, sse_join, too_large
from ricardo.gateway.state import GatewayState
from ricardo.gateway.trip import Trip, failed, priced
from ricardo.protocol.openai import compact_json, error_body, sse

log = logging.getLogger("ricardo.gateway")


class _Relayed(web.StreamResponse):
    """A relayed stream's response: its headers leave with its first events, which the gateway already holds when
    it starts the response (aiohttp's StreamResponse would send them alone first: one more write per request)."""

    _send_headers_immediately = False


@dataclass
class StreamCheck:
    """What a stream has said so far about its completeness."""

    seen: set[int] = field(default_factory=set)  # the indexes of the choices that sent a chunk
    finished: set[int] = field(default_factory=set)  # the indexes of the choices that carried a finish_reason
    done: bool = False  # data: [DONE]
    error: bool = False  # the upstream sent an error event
    held: bytes | None = None  # a finish chunk kept back for the usage of a client that did not ask for it

    @property
    def complete(self) -> bool:
        return self.done and bool(self.finished) and self.seen <= self.finished

    def flush(self) -> list[bytes]:
        held, self.held = self.held, None
        return [held] if held is not None else []


async def relay_stream(
    request: web.Request,
    state: GatewayState,
    trip: Trip,
    answer: Answer,
    headers: dict[str, str],
    client_wants_usage: bool,
) -> web.StreamResponse:
    pool, backend = trip.pool, trip.backend
    assert pool is not None and backend is not None  # an attempt succeeded
    response = _Relayed(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers})
    await response.prepare(request)
    check = StreamCheck()
    upstream = answer.response
    idle = pool.timeouts.idle_s
    loop = asyncio.get_running_loop()
    buffer = answer.head
    ending: tuple[str, int, str] | None = None  # (kind, status, message) of a stream that did not complete
    last: list[bytes] = []  # the stream's last events: they leave with its end, in one write
    silent = 0.0  # seconds spent reading upstream since its last data (not writing: a slow client is no stall)
    try:
        async with asyncio.timeout(None) as quiet:  # armed around upstream reads only: a slow client is no stall
            while True:
                *events, buffer = buffer.split(b"\n\n")
                trip.relayed_events += len(events)
                out = [o for e in events if e.strip() for o in _pass_on(state, trip, check, e, client_wants_usage)]
                if check.done or check.error:
                    last = out
                    break
                if out:
                    await response.write(b"".join(out))
                read_at = loop.time()
                quiet.reschedule(read_at + idle - silent)
                data = await upstream.content.readany()
                quiet.reschedule(None)
                if not data:  # a last event without its blank line: completed, passed on and counted
                    if buffer.strip():
                        last = _pass_on(state, trip, check, buffer, client_wants_usage)
                    break
                buffer = sse_join(buffer, data)
                if len(buffer) > MAX_ANSWER_BYTES:  # one event that never ends
                    raise too_large()
                # keep-alive comments are no sign of life: a stuck engine's server sends them too
                silent = 0.0 if b"data:" in buffer[-len(data) - 4 :] else silent + loop.time() - read_at
    except TimeoutError:
        ending = ("stall", 504, f"upstream stalled: no data for {idle:g} s")
    except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError too)
        trip.status = 499
        return response
    except aiohttp.ClientError as exc:
        ending = ("broken", 502, f"upstream stream broke off ({type(exc).__name__})")
    except asyncio.CancelledError:
        if trip.aborted is None:  # the client went away: aiohttp cancels its handler
            trip.status = 499
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the gateway cancelled it itself, to end the stream with a word
        trip.status = 503
        await _end(response, check, error_body(f"the gateway is {trip.aborted}; retry", "service_unavailable"))
        return response
    else:
        if check.error:
            ending = ("error_event", 502, "")  # the upstream's error event has reached the client
        elif not check.complete:
            ending = ("incomplete", 502, "upstream ended the stream before it was complete")
    if ending is None:
        trip.outcome = True
        await _end(response, check, None, last)
        return response
    kind, trip.status, message = ending
    trip.outcome = False
    log.warning("request %s: stream from %s of pool %s failed (%s)", trip.request_id, backend.shown, pool.name, kind)
    failed(state, trip, kind)
    await _end(response, check, error_body(message, "upstream_error", code=kind) if message else None, last)
    return response


def _pass_on(state: GatewayState, trip: Trip, check: StreamCheck, event: bytes, wants_usage: bool) -> list[bytes]:
    """Note what the gateway needs from one SSE event; return what the client is sent for it (none, the event,
    a held event before it, or the event rewritten with the priced usage)."""
    data = _data(event)
    if data is None:
        return [event + b"\n\n"]  # a comment (keep-alive) or a field without data
    if data == b"[DONE]":
        check.done = True
        return [*check.flush(), event + b"\n\n"]
    worth_parsing = (
        trip.first_token_at is None
        or b'"usage":{' in data
        or b'"usage": {' in data  # json.dumps' default separators (servers that build events with it)
        or b'"error"' in data
        # a finish_reason that is not null (one chunk may carry several choices)
        or data.count(b'"finish_reason"') > data.count(b'"finish_reason":null')
    )
    if not worth_parsing:
        return [*check.flush(), event + b"\n\n"]
    try:
        payload = json.loads(data)
    except ValueError:
        return [*check.flush(), event + b"\n\n"]
    if not isinstance(payload, dict):
        return [*check.flush(), event + b"\n\n"]
    if payload.get("error"):
        check.error = True
        return [*check.flush(), event + b"\n\n"]
    choices = payload.get("choices")
    choices = [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    if trip.first_token_at is None and any(_has_content(c) for c in choices):
        trip.first_token_at = now = time.monotonic()
        if trip.pool is not None:
            trip.pool.started(id(trip), now)
    usage = payload.get("usage")
    if isinstance(usage, dict) and not choices:  # the final usage chunk: price it
        usage = priced(state, trip, usage)
        if wants_usage:
            return [*check.flush(), _with(event, data, {**payload, "usage": usage})]
        held, check.held = check.held, None
        if held is None:
            return []  # no finish chunk to carry it: the client did not ask, so it goes without
        held = held.removesuffix(b"\n\n")
        held_data = _data(held)
        assert held_data is not None  # held events are parsed chunks
        return [_with(held, held_data, {**json.loads(held_data), "usage": usage})]
    if isinstance(usage, dict):
        trip.usage = usage  # usage on every chunk (vLLM's continuous usage stats); the final chunk prices it
    out = check.flush()
    check.seen.update(i for i in (c.get("index", 0) for c in choices) if isinstance(i, int))
    finishing = [c.get("index", 0) for c in choices if c.get("finish_reason")]
    if finishing:
        check.finished.update(i for i in finishing if isinstance(i, int))
        if not wants_usage:
            check.held = event + b"\n\n"
            return out
    return [*out, event + b"\n\n"]


def _with(event: bytes, data: bytes, payload: dict[str, Any]) -> bytes:
    """`event` (without its blank line) with its data replaced by `payload`, ended by a blank line."""
    return event.replace(data, compact_json(payload).encode(), 1) + b"\n\n"


def _data(event: bytes) -> bytes | None:
    """The data of one SSE event (its first `data:` line), or None."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _has_content(choice: dict[str, Any]) -> bool:
    return bool(choice.get("text") or (choice.get("delta") or {}).get("content"))


async def _end(
    response: web.StreamResponse, check: StreamCheck, error: dict[str, Any] | None, last: list[bytes] | None = None
) -> None:
    """End the stream: its `last` events, a finish chunk still held back, then an error event if there is one, in
    the write that ends the stream (with its headers, if nothing was sent before); a client already gone is no
    error."""
    events = [*(last or ()), *check.flush()]
    if error is not None:
        events.append(sse(error))
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof(b"".join(events))
