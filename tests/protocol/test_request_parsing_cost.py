"""What a request body may cost the event loop to parse: about what its bytes cost to decode, whatever their shape.

The gateway parses a body on its event loop, where every stream it relays waits meanwhile: a body within the size
limit made of a million tiny prompts took over four seconds of it (the nesting check walked every list in Python,
and the prompt union tried each of its four forms on every element).
"""

from __future__ import annotations

import time

import pytest
from ricardo.protocol.openai import parse_embedding_request, parse_request

MANY = 1_000_000  # "[0]," each: 4 MB, the default limits.max_body_bytes
CPU_SECONDS = 1.5  # json.loads alone takes ~0.4 s of it


def many_token_lists(field: str) -> bytes:
    return b'{"model":"m","' + field.encode() + b'":[' + b",".join([b"[0]"] * MANY) + b"]}"


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_a_body_of_a_million_token_lists_is_parsed_in_about_the_time_of_its_bytes(endpoint):
    raw = many_token_lists("prompt" if endpoint == "completions" else "input")
    started = time.process_time()
    if endpoint == "completions":
        _, request = parse_request("completions", raw)
        assert len(request.prompts) == MANY
    else:
        _, embedding = parse_embedding_request(raw)
        assert len(embedding.inputs) == MANY
    assert time.process_time() - started < CPU_SECONDS
