"""A graceful shutdown (SIGTERM): stop taking work, let the work in flight finish, end what is left with a word.

1. `/readyz` turns 503 at once, so load balancers stop sending; new requests are still served for
   `unready_wait_s`, the time they take to notice.
2. Then new requests are refused (503 with Retry-After: the openai client retries them elsewhere).
3. Requests in flight finish, until `drain_timeout_s` after the signal.
4. Those still running then are ended: a stream with an SSE error event (never a silent cut), a request that
   has not answered yet with a 503. Then the upstream connections close.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ricardo.gateway.config import ShutdownConfig
from ricardo.gateway.state import GatewayState
from ricardo.protocol.openai import OpenAIError

log = logging.getLogger("ricardo.gateway")

POLL_S = 0.05
WORDS_S = 2.0  # how long the requests ended at the deadline get to say so
# what an API request cancelled at the deadline is cancelled with, to tell it from a client that left (aiohttp's)
SHUTTING_DOWN = "the gateway is shutting down"


def unavailable(why: str = "shutting down") -> OpenAIError:
    """The 503 a request the gateway will not serve is answered with: it is `why` (shutting down, ...); retry."""
    return OpenAIError(503, f"the gateway is {why}; retry", "service_unavailable", headers={"Retry-After": "1"})


async def drain(state: GatewayState, config: ShutdownConfig) -> None:
    signalled = time.monotonic()
    state.draining = True
    log.info("shutting down: unready now, refusing new requests in %g s", config.unready_wait_s)
    await asyncio.sleep(config.unready_wait_s)
    state.refusing = True
    deadline = signalled + config.drain_timeout_s
    if state.passing:
        log.info("waiting up to %.0f s for %d requests in flight", deadline - time.monotonic(), len(state.passing))
    while (state.trips or state.passing) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    left = list(state.trips)
    tripped = {trip.task for trip in left}
    for task in state.passing - tripped:  # embeddings (they answer 503), requests not yet dispatched (no word)
        task.cancel(SHUTTING_DOWN)
    if left:
        log.warning("drain deadline: ending %d requests still in flight", len(left))
    for trip in left:
        trip.aborted = "shutting down"
        if trip.task is not None:
            trip.task.cancel()
    end = time.monotonic() + WORDS_S
    while (state.trips or state.passing) and time.monotonic() < end:
        await asyncio.sleep(POLL_S)
