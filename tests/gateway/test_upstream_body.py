"""The body the gateway sends upstream: the client's own bytes where it can, one that the backend reads as the
gateway did where it cannot."""

from __future__ import annotations

import json

import pytest
from ricardo.gateway.proxy import _upstream_body
from ricardo.protocol.openai import parse_request


def upstream(raw: bytes) -> bytes:
    body, request = parse_request("chat", raw)
    return _upstream_body(raw, body, request.stream)


MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


def test_a_whole_answer_request_goes_as_it_came() -> None:
    raw = b'{"model": "llama2-7b", ' + MESSAGES.encode() + b', "max_tokens": 3}\n'
    assert upstream(raw) is raw


def test_a_stream_always_asks_for_usage() -> None:
    raw = b'{"model": "llama2-7b", ' + MESSAGES.encode() + b', "stream": true}  \n'
    sent = json.loads(upstream(raw))
    assert sent == {**json.loads(raw), "stream_options": {"include_usage": True}}
    asked = b'{"model": "m", ' + MESSAGES.encode() + b', "stream": true, "stream_options": {"include_usage": true}}'
    assert upstream(asked) is asked


def test_other_stream_options_are_kept_beside_usage() -> None:
    raw = (
        b'{"model": "m", '
        + MESSAGES.encode()
        + b', "stream": true, "stream_options": {"continuous_usage_stats": true}}'
    )
    assert json.loads(upstream(raw))["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "evil", "model": "llama2-7b", ' + MESSAGES.encode() + b"}",
        b'{"mod\\u0065l": "evil", "model": "llama2-7b", ' + MESSAGES.encode() + b"}",
        b'{"model": "llama2-7b", "stream": true, "stream": false, ' + MESSAGES.encode() + b"}",
        b"\xef\xbb\xbf" + b'{"model": "llama2-7b", ' + MESSAGES.encode() + b"}",  # a BOM: a backend may refuse it
        ('{"model": "llama2-7b", ' + MESSAGES + "}").encode("utf-16"),
    ],
)
def test_a_body_that_may_say_a_field_twice_or_is_not_plain_utf8_is_sent_as_the_gateway_read_it(raw: bytes) -> None:
    body, _ = parse_request("chat", raw)
    sent = upstream(raw)
    assert sent != raw
    assert json.loads(sent) == body and sent.count(b'"model"') == 1
