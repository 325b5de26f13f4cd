"""Choosing and attempting backends: try them in the policy's order until one gives an answer the gateway can
commit to the client.

An attempt on a disaggregated pair is two requests, prefill then decode (gateway/handoff.py). Nothing reaches the
client before an attempt has succeeded, so every failure until then is retried on the next
backend (up to `limits.max_attempts`): for a stream, until its first event has arrived (an error event is a failure
too); for a whole answer, until all of it has been read and found whole: a JSON object with choices, ending with its
usage (which alone is parsed, `checked_answer`) or else parsed in full. Each attempt has its pool's timeouts:
connect, then first byte (stream: the first event) or whole answer (not streamed), then idle between reads.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from ricardo.gateway.config import Timeouts
from ricardo.gateway.pools import Backend, Pool, post
from ricardo.gateway.trip import Trip, fail, give_up, start
from ricardo.policies.types import Choice
from ricardo.protocol.openai import OpenAIError, compact_json, error_for_status

if TYPE_CHECKING:
    from ricardo.gateway.state import GatewayState

RETRIABLE_STATUSES = {429, 500, 502, 503, 504}
BUSY_STATUSES = {429, 503}  # the backend says it is overloaded: it rests, and that is no failure of its answers
# a whole answer, an error body or one stream event past this is a broken upstream, not something to hold in memory
# (an embedding of 2,048 inputs x 4,096 floats is ~80 MB of JSON)
MAX_ANSWER_BYTES = 256 << 20
UPSTREAM_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# Counts the gateways a request has passed through: a backend that is (or leads back to) a gateway would otherwise
# loop until file descriptors run out. Every request a gateway sends upstream carries it, probes too.
HOPS_HEADER = "x-ricardo-hops"


@dataclass
class Answer:
    """What a successful attempt got: the upstream response and what was read of it (a stream's first events,
    or a whole answer's bytes and, found at their end, its usage)."""

    response: aiohttp.ClientResponse
    head: bytes
    whole: WholeAnswer | None = None  # a whole answer's, checked


@dataclass
class WholeAnswer:
    """A whole answer checked complete: its usage, and where that lies in its bytes (so the priced usage replaces
    it there, and the answer is not serialised again); or, where the usage was not its last member, its JSON."""

    raw: bytes
    usage: dict[str, Any] | None
    usage_span: tuple[int, int] | None = None  # the usage object's bytes in `raw`
    parsed: dict[str, Any] | None = None  # parsed in full: only where the tail did not show the usage

    def body(self) -> dict[str, Any]:
        """The answer's JSON (parsed now, where only its usage was read: the answer was checked JSON-shaped)."""
        if self.parsed is None:
            self.parsed = json.loads(self.raw)
        return self.parsed

    def with_usage(self, usage: dict[str, Any]) -> bytes:
        """The answer's bytes with `usage` in place of the upstream's."""
        if self.usage_span is None:
            return compact_json({**self.body(), "usage": usage}).encode()
        start, end = self.usage_span
        return b"".join((self.raw[:start], compact_json(usage).encode(), self.raw[end:]))


class AttemptFailed(Exception):
    def __init__(self, kind: str, error: OpenAIError, overloaded: bool = False, retry_after: float | None = None):
        super().__init__(kind)
        self.kind = kind
        self.error = error
        self.overloaded = overloaded
        self.retry_after = retry_after


async def dispatch(
    state: GatewayState, trip: Trip, choices: list[Choice], payload: bytes, headers: dict[str, str], stream: bool
) -> Answer:
    """Try backends in the policy's order until one answers; raise the most telling error otherwise."""
    limits = state.config.limits
    last_error: OpenAIError | None = None
    retry_after: float | None = None  # what the last failure's backend said, if busy: the client is told the same
    for choice in choices:
        pool = state.pools.get(choice.pool)
        while pool is not None and trip.attempts < limits.max_attempts:
            try:
                if pool.pair is not None:  # a disaggregated pair: prefill, then decode (gateway/handoff.py)
                    # imported here, by a pair only: handoff builds on this module's `attempt`
                    from ricardo.gateway.handoff import NoPair, attempt_pair

                    try:
                        return await attempt_pair(state, trip, pool, choice, payload, headers, stream)
                    except NoPair:
                        break
                backend = pool.pick_backend(time.monotonic(), trip.tried)
                if backend is None:
                    break
                trip.attempts += 1
                trip.tried.add(backend)
                start(state, trip, pool, backend, choice)
                return await attempt(pool, backend, trip, payload, headers, stream)
            except AttemptFailed as failure:
                last_error, retry_after = failure.error, failure.retry_after
                fail(state, trip, failure.kind, overloaded=failure.overloaded, retry_after=failure.retry_after)
            except OpenAIError:
                give_up(trip)  # the request itself is wrong; another backend would say the same
                raise
        if trip.attempts >= limits.max_attempts:
            break
    if last_error is None:
        raise OpenAIError(503, "no backend is available now", "service_unavailable", headers={"Retry-After": "1"})
    raise with_retry_after(last_error, retry_after)


def with_retry_after(error: OpenAIError, retry_after: float | None) -> OpenAIError:
    """The client's error after the last failure: a busy one (429, 503) tells it to come back when that backend
    asked to be left alone until (`retry_after`, 1 s where it did not say), not sooner, to find nothing to send to."""
    if error.status in BUSY_STATUSES:
        error.headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after or 0))))
    return error


