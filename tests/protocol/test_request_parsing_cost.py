"""What a request body may cost the event loop to parse: about what its bytes cost to decode, whatever their shape.

The gateway parses a body on its event loop, where every stream it relays waits meanwhile: a body within the size
limit made of a million tiny prompts took over four seconds of it (the nesting check walked every list in Python,
and the prompt union tried each of its four forms on every element).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable

import pytest
from ricardo.protocol.openai import parse_embedding_request, parse_request

MANY = 1_000_000  # "[0]," each: 4 MB, the default limits.max_body_bytes
# parsing and checking a body, against decoding its bytes alone: ~3x (17x before)
TIMES_DECODING = 6


def many_token_lists(field: str) -> bytes:
    return b'{"model":"m","' + field.encode() + b'":[' + b",".join([b"[0]"] * MANY) + b"]}"


def cpu_seconds(work: Callable[[], object]) -> float:
    """CPU time `work` takes, without the cyclic collector (whose pauses depend on what else the process holds)."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        work()
        return time.process_time() - started
    finally:
        gc.enable()


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_a_body_of_a_million_token_lists_is_parsed_in_about_the_time_of_its_bytes(endpoint):
    raw = many_token_lists("prompt" if endpoint == "completions" else "input")
    decoding = cpu_seconds(lambda: json.loads(raw))
    if endpoint == "completions":
        parsing = cpu_seconds(lambda: parse_request("completions", raw))
        assert len(parse_request("completions", raw)[1].prompts) == MANY
    else:
        parsing = cpu_seconds(lambda: parse_embedding_request(raw))
        assert len(parse_embedding_request(raw)[1].inputs) == MANY
    assert parsing < TIMES_DECODING * decoding, (parsing, decoding)
