"""Open-loop replay of a trace against any OpenAI-compatible server, measuring each streamed request.

Open loop: every request is sent at its trace arrival time whatever the server is doing; slow
responses never delay later sends (only an explicit `max_concurrency` does, and then the wait shows
up as scheduling lag). Every request is streamed (`stream: true`, `stream_options.include_usage`).

The true output length travels to an emulator in the `x-emulator-output-tokens` header, a channel a
gateway does not read for prediction; `length_mode="max_tokens"` instead sets `max_tokens=N` and
`ignore_eos` so real vLLM/SGLang backends generate exactly N tokens (and the gateway sees N).

Definitions, per request (times from the moment the POST is issued):
- ttft_ms: first chunk carrying content (or reasoning content);
- e2e_ms: end of the stream; a stream is "ok" only when it ends with `data: [DONE]`;
- tpot_ms: decode time per output token, (e2e - ttft) / (completion_tokens - 1), None when < 2 tokens;
- latency_per_token_ms: e2e / completion_tokens, the Mélange "TPOT" (prefill included);
- chunk_ms: arrival of every content chunk;
- lag_ms: POST issue time minus scheduled arrival time;
- cost_usd: what the answer cost, as the server reports it after the answer: the usage extension
  `ricardo_cost_usd` (a ricardo gateway prices the tokens used on the pool that served them; it is the figure
  its /metrics and its key budgets count);
- expected_cost_usd: the server's estimate before the answer, `x-ricardo-expected-cost-usd` (the gateway
  chose the pool on it, with the answer's length predicted).
Times come from time.perf_counter (uvloop's loop.time() ticks in whole milliseconds); all ms
figures are rounded to the microsecond.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from tqdm import tqdm

from ricardo.errors import Unavailable
from ricardo.loadgen.prompts import prepare as prepare_prompts
from ricardo.loadgen.prompts import synthetic_prompt
from ricardo.loadgen.traces import TraceRequest

ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
ERROR_TEXT_LIMIT = 300


class ServerUnreachable(Unavailable):
    """The server could not be reached (or named no model) before the replay started."""


@dataclass
class ReplayConfig:
    base_url: str  # http://host:port, with or without a trailing /v1
    model: str | None = None  # None: the first id of GET /v1/models
    endpoint: Literal["chat", "completions"] = "chat"
    length_mode: Literal["header", "max_tokens"] = "header"
    length_header: bool = True  # send x-emulator-output-tokens
    max_tokens: int | None = None  # header mode only: an explicit cap sent as max_tokens
    slo_ttft_ms: float | None = None  # sent as x-slo-ttft-ms when set
    slo_tpot_ms: float | None = None  # sent as x-slo-tpot-ms when set
    api_key: str | None = None
    timeout_s: float = 300.0  # per request, whole stream
    max_concurrency: int | None = None  # None: open loop, no cap
    duration_s: float | None = None  # wall-clock length of the replay; None: until the last arrival
    drain_timeout_s: float = 60.0  # after duration_s (or the last arrival), how long in-flight requests may finish
    seed: int = 0  # synthetic prompt text
    progress: bool = True

    @property
    def root_url(self) -> str:
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class RequestRecord:
    index: int  # position in the replayed trace slice
    request_id: str
    input_tokens: int  # from the trace
    output_tokens: int  # from the trace (the length asked for)
    scheduled_s: float  # planned send time, seconds from the replay start
    sent_s: float | None = None
    lag_ms: float | None = None
    outcome: Literal["ok", "error", "cancelled"] = "error"  # cancelled: stopped by the user (Ctrl-C)
    status: int | None = None  # HTTP status
    error: str | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    tpot_ms: float | None = None
    latency_per_token_ms: float | None = None
    prompt_tokens: int | None = None  # from usage; else the trace's input_tokens, flagged estimated
    prompt_tokens_estimated: bool = False
    completion_tokens: int | None = None  # from usage; else the number of content chunks, flagged
    completion_tokens_estimated: bool = False
    pool: str | None = None  # x-ricardo-pool response header
    cost_usd: float | None = None  # usage.ricardo_cost_usd: the actual cost, reported after the answer
    expected_cost_usd: float | None = None  # x-ricardo-expected-cost-usd response header: the estimate before it
    chunk_ms: list[float] = field(default_factory=list)


@dataclass
class ReplayResult:
    records: list[RequestRecord]
    model: str
    started_at: str  # ISO 8601 UTC
    wall_s: float
    scheduled: int  # requests in the slice
    interrupted: bool


def run(requests: list[TraceRequest], config: ReplayConfig) -> ReplayResult:
    """Replay on uvloop when available; SIGINT/SIGTERM stop the run and keep what was measured."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(replay(requests, config))
    return uvloop.run(replay(requests, config))


