"""The request's priority: the `x-priority` header, within what an API key grants (or, without one, within
`max_header_priority`)."""

from __future__ import annotations

import json

import pytest
from ricardo.gateway.shaping import MIN_PRIORITY, Shaper
from ricardo.policies.types import SLO
from ricardo.protocol.openai import OpenAIError, parse_request


@pytest.fixture(scope="module")
def shaper() -> Shaper:
    return Shaper(SLO(2000, 120), max_header_priority=2)


def priority(shaper: Shaper, header: str | None, granted: int | None = None) -> int:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    body, request = parse_request("chat", raw)
    headers = {} if header is None else {"x-priority": header}
    shape, _ = shaper.shape("chat", body, request, headers, granted)
    return shape.priority


@pytest.mark.parametrize(
    ("header", "granted", "expected"),
    [
        (None, None, 0),  # anonymous: 0 by default
        ("2", None, 2),
        ("9", None, 2),  # at most max_header_priority
        ("-1", None, -1),  # anyone may go lower
        ("-99", None, MIN_PRIORITY),
        (None, 2, 2),  # a key's priority is its requests' priority
        (None, 1, 1),
        ("2", 0, 0),  # the header cannot raise it past the key's
        ("2", 1, 1),
        ("1", 2, 1),  # but may lower it
        ("-1", 2, -1),
    ],
)
def test_the_header_is_bounded_by_the_grant(shaper, header, granted, expected):
    assert priority(shaper, header, granted) == expected


def test_a_priority_that_is_no_integer_is_a_400(shaper):
    with pytest.raises(OpenAIError) as refused:
        priority(shaper, "high", 2)
    assert refused.value.status == 400 and refused.value.param == "x-priority"
