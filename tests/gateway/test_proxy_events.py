"""The SSE relay's per-event decisions: usage capture, usage-chunk stripping, first-token time."""

import json

from ricardo.gateway.proxy import Trip, _keep, _upstream_body
from ricardo.policies.types import SLO, RequestShape

SHAPE = RequestShape("m", 10, 5, 9, SLO(1000, 100))


def trip() -> Trip:
    return Trip("chat", "rid", SHAPE, None, started=0.0)


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":" the"}}],"usage":null}'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'


def test_usage_chunk_is_captured_and_stripped_unless_asked():
    t = trip()
    assert _keep(t, USAGE, client_wants_usage=False) is False
    assert t.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert _keep(trip(), USAGE, client_wants_usage=True) is True


def test_first_token_time_waits_for_content_not_the_role_chunk():
    t = trip()
    _keep(t, ROLE, False)
    assert t.first_token_at is None
    _keep(t, TOKEN, False)
    assert t.first_token_at is not None


def test_done_and_content_chunks_pass_through():
    t = trip()
    assert _keep(t, TOKEN, False) and _keep(t, b"data: [DONE]", False)


def test_upstream_always_asked_for_usage_and_other_fields_kept():
    body = {"model": "m", "stream": True, "stream_options": {"x": 1}, "ignore_eos": True}
    sent = json.loads(_upstream_body(body, stream=True))
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert sent["ignore_eos"] is True
    assert body["stream_options"] == {"x": 1}, "the client's body is not modified in place"
    assert "stream_options" not in json.loads(_upstream_body({"model": "m"}, stream=False))
