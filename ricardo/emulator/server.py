"""A real-time, OpenAI-compatible stand-in for one GPU backend, timed by the engine model.

Each backend owns one `Engine`. A single task runs the engine: it asks for the next iteration,
sleeps for as long as that iteration takes on the emulated hardware, then hands the new tokens
to the requests waiting on them. Requests stream those tokens out as vLLM would, and `/metrics`
exports vLLM's gauge and histogram names so anything that scrapes vLLM can scrape this.

How long an answer is: the header `x-emulator-output-tokens` (set by a load generator that knows
the trace's true length; a gateway forwards it without reading it), else a deterministic draw from
the prompt's text. `max_tokens` caps either; `ignore_eos` with `max_tokens` forces that length, as
vLLM's benchmarks do. `x-emulator-fail-status: 500` makes it answer that error instead, for fault tests, and
`Faults` (emulator/faults.py, `ricardo emulate --fault`) give a backend a standing fault: errors, hangs, stalls,
dropped or truncated answers, slowness. A request's `kv_transfer_params` make it the prefill or the decode side of
a disaggregated pair (emulator/kvtransfer.py).

A client that goes away cancels its request (the server runs with aiohttp's handler cancellation): its
sequence leaves the engine, as vLLM aborts a request whose connection closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ricardo.emulator.engine import Engine, Sequence
from ricardo.emulator.faults import Faults
from ricardo.emulator.kvtransfer import DEFAULT_LINK_GBPS, KVProducer, role_of, transfer_seconds
from ricardo.emulator.text import TokenCounter, token_text
from ricardo.profiles.engine_params import EngineParams
from ricardo.protocol.http import as_openai_error
from ricardo.protocol.openai import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    Endpoint,
    OpenAIError,
    parse_embedding_request,
    parse_request,
    sse,
    usage,
)

OUTPUT_TOKENS_HEADER = "x-emulator-output-tokens"
FAIL_STATUS_HEADER = "x-emulator-fail-status"  # tests: answer this HTTP status instead (a crash, an overload)
MAX_BODY_BYTES = 4 * 1024 * 1024
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


def drawn_output_tokens(text: str) -> int:
    """A deterministic, long-tailed answer length for a prompt: log-normal, median 128 tokens."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64
    z = math.sqrt(2) * _erfinv(2 * u - 1)
    return max(1, min(2048, round(128 * math.exp(z))))


