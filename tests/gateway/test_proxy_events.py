"""The SSE relay's per-event decisions: usage capture, where usage goes (its own chunk when asked, else on the finish
chunk), first-token time, completeness. (The cost in the usage is checked through a real gateway: test_money.py.)"""

import json

from ricardo.gateway.dispatch import checked_answer, checked_json
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
    assert check.finished == {0} and not check.done
    _keep(t, check, b"data:[DONE]", True)  # the space after the colon is optional in SSE
    assert check.done and not check.error
    spaced = StreamCheck()
    _keep(t, spaced, LAST_SPACED, True)
    assert spaced.finished == {0}, "JSON with spaces is parsed, not pattern-matched"


def choice_chunk(*reasons: str | None) -> bytes:
    choices = [{"index": i, "text": "x", "finish_reason": r} for i, r in enumerate(reasons)]
    return b"data: " + json.dumps({"choices": choices}, separators=(",", ":")).encode()


def test_each_choice_of_several_is_seen_finishing_even_beside_one_that_goes_on():
    t, check = trip(), StreamCheck()
    _keep(t, check, choice_chunk(None, None), True)  # the first token: parsed
    assert _keep(t, check, choice_chunk("stop", None), True) == [choice_chunk("stop", None) + b"\n\n"]
    assert check.finished == {0}, "a chunk whose other choice is not finished is read too"
    _keep(t, check, b"data: [DONE]", True)
    assert not check.complete, "[DONE] with a choice seen but not finished is a cut stream"
    _keep(t, check, choice_chunk(None, "length"), True)
    assert check.finished == {0, 1} and check.complete


def test_a_backend_that_ignores_n_answers_one_whole_choice():
    t, check = trip(), StreamCheck()
    for event in (choice_chunk(None), choice_chunk("stop"), b"data: [DONE]"):
        _keep(t, check, event, True)
    assert check.complete, "one choice finished and [DONE]: whole, though n=2 was asked"


def test_unasked_usage_rides_on_the_last_choice_to_finish():
    t, check = trip(), StreamCheck()
    first, second = choice_chunk("stop"), choice_chunk(None, "stop")
    _keep(t, check, choice_chunk(None, None), False)
    assert _keep(t, check, first, False) == []
    assert _keep(t, check, second, False) == [first + b"\n\n"], "the first finish goes on when the next comes"
    (sent,) = payloads(_keep(t, check, USAGE, False))
    assert sent["choices"][1]["finish_reason"] == "stop" and sent["usage"]["total_tokens"] == 10


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


def test_a_whole_answer_usage_is_read_from_its_end_and_replaced_there():
    answer = {"id": "x", "choices": [{"index": 0, "text": 'say "usage": {"a": 1}'}], "usage": {"prompt_tokens": 7}}
    raw = json.dumps(answer).encode() + b"\n"
    whole = checked_answer(raw)
    assert whole is not None and whole.usage == {"prompt_tokens": 7}
    assert whole.parsed is None, "only the usage was parsed"
    spliced = whole.with_usage({"prompt_tokens": 7, "ricardo_cost_usd": 0.5})
    assert json.loads(spliced) == {**answer, "usage": {"prompt_tokens": 7, "ricardo_cost_usd": 0.5}}
    assert spliced.startswith(raw[: raw.index(b'"usage"')]), "the rest of the answer is sent as it came"


def test_a_vllm_answer_whose_usage_is_followed_by_null_members_is_read_from_its_end():
    answer = {
        "choices": [{"index": 0, "text": "hi"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1},
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }
    raw = json.dumps(answer).encode()
    whole = checked_answer(raw)
    assert whole is not None and whole.parsed is None and whole.usage == answer["usage"]
    priced = {"prompt_tokens": 7, "c": 1}
    assert json.loads(whole.with_usage(priced)) == {**answer, "usage": priced}
    assert all(checked_answer(raw[:cut]) is None for cut in range(len(raw) - 1))
    followed = {**answer, "kv_transfer_params": {"remote_host": None}}  # a member that is not null: parsed in full
    assert checked_answer(json.dumps(followed).encode()).parsed == followed  # type: ignore[union-attr]


def test_a_whole_answer_with_its_usage_elsewhere_is_parsed_in_full():
    answer = {"usage": {"completion_tokens": 2}, "choices": [{"index": 0, "text": "hi"}], "system_fingerprint": None}
    whole = checked_answer(json.dumps(answer).encode())
    assert whole is not None and whole.parsed == answer and whole.usage == {"completion_tokens": 2}
    assert json.loads(whole.with_usage({"completion_tokens": 2, "c": 1}))["usage"] == {"completion_tokens": 2, "c": 1}
    no_usage = checked_answer(b'{"choices": [{"index": 0}], "usage": null}')
    assert no_usage is not None and no_usage.usage is None


def test_a_whole_answer_cut_short_or_without_choices_is_refused_by_the_usage_path_too():
    raw = json.dumps({"choices": [{"index": 0, "text": "hi"}], "usage": {"prompt_tokens": 7, "x": {"y": 1}}}).encode()
    assert checked_answer(raw) is not None
    assert all(checked_answer(raw[:cut]) is None for cut in range(len(raw) - 1))
    assert checked_answer(b'{"choices": [], "usage": {"prompt_tokens": 7}}') is None
    assert checked_answer(b'{"data": [1], "usage": {"prompt_tokens": 7}}') is None
    assert checked_answer(b'{"data": [1], "usage": {"prompt_tokens": 7}}', "data") is not None
    assert checked_answer(b'[{"choices": [{}]}, {"usage": {"prompt_tokens": 7}}]') is None


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
