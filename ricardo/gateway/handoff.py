"""One attempt on a disaggregated prefill/decode pair: vLLM's two-step hand-off (the NixlConnector protocol, as
vLLM's disaggregated proxy and llm-d's routing sidecar drive it).

1. The prefill side gets the request with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true, ...}`. It prefills, answers one token, and returns the
   `kv_transfer_params` the decode side needs to pull the KV cache (`do_remote_prefill`, `remote_engine_id`,
   `remote_block_ids`, `remote_host`, `remote_port`, ...).
2. The decode side gets the original request (its limits, streamed or not) carrying those `kv_transfer_params`.
   It pulls the KV cache and decodes; its answer is the client's, relayed as any other (gateway/relay.py), so the
   time to first token the client sees includes the prefill and the transfer.

Both steps happen before anything reaches the client, so a failure of either is an attempt that failed, retried
by dispatch.py like any other: the next attempt starts again from a prefill (the prefill side frees blocks nobody
pulled after its own timeout), on this pair's other backends or on the next choice, a pair or a unified pool. A
backend that failed is not tried again by the request; a prefill backend that answered cleanly may be. Each
side's answer is an outcome of its own backend (outlier detection per backend, so per role). Usage is counted
once, as one call would report it: prompt tokens from the prefill side, completion tokens from the decode side
(trip.account).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from ricardo.gateway.dispatch import Answer, AttemptFailed, attempt
from ricardo.gateway.trip import Trip, give_up, hand_over, start
from ricardo.policies.types import Choice
from ricardo.protocol.openai import error_for_status

if TYPE_CHECKING:
    from ricardo.gateway.pools import Pool
    from ricardo.gateway.state import GatewayState

# what vLLM's proxy sends the prefill side: the decode side fills in the remote fields from the prefill's answer
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
NOT_FOR_PREFILL = ("stream_options", "min_tokens", "min_completion_tokens")  # vLLM's proxy drops them too


class NoPair(Exception):
    """No backend of one of the pair's roles can take the request now: try the next choice."""


def prefill_body(body: dict[str, Any]) -> bytes:
    """The prefill side's request: one token, not streamed, asking for the KV cache to be kept for a remote decode."""
    prefill = {k: v for k, v in body.items() if k not in NOT_FOR_PREFILL}
    prefill |= {"stream": False, "max_tokens": 1, "kv_transfer_params": dict(PREFILL_PARAMS)}
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    return json.dumps(prefill, separators=(",", ":")).encode()


def decode_body(body: dict[str, Any], params: dict[str, Any]) -> bytes:
    """The decode side's request: the client's, with the prefill side's `kv_transfer_params`."""
    return json.dumps({**body, "kv_transfer_params": params}, separators=(",", ":")).encode()


async def attempt_pair(
    state: GatewayState,
    trip: Trip,
    pool: Pool,
    choice: Choice,
    payload: bytes,
    headers: dict[str, str],
    stream: bool,
) -> Answer:
    """Prefill on one backend, decode on another; AttemptFailed (retry), NoPair (next choice) or OpenAIError."""
    now = time.monotonic()
    prefill = pool.pick_backend(now, trip.tried, "prefill")
    # a decode side must be there before a prefill is spent; which one decodes is picked once the prefill is done
    if prefill is None or pool.pick_backend(now, trip.tried, "decode") is None:
        raise NoPair
    body = json.loads(payload)
    trip.attempts += 1
    start(state, trip, pool, prefill, choice)
    # its whole answer is one token: it gets the time of a first byte, not of a whole answer
    timeouts = dataclasses.replace(pool.timeouts, response_s=pool.timeouts.first_byte_s)
    try:
        answer = await attempt(pool, prefill, trip, prefill_body(body), headers, stream=False, timeouts=timeouts)
        trip.outcome = None  # a clean prefill is not yet the client's answer
        answer.response.release()
        assert answer.whole is not None  # a whole answer, checked
        params = answer.whole.body().get("kv_transfer_params")
        if not isinstance(params, dict) or not params:
            raise AttemptFailed(
                "no_kv_transfer_params",
                error_for_status(502, f"the prefill side of {pool.name} answered without kv_transfer_params"),
            )
    except AttemptFailed as failure:
        trip.tried.add(prefill)
        failure.kind = f"prefill_{failure.kind}"
        raise
    trip.prefill_usage = answer.whole.usage
    # the least loaded decode backend now; one there before the prefill may have left the config meanwhile (its
    # session is closed once it has nothing in flight), and this pool object may be one a new config replaced
    decode = pool.pick_backend(time.monotonic(), trip.tried, "decode")
    if decode is None or decode.session.closed:
        give_up(trip)  # release the prefill's charge; the next choice starts afresh
        raise NoPair
    hand_over(trip, decode)
    try:
        return await attempt(pool, decode, trip, decode_body(body, params), headers, stream)
    except AttemptFailed as failure:
        trip.tried.add(decode)
        failure.kind = f"decode_{failure.kind}"
        raise
