"""The overhead bench's load client where wrk is not installed: closed loop, `--connections` at once, each
posting the same body again as soon as its answer has been read whole, for `--duration` seconds.

    python bench/overhead/client.py URL --connections 32 --duration 5   (the body in $BENCH_BODY)

It prints what bench/overhead/post.lua prints for wrk: one line `RESULT {json}`. It runs in a process of its
own, so its CPU is never counted as the target's; it is heavier per request than wrk, so a run says which
client it used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import aiohttp


async def drive(url: str, body: bytes, connections: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = non2xx = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        start = time.monotonic()
        end = start + duration

        async def worker() -> None:
            nonlocal errors, non2xx
            while time.monotonic() < end:
                sent = time.monotonic()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status >= 300:
                            non2xx += 1
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(time.monotonic() - sent)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - start
    latencies.sort()

    def pct(q: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6) if latencies else 0

    return {
        "requests": len(latencies) + non2xx,
        "duration_us": int(elapsed * 1e6),
        "errors": errors,
        "non2xx": non2xx,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    body = os.environ["BENCH_BODY"].encode()
    print("RESULT " + json.dumps(asyncio.run(drive(args.url, body, args.connections, args.duration))), flush=True)


if __name__ == "__main__":
    main()