async def replay(requests: list[TraceRequest], config: ReplayConfig) -> ReplayResult:
    connector = aiohttp.TCPConnector(limit=config.max_concurrency or 0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        model = await _probe(session, config)
        return await _Replay(session, requests, config, model).run()


async def _probe(session: aiohttp.ClientSession, config: ReplayConfig) -> str:
    url = config.root_url + "/v1/models"
    status = None
    try:
        async with session.get(url, headers=_auth(config), timeout=aiohttp.ClientTimeout(total=10)) as resp:
            status = resp.status
            listing: Any = await resp.json(content_type=None) if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise ServerUnreachable(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    except (aiohttp.ClientError, ValueError):
        listing = None  # reachable, but without a usable model list
    if status in (401, 403):  # the requests would be refused alike, whatever --model says
        raise ServerUnreachable(f"{url} answered HTTP {status}: pass --api-key (or the right one)")
    if config.model:
        return config.model
    try:
        return listing["data"][0]["id"]
    except (TypeError, KeyError, IndexError):
        raise ServerUnreachable(f"{url} lists no model; pass --model") from None


def _auth(config: ReplayConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


class _Replay:
    def __init__(
        self, session: aiohttp.ClientSession, requests: list[TraceRequest], config: ReplayConfig, model: str
    ) -> None:
        self.session, self.requests, self.config, self.model = session, requests, config, model
        self.url = config.root_url + ENDPOINT_PATHS[config.endpoint]
        self.timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.semaphore = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self.records: list[RequestRecord] = []
        self.tasks: set[asyncio.Task] = set()
        self.sent = self.errors = 0
        self.cancel_reason: str | None = None
        self.stop = asyncio.Event()
        self.finished = asyncio.Event()
        self.scheduling_done = False

    async def run(self) -> ReplayResult:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        # disable=None: a bar on a terminal only, no carriage-return spam in logs
        self.bar = tqdm(
            total=len(self.requests),
            unit="req",
            desc="done",
            disable=None if self.config.progress else True,
            dynamic_ncols=True,
        )
        prepare_prompts()  # build the synthetic text pool now, not during the first send
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.t0 = time.perf_counter()
        duration_s = self.config.duration_s
        if duration_s is None:
            duration_s = self.requests[-1].arrival_s if self.requests else 0.0
        deadline = self.t0 + duration_s + self.config.drain_timeout_s
        scheduler = asyncio.create_task(self._schedule())
        ticker = asyncio.create_task(self._tick())
        waiters = [asyncio.create_task(self.finished.wait()), asyncio.create_task(self.stop.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=max(0.0, deadline - time.perf_counter()), return_when=asyncio.FIRST_COMPLETED
            )
            interrupted = self.stop.is_set()
            self.cancel_reason = "interrupted" if interrupted else "still running at the drain deadline"
            for task in (scheduler, ticker, *waiters, *self.tasks):
                task.cancel()
            await asyncio.gather(scheduler, ticker, *waiters, *self.tasks, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._update_bar()
            self.bar.close()
        self.records.sort(key=lambda r: r.index)
        return ReplayResult(
            self.records, self.model, started_at, time.perf_counter() - self.t0, len(self.requests), interrupted
        )

    async def _schedule(self) -> None:
        for index, request in enumerate(self.requests):
            # loop: uvloop timers have millisecond resolution and may fire a fraction early
            while (delay := self.t0 + request.arrival_s - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send(index, request))
            self.tasks.add(task)
            task.add_done_callback(self._on_done)
        self.scheduling_done = True
        if not self.tasks:
            self.finished.set()

    def _on_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.bar.update(1)
        if self.scheduling_done and not self.tasks:
            self.finished.set()

    async def _tick(self) -> None:
        while True:
            self._update_bar()
            await asyncio.sleep(0.5)

    def _update_bar(self) -> None:
        self.bar.set_postfix(sent=self.sent, errors=self.errors, in_flight=len(self.tasks))

    async def _send(self, index: int, request: TraceRequest) -> None:
        record = RequestRecord(
            index=index,
            request_id=str(uuid.uuid4()),
            input_tokens=request.input_tokens,
            output_tokens=request.output_tokens,
            scheduled_s=request.arrival_s,
        )
        try:
            if self.semaphore:
                async with self.semaphore:
                    await self._stream(request, record)
            else:
                await self._stream(request, record)
        except asyncio.CancelledError:
            record.outcome = "cancelled" if self.cancel_reason == "interrupted" else "error"
            record.error = self.cancel_reason or "cancelled"
        except TimeoutError:
            record.error = f"timeout after {self.config.timeout_s:g} s"
        except Exception as exc:  # a broken request must never end the run
            record.error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        if record.outcome == "ok":
            _finish(record)
        if record.outcome == "error":
            self.errors += 1
        self.records.append(record)

    def _request(self, request: TraceRequest, record: RequestRecord) -> tuple[dict, dict]:
        config = self.config
        prompt = (
            request.prompt
            if request.prompt is not None
            else synthetic_prompt(request.input_tokens, record.index, config.seed)
        )
        body: dict = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if config.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if config.length_mode == "max_tokens":
            body["max_tokens"] = request.output_tokens
            body["ignore_eos"] = True
        elif config.max_tokens is not None:
            body["max_tokens"] = config.max_tokens
        headers = {"Content-Type": "application/json", "x-request-id": record.request_id, **_auth(config)}
        if config.length_header:
            headers["x-emulator-output-tokens"] = str(request.output_tokens)
        if config.slo_ttft_ms is not None:
            headers["x-slo-ttft-ms"] = f"{config.slo_ttft_ms:g}"
        if config.slo_tpot_ms is not None:
            headers["x-slo-tpot-ms"] = f"{config.slo_tpot_ms:g}"
        return body, headers

    async def _stream(self, request: TraceRequest, record: RequestRecord) -> None:
        body, headers = self._request(request, record)
        sent = time.perf_counter()
        record.sent_s = round(sent - self.t0, 6)
        record.lag_ms = _ms(sent - self.t0 - record.scheduled_s)
        self.sent += 1
        content_key = "delta" if self.config.endpoint == "chat" else None
        async with self.session.post(
            self.url, data=json.dumps(body).encode(), headers=headers, timeout=self.timeout
        ) as resp:
            record.status = resp.status
            record.pool = resp.headers.get("x-ricardo-pool")
            record.expected_cost_usd = _float_or_none(resp.headers.get("x-ricardo-expected-cost-usd"))
            if resp.status != 200:
                record.error = f"HTTP {resp.status}: {_error_message(await resp.text())}"
                return
            chunk_ms = record.chunk_ms
            events = 0
            done = aborted = False
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                events += 1
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                event = json.loads(payload)
                if event.get("error"):
                    record.error = f"stream error: {_error_message(payload.decode())}"
                    return
                usage = event.get("usage")
                if usage:
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.completion_tokens = usage.get("completion_tokens")
                    record.cost_usd = _number_or_none(usage.get("ricardo_cost_usd"))
                choices = event.get("choices")
                if choices and _has_content(choices[0], content_key):
                    chunk_ms.append(_ms(time.perf_counter() - sent))
                if choices and any(isinstance(c, dict) and c.get("finish_reason") == "abort" for c in choices):
                    aborted = True  # vLLM's word for an answer its engine gave up (shutdown, preemption limit)
            record.e2e_ms = _ms(time.perf_counter() - sent)
        if not events:
            record.error = f"not an event stream (content-type {resp.content_type})"
            return
        if not done:  # a cut stream can still carry tokens and even its usage; [DONE] alone says it is whole
            record.error = "stream ended without [DONE]"
            return
        if aborted:
            record.error = "the server aborted the answer (finish_reason abort)"
            return
        record.outcome = "ok"


def _has_content(choice: dict, content_key: str | None) -> bool:
    if content_key is None:
        return bool(choice.get("text"))
    delta = choice.get(content_key) or {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _error_message(text: str) -> str:
    """The `error.message` of an OpenAI error body, else the raw text, shortened."""
    try:
        error = json.loads(text)["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
    except (ValueError, KeyError, TypeError):
        message = text
    return str(message)[:ERROR_TEXT_LIMIT]


def _finish(record: RequestRecord) -> None:
    """Derived figures of a completed stream."""
    e2e_ms = record.e2e_ms
    assert e2e_ms is not None  # an "ok" stream was timed to its end
    if record.chunk_ms:
        record.ttft_ms = record.chunk_ms[0]
    if record.completion_tokens is None:
        record.completion_tokens = len(record.chunk_ms)
        record.completion_tokens_estimated = True
    if record.prompt_tokens is None:
        record.prompt_tokens = record.input_tokens
        record.prompt_tokens_estimated = True
    if record.completion_tokens > 0:
        record.latency_per_token_ms = round(e2e_ms / record.completion_tokens, 3)
    if record.completion_tokens > 1 and record.ttft_ms is not None:
        record.tpot_ms = round((e2e_ms - record.ttft_ms) / (record.completion_tokens - 1), 3)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