async def attempt(
    pool: Pool,
    backend: Backend,
    trip: Trip,
    payload: bytes,
    headers: dict[str, str],
    stream: bool,
    timeouts: Timeouts | None = None,
) -> Answer:
    """One attempt on one backend (with the pool's timeouts, or `timeouts`); AttemptFailed (retry elsewhere) or
    OpenAIError (answer the client that)."""
    t = timeouts or pool.timeouts
    url = backend.url + UPSTREAM_PATHS[trip.endpoint]
    response: aiohttp.ClientResponse | None = None
    done = False
    sent_at = time.monotonic()
    try:
        async with asyncio.timeout(t.first_byte_s if stream else t.response_s) as budget:
            try:
                response = await post(
                    backend.session,
                    url,
                    data=payload,
                    headers=headers,
                    timeout=connect_timeout(t.connect_s),
                    allow_redirects=False,  # a redirect could lead anywhere the gateway can reach
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                raise AttemptFailed(
                    "connect",
                    error_for_status(502, f"upstream {pool.name} unreachable, or every connection to it busy"),
                    overloaded=True,
                ) from exc
            if response.status != 200:
                await _refused(pool, response)
            backend.reached(sent_at)
            if stream:
                head = await _first_event(response)
                if b'"error"' in head:
                    _refused_in_stream(pool, head)
                done = True
                return Answer(response, head)
            raw = await _read_all(response, budget, t)
            whole = checked_answer(raw)
            if whole is None:
                raise AttemptFailed("bad_json", error_for_status(502, f"upstream {pool.name} answered invalid JSON"))
            trip.outcome = True
            done = True
            return Answer(response, raw, whole)
    except TimeoutError as exc:
        what = "first byte" if stream else "whole answer"
        seconds = t.first_byte_s if stream else t.response_s
        raise AttemptFailed(
            "timeout", error_for_status(504, f"upstream {pool.name}: no {what} within {seconds:g} s")
        ) from exc
    except aiohttp.ClientError as exc:
        raise AttemptFailed(
            "broken", error_for_status(502, f"upstream {pool.name} broke off: {type(exc).__name__}")
        ) from exc
    finally:
        if response is not None and not done:
            response.close()  # the backend sees the connection close and can stop the work


@functools.lru_cache(maxsize=64)
def connect_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for an attempt: the pool's connect timeout alone (immutable: one per value, not one per
    attempt). It bounds the wait for a free connection too (`connect`, not `sock_connect`): with every connection to
    the backend taken (`limits.connections_per_backend`), the wait is the gateway's own queue, not the backend's
    slowness; left to the first-byte timeout, it counted as the backend's failure and ejected a healthy, busy one."""
    return aiohttp.ClientTimeout(connect=seconds)


