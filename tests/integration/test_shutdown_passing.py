"""SIGTERM to a real gateway process while requests are in flight that are no completion being answered: an
embeddings request (a fake backend that takes 6 s, on loopback), a completion whose client is still sending its
body. A graceful shutdown lets in-flight requests finish until the drain deadline (10 s here)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import yaml
from aiohttp import web

from tests.gateway.fakes import PROBE_ANSWER, backend_app
from tests.integration.harness import Process, free_port, ricardo_command

EMBED_S = 6.0


def start_backend(port: int) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    async def answer(request: web.Request) -> web.Response:
        if request.path != "/v1/embeddings":
            return web.json_response(PROBE_ANSWER)
        await asyncio.sleep(EMBED_S)
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "embedder",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    app = backend_app(answer, models=("embedder", "llama2-7b"))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def run() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    return loop, thread


def start_gateway(tmp_path) -> tuple[Process, str]:
    backend_port, gateway_port = free_port(), free_port()
    start_backend(backend_port)
    backend = f"http://127.0.0.1:{backend_port}"
    config = {
        "host": "127.0.0.1",
        "port": gateway_port,
        "models": ["llama2-7b", "embedder"],
        "embedding_models": {"embedder": 0.02},
        "admin_token": "shutdown-admin-token-0123456789",
        "health_interval_s": 60,
        "shutdown": {"unready_wait_s": 0, "drain_timeout_s": 10},
        "pools": [
            {"name": "e", "hardware": "A10G", "model": "embedder", "backends": [backend]},
            {"name": "c", "hardware": "A10G", "model": "llama2-7b", "backends": [backend]},
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = Process(ricardo_command("serve", "--config", str(path)), "gateway")
    url = f"http://127.0.0.1:{gateway_port}"
    gateway.wait_http(url + "/readyz")
    return gateway, url


def test_sigterm_lets_an_embeddings_request_in_flight_finish(tmp_path):
    gateway, url = start_gateway(tmp_path)
    try:
        result: dict = {}

        def call() -> None:
            body = json.dumps({"model": "embedder", "input": "hello there"}).encode()
            request = urllib.request.Request(
                url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    result["status"] = response.status
            except urllib.error.HTTPError as exc:
                result["status"] = exc.code
            except OSError as exc:
                result["status"] = repr(exc)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the request is with the backend
        gateway.proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert result.get("status") == 200, (result, gateway.output()[-2000:])
    finally:
        gateway.stop()


def test_sigterm_lets_a_completion_whose_body_is_still_coming_finish(tmp_path):
    gateway, url = start_gateway(tmp_path)
    try:
        body = json.dumps({"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}]}).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as client:
            head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            client.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:10])
            time.sleep(0.5)  # the gateway is reading the body
            gateway.proc.send_signal(signal.SIGTERM)
            time.sleep(3.0)  # a slow client: past the ~2 s the server gives requests it does not know of
            client.sendall(body[10:])
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), (answer[:300], gateway.output()[-2000:])
    finally:
        gateway.stop()
