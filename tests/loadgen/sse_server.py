"""A small OpenAI-compatible streaming server for loadgen tests and its throughput benchmark.

It streams N one-token chunks after `ttft_s`, `itl_s` apart, then a usage chunk when asked, where N is
the x-emulator-output-tokens header, else max_tokens, else 8. Prompts steer failures:
"test-fail-429" answers 429 with an OpenAI error body, "test-fail-stream" sends one token then a
`data: {"error": ...}` event, "test-no-done" ends a whole stream (usage included) without `data: [DONE]`,
"test-abort" ends its last token with vLLM's `finish_reason: "abort"`,
"test-no-stream" answers plain JSON, "test-hang" sleeps 60 s first.
Responses carry x-ricardo-pool ("small" below 100 prompt words, else "large") and, like the gateway, an
expected cost in x-ricardo-expected-cost-usd (2e-6 $ per prompt word and per output token) and the actual one
in usage.ricardo_cost_usd (1e-6 $ per prompt word and per output token). Every request's path, headers
(lower-case names) and body are kept in `seen`; `completed` counts finished streams.

Standalone: python tests/loadgen/sse_server.py --port 8099 --ttft-ms 0 --itl-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

MODEL = "fake-model"


class FakeServer:
    def __init__(self, ttft_s: float = 0.05, itl_s: float = 0.0, keep_requests: bool = True) -> None:
        self.ttft_s, self.itl_s, self.keep_requests = ttft_s, itl_s, keep_requests
        self.seen: list[dict] = []
        self.completed = 0  # streams finished with [DONE]
        self.api_key: str | None = None  # set: /v1/models answers 401 without this bearer token
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/chat/completions", self.complete)
        self.app.router.add_post("/v1/completions", self.complete)

    async def models(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid API key", "type": "auth"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}, {"id": "other"}]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.keep_requests:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self.seen.append({"path": request.path, "headers": headers, "body": body})
        chat = request.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        if "test-fail-429" in prompt:
            return web.json_response(
                {"error": {"message": "too many requests", "type": "rate_limit", "param": None, "code": 429}},
                status=429,
            )
        if "test-no-stream" in prompt:
            return web.json_response({"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}}]})
        if "test-hang" in prompt:
            await asyncio.sleep(60)
        n_output = int(request.headers.get("x-emulator-output-tokens") or body.get("max_tokens") or 8)
        prompt_tokens = len(prompt.split())
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "x-ricardo-pool": "small" if prompt_tokens < 100 else "large",
                "x-ricardo-expected-cost-usd": f"{2e-6 * (prompt_tokens + n_output):.9f}",
            }
        )
        await response.prepare(request)
        await asyncio.sleep(self.ttft_s)
        for i in range(n_output):
            if i:
                await asyncio.sleep(self.itl_s)
            choice = {"index": 0, "delta": {"content": f" tok{i}"}} if chat else {"index": 0, "text": f" tok{i}"}
            if "test-abort" in prompt and i == n_output - 1:
                choice["finish_reason"] = "abort"
            await response.write(_event({"id": "x", "model": MODEL, "choices": [choice]}))
            if "test-fail-stream" in prompt:
                await response.write(_event({"error": {"message": "engine died", "type": "server_error"}}))
                return response
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                _event(
                    {
                        "id": "x",
                        "model": MODEL,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": n_output,
                            "total_tokens": prompt_tokens + n_output,
                            "ricardo_cost_usd": 1e-6 * (prompt_tokens + n_output),
                        },
                    }
                )
            )
        if "test-no-done" in prompt:
            return response
        await response.write(b"data: [DONE]\n\n")
        self.completed += 1
        return response


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def start(server: FakeServer, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=0.1)  # do not wait for test-hang
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, runner.addresses[0][1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeServer(args.ttft_ms / 1000, args.itl_ms / 1000, keep_requests=False)
    web.run_app(fake.app, host="127.0.0.1", port=args.port, access_log=None)