async def _refused(pool: Pool, response: aiohttp.ClientResponse) -> None:
    """A non-200 answer: AttemptFailed if another backend may do better, else the client's error."""
    status = response.status
    error = await _upstream_error(response)
    if status not in RETRIABLE_STATUSES:
        raise error
    raise AttemptFailed(
        f"http_{status}",
        error,
        overloaded=status in BUSY_STATUSES,  # a 500 may be the request's fault
        retry_after=retry_after_of(response),
    )


def _refused_in_stream(pool: Pool, head: bytes) -> None:
    """A stream whose first event is an error (vLLM's and SGLang's, for a request that failed once its stream had
    begun): nothing has reached the client, so it is a failed attempt like an error status, retried elsewhere, or
    the client's error where it says the request is wrong (a 4xx `code`)."""
    found = _FIRST_DATA.search(head)
    assert found is not None  # read up to it
    data = b"\n".join(line[5:] for line in found.group().split(b"\n") if line.startswith(b"data:"))
    try:
        body = json.loads(data)
    except ValueError:
        return
    if not isinstance(body, dict) or not body.get("error"):
        return
    code = body["error"].get("code") if isinstance(body["error"], dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    error = upstream_error(status, data)
    if status < 500 and status != 429:
        raise error
    raise AttemptFailed("error_event", error, overloaded=status in BUSY_STATUSES)


async def _first_event(response: aiohttp.ClientResponse) -> bytes:
    """Read a stream up to its first whole event with data (within the first-byte budget): keep-alive comments,
    which a stuck engine's server sends as readily as a busy one's, are no answer yet."""
    head = b""
    while not _FIRST_DATA.search(head):
        data = await response.content.readany()
        if not data:
            raise aiohttp.ClientPayloadError("the stream ended before its first event")
        head = sse_join(head, data)
        if len(head) > MAX_ANSWER_BYTES:
            raise too_large()
    return head


_FIRST_DATA = re.compile(rb"(?:^|\n)data:[^\n]*\n(?:[^\n]+\n)*\n")  # a data line, then its event's blank line


def sse_lines(data: bytes) -> bytes:
    """SSE lines may end with CRLF (sse-starlette's default): the relay splits events on LF alone."""
    return data.replace(b"\r\n", b"\n") if b"\r" in data else data


def sse_join(buffer: bytes, data: bytes) -> bytes:
    """`buffer` (already read as LF) and the next read `data`, with a CRLF that the reads split between them read as
    LF too (a read may end anywhere, between the CR and the LF of a blank line as well)."""
    if buffer.endswith(b"\r") and data.startswith(b"\n"):
        buffer = buffer[:-1]
    return buffer + sse_lines(data)


async def _read_all(response: aiohttp.ClientResponse, budget: asyncio.Timeout, t: Timeouts) -> bytes:
    """Read a whole answer: within the whole-answer budget, and with no silence longer than the idle timeout."""
    content = response.content
    if content.is_eof():  # all of it came with the headers (a short answer): nothing to wait for, no timer to move
        return content.read_nowait()
    loop = asyncio.get_running_loop()
    deadline = budget.when()
    chunks: list[bytes] = []
    size = 0
    while True:
        idle_end = loop.time() + t.idle_s
        if deadline is None or idle_end < deadline:
            budget.reschedule(idle_end)
        data = await content.readany()
        budget.reschedule(deadline)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise too_large()
        chunks.append(data)


# The usage near the answer's end: its last member (SGLang, TGI, llama.cpp, OpenAI), or followed only by members
# that are null (vLLM's `prompt_logprobs`, `kv_transfer_params`). `"usage"` in bare quotes is a key or a whole
# string, never a piece of one (a quote inside a string is escaped)
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_OBJECT = re.compile(rb"\s*\{")
_NULL_MEMBERS = re.compile(r'(?:\s*,\s*"[^"\\]*"\s*:\s*null)*\s*')
_NON_EMPTY_LIST = {key: re.compile(rb'"%s"\s*:\s*\[\s*[^\s\]]' % key.encode()) for key in ("choices", "data")}
_DECODER = json.JSONDecoder()


def checked_answer(raw: bytes, key: str = "choices") -> WholeAnswer | None:
    """A whole answer checked complete (a JSON object with a non-empty list at `key`), with its usage; None if it
    is not. Where the usage is the object's last member but for null ones, as answers put it, only the usage is parsed
    (an answer cut short does not end with it; the list is found before it); elsewhere the whole answer is. The one cut
    this reading cannot tell: an answer whose choices carry a usage of their own, cut just after one of them."""
    at = raw.rfind(b'"usage"')
    found = _USAGE.match(raw, at) if at >= 0 else None
    end = len(raw) - 1  # the top-level object's closing brace, if the answer is whole (rstrip would copy it all)
    while end > 0 and raw[end] in b" \t\r\n":
        end -= 1
    if found is not None and raw[end] == ord("}") and _OBJECT.match(raw):
        start = found.end() - 1
        try:
            tail = raw[start:end].decode()
            usage, stop = _DECODER.raw_decode(tail)
        except ValueError:
            usage = None
        if isinstance(usage, dict) and _NULL_MEMBERS.fullmatch(tail, stop) and _NON_EMPTY_LIST[key].search(raw, 0, at):
            return WholeAnswer(raw, usage, (start, start + len(tail[:stop].encode())))
    body = checked_json(raw, key)
    if body is None:
        return None
    usage = body.get("usage")
    return WholeAnswer(raw, usage if isinstance(usage, dict) else None, parsed=body)


def checked_json(raw: bytes, key: str = "choices") -> dict[str, Any] | None:
    """A whole answer's JSON when it is complete (an object with a non-empty list at `key`), else None."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get(key), list) or not body[key]:
        return None
    return body


async def _upstream_error(response: aiohttp.ClientResponse) -> OpenAIError:
    try:
        raw = await read_bounded(response)
    except aiohttp.ClientError:
        raw = b""
    return upstream_error(response.status, raw)


def upstream_error(status: int, raw: bytes) -> OpenAIError:
    """Normalise an upstream error (OpenAI-shaped, vLLM's flat shape, TGI's, or plain text) to ours."""
    try:
        body = json.loads(raw)
        detail = body.get("error", body) if isinstance(body, dict) else {}
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
    except ValueError:
        detail, message = {}, None
    if not isinstance(detail, dict):  # {"error": "<message>", "error_type": ...}: TGI's shape
        detail = {}
    if not isinstance(message, str):
        message = None
    message = message or f"upstream answered HTTP {status}"
    if status == 508:  # a gateway further on found the loop: the client should hear that, not a bare 502
        return OpenAIError(508, message, "api_error", code="loop_detected")
    if status >= 500 or status < 400:  # a redirect is not followed: it could lead anywhere the gateway can reach
        return error_for_status(502 if status != 503 else 503, f"upstream error: {message}")
    return OpenAIError(
        status,
        message,
        detail.get("type") or "invalid_request_error",
        detail.get("param"),
        detail.get("code") if isinstance(detail.get("code"), str) else None,
    )


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, failing as a broken answer past MAX_ANSWER_BYTES (the caller bounds the time)."""
    chunks, size = [], 0
    while data := await response.content.readany():
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise too_large()
        chunks.append(data)
    return b"".join(chunks)


def too_large() -> aiohttp.ClientPayloadError:
    return aiohttp.ClientPayloadError(f"the upstream answer passed {MAX_ANSWER_BYTES} bytes")


def retry_after_of(response: aiohttp.ClientResponse) -> float | None:
    """The seconds a busy backend's Retry-After asks for; None for none, a date or what is no number of seconds
    (float() reads "inf": a backend rested for ever)."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < math.inf else None
