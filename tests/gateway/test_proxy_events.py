"""The SSE relay's per-event decisions: usage capture, where usage goes (its own chunk when asked, else on the finish
chunk), first-token time, completeness. (The cost in the usage is checked through a real gateway: test_money.py.)"""

import json

from ricardo.gateway.dispatch import checked_json
from ricardo.gateway.proxy import _upstream_body
from ricardo.gateway.relay import StreamCheck, _pass_on
from ricardo.gateway.trip import Trip
from ricardo.policies.types import SLO, RequestShape

SHAPE = RequestShape("m", 10, 5, 9, SLO(1000, 100))


def trip() -> Trip:
    return Trip("chat", "rid", SHAPE, None, started=0.0)


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":" the"},"finish_reason":null}],"usage":null}'
LAST = b'data: {"choices":[{"index":0,"delta":{"content":"."},"finish_reason":"stop"}],"usage":null}'
LAST_SPACED = b'data: {"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "length"}]}'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
ERROR = b'data: {"error":{"message":"engine died","type":"internal_error"}}'


def _keep(t: Trip, check: StreamCheck, event: bytes, client_wants_usage: bool) -> list[bytes]:
    """What the client is sent for `event` (a trip with no pool is not priced: no gateway state is needed)."""
    return _pass_on(None, t, check, event, client_wants_usage)  # type: ignore[arg-type]


def payloads(sent: list[bytes]) -> list[dict]:
    return [json.loads(e.removeprefix(b"data: ").strip()) for e in sent]


def test_usage_chunk_is_captured_and_relayed_when_asked():
    t = trip()
    assert payloads(_keep(t, StreamCheck(), USAGE, client_wants_usage=True))[0]["usage"]["completion_tokens"] == 3
    assert t.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_unasked_usage_rides_on_the_finish_chunk_not_a_chunk_without_choices():
    t, check = trip(), StreamCheck()
    assert _keep(t, check, TOKEN, False) == [TOKEN + b"\n\n"]
    assert _keep(t, check, LAST, False) == [], "the finish chunk waits for the usage"
    (sent,) = payloads(_keep(t, check, USAGE, False))
    assert sent["choices"][0]["finish_reason"] == "stop" and sent["usage"]["total_tokens"] == 10
    assert _keep(t, check, b"data: [DONE]", False) == [b"data: [DONE]\n\n"]
    assert t.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_a_held_finish_chunk_is_sent_when_no_usage_comes():
    check = StreamCheck()
    _keep(trip(), check, LAST, False)
    assert _keep(trip(), check, b"data: [DONE]", False) == [LAST + b"\n\n", b"data: [DONE]\n\n"]


def test_first_token_time_waits_for_content_not_the_role_chunk():
    t = trip()
    _keep(t, StreamCheck(), ROLE, False)
    assert t.first_token_at is None
    _keep(t, StreamCheck(), TOKEN, False)
    assert t.first_token_at is not None


def test_done_and_content_chunks_pass_through():
    t = trip()
    assert _keep(t, StreamCheck(), TOKEN, False) == [TOKEN + b"\n\n"]
    assert _keep(t, StreamCheck(), b"data: [DONE]", False) == [b"data: [DONE]\n\n"]


def test_a_stream_is_complete_with_a_finish_reason_and_done_only():
    t, check = trip(), StreamCheck()
    for event in (ROLE, TOKEN, TOKEN):
        _keep(t, check, event, True)
    assert not check.finished and not check.done
    _keep(t, check, LAST, True)
    assert check.finished and not check.done
    _keep(t, check, b"data:[DONE]", True)  # the space after the colon is optional in SSE
    assert check.done and not check.error
    spaced = StreamCheck()
    _keep(t, spaced, LAST_SPACED, True)
    assert spaced.finished, "JSON with spaces is parsed, not pattern-matched"


def test_an_upstream_error_event_is_relayed_and_noted():
    check = StreamCheck()
    assert _keep(trip(), check, ERROR, False) == [ERROR + b"\n\n"]
    assert check.error


def test_a_whole_answer_must_be_json_with_choices():
    good = {"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    raw = json.dumps(good).encode()
    assert checked_json(raw) == good
    assert checked_json(raw[: len(raw) // 2]) is None
    assert checked_json(b'{"choices": []}') is None
    assert checked_json(b'{"error": {"message": "x"}}') is None
    assert checked_json(b"[1, 2]") is None


def test_upstream_always_asked_for_usage_and_other_fields_kept():
    body = {"model": "m", "stream": True, "stream_options": {"x": 1}, "ignore_eos": True}
    sent = json.loads(_upstream_body(json.dumps(body).encode(), body, stream=True))
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    assert sent["ignore_eos"] is True
    assert body["stream_options"] == {"x": 1}, "the client's body is not modified in place"
    plain = json.dumps({"model": "m"}).encode()
    assert "stream_options" not in json.loads(_upstream_body(plain, {"model": "m"}, stream=False))


def test_crlf_line_ends_are_read_as_lf():
    from ricardo.gateway.dispatch import sse_lines

    assert sse_lines(b"data: {}\r\n\r\ndata: [DONE]\r\n\r\n").split(b"\n\n") == [b"data: {}", b"data: [DONE]", b""]
    same = b"data: {}\n\n"
    assert sse_lines(same) is same
