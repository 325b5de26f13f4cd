"""Request bodies that used to crash the parser: deep nesting is a 400, at any depth."""

import json

import pytest
from ricardo.protocol.openai import MAX_JSON_DEPTH, OpenAIError, load_json, parse_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def nested(depth: int) -> bytes:
    """A chat body whose extra field nests so that the whole body is `depth` levels deep."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return json.dumps(CHAT)[:-1].encode() + b', "x": ' + inner.encode() + b"}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 990, 5_000, 200_000])
def test_deep_nesting_is_a_400(depth):
    with pytest.raises(OpenAIError) as caught:
        parse_request("chat", nested(depth))
    assert caught.value.status == 400 and "nests deeper" in caught.value.message


def test_nesting_up_to_the_limit_is_accepted():
    body, _ = parse_request("chat", nested(MAX_JSON_DEPTH))
    json.dumps(body)  # and it can be sent on


def test_many_brackets_side_by_side_are_not_depth():
    wide = json.dumps({"x": [[1]] * 10_000}).encode()
    assert len(load_json(wide)["x"]) == 10_000


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"{", b'{"a": NaN', b""])
def test_undecodable_bytes_are_a_400(raw):
    with pytest.raises(OpenAIError) as caught:
        load_json(raw)
    assert caught.value.status == 400