def _vector(text: str, dimensions: int = 8) -> list[float]:
    """A unit vector drawn from the text: the same input embeds the same way."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=dimensions).digest()
    raw = [b / 127.5 - 1 for b in digest]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _erfinv(y: float) -> float:
    # Winitzki's approximation, accurate to ~1e-3: plenty for drawing lengths
    a = 0.147
    ln = math.log(1 - y * y)
    first = 2 / (math.pi * a) + ln / 2
    return math.copysign(math.sqrt(math.sqrt(first * first - ln / a) - first), y)


@dataclass(eq=False)
class Pending:
    """A request waiting on the engine: what it has been given so far."""

    arrived: float
    delivered: int = 0  # tokens the engine has produced and timed
    finished: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Metrics:
    """vLLM's metric names, on a registry of the backend's own (several backends share a process)."""

    def __init__(self, backend: EmulatedBackend):
        self.registry = CollectorRegistry()
        labels = {"model_name": backend.model}
        engine = backend.engine

        def gauge(name: str, doc: str, fn):
            g = Gauge(name, doc, ["model_name"], registry=self.registry)
            g.labels(**labels).set_function(fn)

        gauge("vllm:num_requests_running", "Requests in the running batch.", lambda: len(engine.running))
        gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", lambda: len(engine.waiting))
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0-1.", lambda: engine.kv_usage)

        def hist(name: str, doc: str, buckets):
            return Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry).labels(**labels)

        def counter(name: str, doc: str):
            return Counter(name, doc, ["model_name"], registry=self.registry).labels(**labels)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between tokens.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.success = Counter(
            "vllm:request_success", "Finished requests.", ["model_name", "finished_reason"], registry=self.registry
        )
        self.preemptions = counter("vllm:num_preemptions", "Preemptions.")


NO_FAULTS = Faults()


class _Cut(Exception):
    """The fault `cut-after` says: drop the connection now."""


class EmulatedBackend:
    def __init__(
        self,
        params: EngineParams,
        model: str,
        speed: float = 1.0,
        encoding: str = "llama3",
        faults: Faults | None = None,
        link_gbps: float = DEFAULT_LINK_GBPS,
    ):
        self.params = params
        self.link_gbps = link_gbps  # the link a decode side pulls KV caches over
        self.kv = KVProducer()  # the prefill side's engine id and block ids
        self.model = model
        self.faults = faults or Faults()
        self.speed = speed / self.faults.slow
        self.engine = Engine(params)
        self.counter = TokenCounter(encoding)
        self.metrics = Metrics(self)
        self._work = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.created = int(time.time())

    # -- the engine loop ------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            if self.engine.idle:
                self._work.clear()
                await self._work.wait()
                clock = loop.time()
            step = self.engine.step()
            if step is None:
                continue
            clock = max(clock, loop.time() - 0.05) + step.seconds / self.speed  # never bank more than 50 ms of lag
            delay = clock - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if step.preempted:
                self.metrics.preemptions.inc(len(step.preempted))
            for seq in step.advanced:
                self._deliver(seq.tag, seq.generated, now)
            for seq in step.finished:
                seq.tag.finished = True
                seq.tag.wake.set()

    def _deliver(self, pending: Pending, generated: int, now: float) -> None:
        new = generated - pending.delivered
        if new <= 0:
            return
        if pending.first_token_at is None:
            pending.first_token_at = now
            self.metrics.ttft.observe(now - pending.arrived)
        else:
            assert pending.last_token_at is not None  # set with the first token
            self.metrics.itl.observe((now - pending.last_token_at) / new)
        pending.last_token_at = now
        pending.delivered = generated
        pending.wake.set()

    async def start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self, app: web.Application) -> None:
        if self._task:
            self._task.cancel()

    # -- HTTP --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[openai_errors])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/health", self.health)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "ricardo-emulator",
                        "max_model_len": self.params.model.max_context,
                    }
                ],
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        """vLLM's `/v1/embeddings` answer: a small deterministic vector per input, at once (the engine model times
        generation, not pooling), with the input tokens in `usage`."""
        _, req = parse_embedding_request(await request.read())
        if req.model != self.model:
            raise OpenAIError(
                404, f"The model `{req.model}` does not exist.", "NotFoundError", "model", "model_not_found"
            )
        counts = [self.counter.count(i) if isinstance(i, str) else len(i) for i in req.inputs]
        data = [
            {"index": index, "object": "embedding", "embedding": _vector(str(value))}
            for index, value in enumerate(req.inputs)
        ]
        answer = {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": self.model}
        return web.json_response(
            {**answer, "data": data, "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def _generate(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        body, req = parse_request(endpoint, await request.read())
        if FAIL_STATUS_HEADER in request.headers:
            status = int(request.headers[FAIL_STATUS_HEADER])
            raise OpenAIError(
                status,
                "failure injected by the x-emulator-fail-status header",
                "upstream_error" if status >= 500 else "invalid_request_error",
            )
        if req.model != self.model:
            raise OpenAIError(
                404, f"The model `{req.model}` does not exist.", "NotFoundError", "model", "model_not_found"
            )
        prompts = self._prompts(req)  # (text, tokens) of each prompt
        cap = req.output_cap
        role = role_of(body)  # prefill or decode side of a disaggregated pair, or neither (emulator/kvtransfer.py)
        lengths = [self._output_tokens(request, body, req, text) for text, _ in prompts]
        limit = min(self.params.model.max_context, self.engine.capacity)
        for (_, prompt_tokens), output_tokens in zip(prompts, lengths, strict=True):
            if prompt_tokens + output_tokens > limit:
                raise OpenAIError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {prompt_tokens + output_tokens} tokens ({prompt_tokens} in the "
                    f"messages, {output_tokens} in the completion).",
                    param="messages",
                )
        faults = self.faults if self.faults.applies(max(lengths)) else NO_FAULTS
        if faults.fail_now():
            raise OpenAIError(500, "failure injected (error-rate)", "upstream_error")
        if faults.hang:
            await _forever()
        # `n` answers per prompt, numbered as vLLM numbers them (prompt by prompt); they wake the handler together
        arrived, wake = asyncio.get_running_loop().time(), asyncio.Event()
        prompt_total = sum(t for _, t in prompts)
        if role == "decode":  # pull the prompt's KV cache from the prefill side, then decode it without a prefill
            kv_bytes = self.params.model.kv_bytes_per_token
            await asyncio.sleep(transfer_seconds(prompt_total, kv_bytes, self.link_gbps) / self.speed)
        seqs = [
            Sequence(prompt_tokens, output_tokens, tag=Pending(arrived=arrived, wake=wake), prefilled=role == "decode")
            for (_, prompt_tokens), output_tokens in zip(prompts, lengths, strict=True)
            for _ in range(req.n)
        ]
        for seq in seqs:
            self.engine.submit(seq)
        self._work.set()
        total = usage(prompt_total, sum(seq.output_tokens for seq in seqs))
        if role != "decode":
            self.metrics.prompt_tokens.inc(prompt_total)
        reasons = ["length" if cap is not None and seq.output_tokens >= cap else "stop" for seq in seqs]
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        ident = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + rid
        try:
            if req.stream:
                return await self._stream(
                    request, endpoint, ident, rid, seqs, total, req.include_usage, reasons, faults
                )
            await self._wait_finished(seqs)
            contents = ["".join(token_text(i) for i in range(seq.output_tokens)) for seq in seqs]
            # `created` is when the answer was made, as vLLM's (a request's, not the server's start)
            answer = _completion(endpoint, ident, self.model, int(time.time()), contents, reasons, total)
            if role == "prefill":  # where the decode side finds the KV cache
                host, port = _local_address(request)
                answer["kv_transfer_params"] = self.kv.params(rid, prompt_total, host, port)
            if faults.breaks_answers:
                return await self._broken_answer(request, answer, rid, faults)
            return web.json_response(answer, headers={"x-request-id": rid})
        finally:
            for seq, reason in zip(seqs, reasons, strict=True):
                if not seq.tag.finished:
                    self.engine.cancel(seq)
                else:
                    self._record_finished(seq.tag, seq.output_tokens, reason)

    def _prompts(self, req: ChatCompletionRequest | CompletionRequest) -> list[tuple[str, int]]:
        """Each prompt's text (what an answer's length is drawn from) and tokens; token ids count as themselves."""
        if isinstance(req, ChatCompletionRequest):
            return [(req.text(), self.counter.count_chat([(m.role, m.content) for m in req.messages]))]
        return [(p, self.counter.count(p)) if isinstance(p, str) else (str(p), len(p)) for p in req.prompts]

    def _output_tokens(self, request: web.Request, body: dict, req, text: str) -> int:
        cap = req.output_cap
        if cap is not None and body.get("ignore_eos"):
            return cap
        header = request.headers.get(OUTPUT_TOKENS_HEADER)
        if header is not None:
            try:
                wanted = int(header)
            except ValueError:
                raise OpenAIError(400, f"{OUTPUT_TOKENS_HEADER} must be an integer") from None
            wanted = max(1, wanted)
        else:
            wanted = drawn_output_tokens(text)
        return min(wanted, cap) if cap is not None else wanted

    async def _broken_answer(self, request: web.Request, answer: dict, rid: str, faults: Faults) -> web.StreamResponse:
        """Half of a whole answer: dropped (cut-after), left hanging (stall-after) or ended cleanly (no-done)."""
        raw = json.dumps(answer).encode()
        half = raw[: len(raw) // 2]
        headers = {"Content-Type": "application/json", "x-request-id": rid}
        if faults.cut_after is None and faults.stall_after is None:
            return web.Response(body=half, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_length = len(raw)
        await response.prepare(request)
        await response.write(half)
        if faults.cut_after is None:
            await _forever()
        _drop(request)
        return response

    async def _wait_finished(self, seqs: list[Sequence]) -> None:
        while not all(seq.tag.finished for seq in seqs):
            await seqs[0].tag.wake.wait()  # one event for all of a request's answers
            seqs[0].tag.wake.clear()

    def _record_finished(self, pending: Pending, output_tokens: int, finish_reason: str) -> None:
        now = asyncio.get_running_loop().time()
        self.metrics.e2e.observe(now - pending.arrived)
        self.metrics.generation_tokens.inc(output_tokens)
        self.metrics.success.labels(model_name=self.model, finished_reason=finish_reason).inc()

    async def _stream(
        self,
        request: web.Request,
        endpoint: Endpoint,
        ident: str,
        rid: str,
        seqs: list[Sequence],
        total: dict[str, int],
        include_usage: bool,
        reasons: list[str],
        faults: Faults,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-request-id": rid}
        )
        await response.prepare(request)
        chunk = _Chunker(endpoint, ident, self.model, int(time.time()), include_usage)
        events = _Events(response, faults)
        try:
            if endpoint == "chat":
                for index in range(len(seqs)):
                    await events.send(sse(chunk({"role": "assistant", "content": ""}, None, index)))
            await self._stream_tokens(events, chunk, seqs, reasons, total if include_usage else None)
        except ConnectionResetError:
            pass  # the client went away; the caller frees the sequences
        except _Cut:
            _drop(request)
        return response

    async def _stream_tokens(
        self,
        events: _Events,
        chunk: _Chunker,
        seqs: list[Sequence],
        reasons: list[str],
        total: dict[str, int] | None,
    ) -> None:
        wake = seqs[0].tag.wake  # shared by the request's answers
        sent = [0] * len(seqs)
        no_done = events.faults.no_done
        while any(s < seq.output_tokens for s, seq in zip(sent, seqs, strict=True)):
            await wake.wait()
            wake.clear()
            for index, seq in enumerate(seqs):
                upto = seq.tag.delivered
                if upto > sent[index]:
                    text = "".join(token_text(i) for i in range(sent[index], upto))
                    done = upto >= seq.output_tokens and not no_done
                    await events.send(sse(chunk(text, reasons[index] if done else None, index)))
                    sent[index] = upto
        await self._wait_finished(seqs)
        if no_done:  # ends as if complete, without saying so
            await events.response.write_eof()
            return
        if total is not None:
            payload = {"id": chunk.ident, "object": chunk.object, "created": chunk.created, "model": self.model}
            await events.send(sse({**payload, "choices": [], "usage": total}))
        await events.send(SSE_DONE)
        await events.response.write_eof()


class _Events:
    """Writes a stream's events, and breaks it where the backend's faults say."""

    def __init__(self, response: web.StreamResponse, faults: Faults):
        self.response = response
        self.faults = faults
        self.sent = 0

    async def send(self, event: bytes) -> None:
        if self.faults.cut_after is not None and self.sent >= self.faults.cut_after:
            raise _Cut
        if self.faults.stall_after is not None and self.sent >= self.faults.stall_after:
            await _forever()
        await self.response.write(event)
        self.sent += 1


async def _forever() -> None:
    """Wait until the client goes away (the handler is cancelled then)."""
    await asyncio.Event().wait()


def _local_address(request: web.Request) -> tuple[str, int]:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return (str(sockname[0]), int(sockname[1])) if sockname else ("127.0.0.1", 0)


def _drop(request: web.Request) -> None:
    """Drop the connection without ending the answer, as a crashed server or a broken proxy would."""
    if request.transport is not None:
        request.transport.abort()


@dataclass(frozen=True)
class _Chunker:
    """Builds the chunks of one streamed response."""

    endpoint: Endpoint
    ident: str
    model: str
    created: int
    include_usage: bool

    @property
    def object(self) -> str:
        return "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"

    def __call__(self, content: str | dict[str, Any], finish_reason: str | None, index: int = 0) -> dict[str, Any]:
        if self.endpoint == "chat":
            delta = content if isinstance(content, dict) else {"content": content}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}
        payload = {
            "id": self.ident,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            payload["usage"] = None
        return payload


def _completion(
    endpoint: str, ident: str, model: str, created: int, contents: list[str], reasons: list[str], usage_: dict
) -> dict:
    """A whole answer with one choice per content. A chat message carries what vLLM's does within OpenAI's schema:
    `refusal: null` (required there) but not vLLM's `annotations`/`function_call` nulls, which the schema refuses."""
    choices: list[dict[str, Any]] = []
    for index, (content, finish_reason) in enumerate(zip(contents, reasons, strict=True)):
        if endpoint == "chat":
            message = {"role": "assistant", "content": content, "refusal": None}
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason})
        else:
            choices.append({"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason})
    object_ = "chat.completion" if endpoint == "chat" else "text_completion"
    return {"id": ident, "object": object_, "created": created, "model": model, "choices": choices, "usage": usage_}


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every HTTP failure leaves as an OpenAI-shaped JSON error, never a traceback."""
    try:
        return await handler(request)
    except Exception as exc:
        error = as_openai_error(exc)
        if error is None:
            raise
        return web.json_response(error.body(), status=error.status, headers=error.headers)
