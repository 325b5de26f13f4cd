"""relay.py on a Rust HTTP stack: granian (server, RSGI) and pyreqwest (client): Python without aiohttp.

    <venv>/bin/python bench/overhead/relay_native.py --port 8100 --backend http://127.0.0.1:9001

Not a product: a yardstick for the overhead bench (run.py's `relay-native` target), run from its own throwaway venv
(granian, pyreqwest and uvloop from PyPI, pinned in run.py; nothing of ricardo's). It does what relay.py does: the
client's request (method, path and query, body, and the headers a completion needs: Content-Type, Accept,
Authorization) is sent to the backend through one pooled client, and the backend's status and body come back, read
whole and sent as they came; a streamed answer (one the backend sends as `text/event-stream`: the request is not looked
into) is passed on chunk by chunk as it arrives. No parsing, no routing, no retries, no checks.

How it runs: granian's own server, one worker process (granian's supervisor beside it, idle), one Rust runtime thread
in single-threaded mode (`--runtime-mode st`) and one Python thread running a uvloop event loop for the handler;
pyreqwest's client runs its single-threaded Tokio runtime (its default) on a thread of its own. The HTTP parsing and
the sockets of both legs are Rust's; Python is left the handler: a coroutine per request, the hand-offs between the
runtimes and the loop, and one copy of each body into a Python `bytes`.

What it showed (native.json, native_repeat.json: `run.py --targets direct,relay,relay-native,vllm-router`, load 1-4 on
2 cores): no gain. Whole answers 0.75-1.27x the aiohttp relay's req/s at the same CPU per request (0.53-0.68x
vllm-router's); streams 0.4-0.7x the relay's at about 2x its CPU per request. Every request crosses threads four
times or more (granian's runtime to the loop, the loop to pyreqwest's runtime, back for the headers and for the body,
back to granian), each crossing a GIL hand-off and a wake-up, and a stream once more per chunk it is sent in (18
here, `read_chunk` and `send_bytes` each); by `py-spy --native`, granian's runtime thread spends ~80% of its samples
waiting for the GIL (futex, sched_yield). aiohttp on uvloop parses in C on the loop's own thread and never hands off.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
from granian.log import LogLevels
from granian.server import Server
from pyreqwest.client import Client, ClientBuilder

BACKEND_ENV = "RELAY_NATIVE_BACKEND"
FORWARDED = ("content-type", "accept", "authorization")  # request headers sent on to the backend


class Relay:
    """The RSGI application: `__rsgi_init__` builds the client on the worker's loop, `__rsgi__` serves a request."""

    def __init__(self, backend: str) -> None:
        self.backend = backend.rstrip("/")
        self.client: Client | None = None

    def __rsgi_init__(self, loop: Any) -> None:
        # one pooled client: no limit on connections (aiohttp's session in relay.py allows 512 to a backend), HTTP/1.1,
        # no redirects, no decompression (the body is passed on as it came), a generous overall timeout
        self.client = (
            ClientBuilder()
            .http1_only()
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .timeout(timedelta(seconds=600))
            .build()
        )

    def __rsgi_del__(self, loop: Any) -> None:
        if self.client is not None:
            loop.run_until_complete(self.client.close())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        assert self.client is not None
        body = await proto()
        url = self.backend + scope.path + ("?" + scope.query_string if scope.query_string else "")
        request = self.client.request(scope.method, url).body_bytes(body)
        for name in FORWARDED:
            value = scope.headers.get(name)
            if value is not None:
                request = request.header(name, value)
        try:
            # the read-ahead buffer at 0: with pyreqwest's default (64 KiB) the answer is read ahead before its headers
            # are handed over, so a stream of under 64 KiB would reach the client only once it has ended
            async with request.streamed_read_buffer_limit(0).build_streamed() as upstream:
                content_type = upstream.get_header("content-type") or "application/octet-stream"
                headers = [("content-type", content_type)]
                if not content_type.startswith("text/event-stream"):
                    proto.response_bytes(upstream.status, headers, bytes(await upstream.bytes()))
                    return
                transport = proto.response_stream(upstream.status, headers)
                reader = upstream.body_reader
                while (chunk := await reader.read_chunk()) is not None:
                    await transport.send_bytes(bytes(chunk))
        except Exception as exc:  # the backend could not be reached, or broke off: as a relay would say it
            proto.response_str(502, [("content-type", "text/plain")], f"upstream error: {type(exc).__name__}")


def app() -> Relay:
    """granian's factory target: the backend comes from the environment, set by main() before the worker starts."""
    return Relay(os.environ[BACKEND_ENV])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL of the backend, e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    os.environ[BACKEND_ENV] = args.backend
    server = Server(
        "relay_native:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=1,
        runtime_threads=1,
        runtime_mode=RuntimeModes.st,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        factory=True,
        working_dir=Path(__file__).resolve().parent,
        log_level=LogLevels.warning,
        log_access=False,
    )
    print(f"relay-native listening on http://{args.host}:{args.port} for {args.backend}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
