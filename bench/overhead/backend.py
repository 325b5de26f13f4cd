"""The trivial backend of the overhead bench: an OpenAI-shaped server that answers 16 tokens at once.

    python bench/overhead/backend.py --ports 9001,9002 [--tokens 16]

One process, one event loop (uvloop when installed), listening on each port given (the gateway's pools each
get a port of their own: a pool's backends must differ). `POST .../chat/completions` and `.../completions`
answer a whole JSON body with `usage`, or, with `"stream": true`, one SSE event per token, the last with its
`finish_reason`, the usage chunk when `stream_options.include_usage` asks for it, and `data: [DONE]`; each
event is its own write, as a real server flushes each token. Every GET answers 200 (health checks, /v1/models).
The answers are built once: the backend costs every target the same, and as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

MODEL = "llama2-7b"
PROMPT_TOKENS = 12


def whole_answer(tokens: int, chat: bool) -> bytes:
    text = " ".join(["tok"] * tokens)
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
        if chat
        else {"index": 0, "text": text, "finish_reason": "length"}
    )
    return json.dumps(
        {
            "id": "cmpl-bench",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": MODEL,
            "choices": [choice],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": tokens,
                "total_tokens": PROMPT_TOKENS + tokens,
            },
        },
        separators=(",", ":"),
    ).encode()


def stream_events(tokens: int, chat: bool) -> tuple[list[bytes], bytes]:
    """The events of a streamed answer, and its usage event."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list, usage: dict | None = None) -> bytes:
        body = {"id": "cmpl-bench", "object": kind, "created": 0, "model": MODEL, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    events = []
    for i in range(tokens):
        last = "length" if i == tokens - 1 else None
        piece = "tok" if i == 0 else " tok"
        choice = (
            {"index": 0, "delta": {"content": piece}, "finish_reason": last}
            if chat
            else {"index": 0, "text": piece, "finish_reason": last}
        )
        events.append(event([choice]))
    usage = event(
        [], {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens}
    )
    return events, usage


def build_app(tokens: int) -> web.Application:
    answers = {chat: whole_answer(tokens, chat) for chat in (True, False)}
    streams = {chat: stream_events(tokens, chat) for chat in (True, False)}

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        if not body.get("stream"):
            return web.Response(body=answers[chat], content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events, usage = streams[chat]
        for event in events:
            await response.write(event)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

    app = web.Application()
    app.router.add_post("/{prefix:.*}completions", complete)
    app.router.add_get("/{tail:.*}", ok)
    return app


async def serve(ports: list[int], tokens: int) -> None:
    runner = web.AppRunner(build_app(tokens), access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"backend listening on {','.join(map(str, ports))}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", required=True, help="comma-separated ports to listen on")
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    coroutine = serve([int(p) for p in args.ports.split(",")], args.tokens)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


if __name__ == "__main__":
    main()
