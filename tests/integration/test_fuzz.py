"""Fuzzing in CI, bounded: no input makes the gateway answer 5xx.

The admin API is fuzzed by schemathesis from the OpenAPI document the gateway serves (valid and invalid bodies
and parameters, with a valid token); /v1/chat/completions and /v1/completions by hypothesis, with bodies from
near-valid to nonsense, streaming or not, in front of an emulated backend. Each case's status is counted;
`pytest -s` prints the counts. Budget: about a minute on this 2-core machine, fixed seeds (derandomized), so a
run is reproducible and a failure shrinks to a small example.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.request
import zlib

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import HttpUrl, TypeAdapter, ValidationError
from ricardo.gateway.admin import openapi_document
from ricardo.gateway.proxy import MAX_HOPS

from tests.integration.harness import Cluster, free_port

TOKEN = "fuzz-admin-token-0123456789abcdef"
POOLS = {"a10g": ("A10G", 1), "l4": ("L4", 1)}
ADMIN_EXAMPLES = 30  # per operation and generation mode
V1_EXAMPLES = 250  # per endpoint
FUZZ = settings(
    max_examples=V1_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
started = time.monotonic()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("fuzz"), speed=100.0, admin_token=TOKEN).start()
    yield cluster
    cluster.stop()
    total = sum(sum(c.values()) for c in statuses.values())
    print(f"\nfuzz: {total} cases in {time.monotonic() - started:.0f} s")
    for what, counter in sorted(statuses.items()):
        print(f"  {what}: {sum(counter.values())} cases, statuses {dict(sorted(counter.items()))}")
    assert "Traceback" not in cluster.logs()


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


# -- /v1 bodies -----------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ANY = JSON | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()  # NaN and inf too
TEXT = st.text(max_size=200)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": TEXT},
    optional={"name": st.text(max_size=10)},
) | st.fixed_dictionaries(
    {"role": st.just("user")},
    optional={"content": st.none() | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}))},
)
OPTIONS = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "max_tokens": st.integers(min_value=1, max_value=2**40),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0.001, max_value=1),
    "n": st.just(1),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=4),
    "user": st.text(max_size=20),
    "ignore_eos": st.booleans(),  # a vendor field, passed on untouched
}
MODEL = st.just("llama2-7b")
VALID_CHAT = st.fixed_dictionaries(
    {"model": MODEL, "messages": st.lists(MESSAGE, min_size=1, max_size=4)}, optional=OPTIONS
)
VALID_COMPLETION = st.fixed_dictionaries(
    {"model": MODEL, "prompt": TEXT | st.lists(st.text(max_size=50), min_size=1, max_size=3)}, optional=OPTIONS
)
FIELDS = st.sampled_from(["model", "messages", "prompt", *OPTIONS]) | st.text(max_size=8)


def mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid body with one field set to anything (or removed), or nested anything inside a message."""
    return st.builds(lambda body, field, value: {**body, field: value}, valid, FIELDS, ANY | st.floats()) | st.builds(
        lambda body, field: {k: v for k, v in body.items() if k != field}, valid, FIELDS
    )


def encoded(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


RAW = st.binary(max_size=300) | st.builds(encoded, JSON)
CHAT = VALID_CHAT | mutated(VALID_CHAT) | RAW
COMPLETION = VALID_COMPLETION | mutated(VALID_COMPLETION) | RAW
HEADER_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=255, exclude_categories=["Cc", "Zs"]), max_size=20)
HEADERS = st.just({}) | st.fixed_dictionaries(
    {},
    optional={
        "x-slo-tpot-ms": st.sampled_from(["40", "120.5", "0", "-3", "1e308", "nan", "inf"]) | HEADER_TEXT,
        "x-slo-ttft-ms": st.sampled_from(["500", "1e-9"]) | HEADER_TEXT,
        "x-request-id": HEADER_TEXT,
        "x-ricardo-hops": st.sampled_from(["0", "1", "2", "3", "-1", "99999999999", "1" * 5000]) | HEADER_TEXT,
    },
)


def post(session: requests.Session, cluster: Cluster, path: str, data: bytes, headers: dict) -> int:
    headers = {"Content-Type": "application/json", "x-emulator-output-tokens": "2", **headers}
    response = session.post(cluster.url + path, data=data, headers=headers, timeout=30)
    statuses[path][response.status_code] += 1
    hops = headers.get("x-ricardo-hops", "0")
    looped = hops.isdigit() and int(hops[:12]) > MAX_HOPS  # the 508 the hop header asks for
    assert response.status_code < 500 or (response.status_code == 508 and looped), (
        response.status_code,
        response.text[:500],
        data[:300],
    )
    return response.status_code


@FUZZ
@given(body=CHAT, headers=HEADERS)
def test_chat_bodies_never_cause_a_5xx(cluster, session, body, headers):
    post(session, cluster, "/v1/chat/completions", body if isinstance(body, bytes) else encoded(body), headers)


@FUZZ
@given(body=COMPLETION, headers=HEADERS)
def test_completion_bodies_never_cause_a_5xx(cluster, session, body, headers):
    post(session, cluster, "/v1/completions", body if isinstance(body, bytes) else encoded(body), headers)


# -- the admin API, from its OpenAPI document ---------------------------------------------------------------
URL_FIELDS = {"url", "backends", "draining", "webhook_url"}
AS_URL = TypeAdapter(HttpUrl)
CLOSED_PORT = free_port()  # nothing listens there, on any 127.x address


def confined(value: object, field: str = "") -> object:
    """The body with every URL the gateway would call moved to a closed port on loopback: generated backends are
    probed, and this machine sends test traffic to loopback only. Strings that are not URLs stay as generated."""
    if isinstance(value, dict):
        return {k: confined(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [confined(v, field) for v in value]
    if isinstance(value, str) and field in URL_FIELDS:
        try:
            AS_URL.validate_python(value)
        except ValidationError:
            return value
        return f"http://127.0.0.{1 + zlib.crc32(value.encode()) % 250}:{CLOSED_PORT}"
    return value


schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE], max_examples=ADMIN_EXAMPLES
)


def test_the_served_document_is_the_one_fuzzed(cluster):
    with urllib.request.urlopen(cluster.url + "/admin/openapi.json", timeout=5) as response:
        assert json.loads(response.read()) == json.loads(json.dumps(openapi_document()))


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_admin_api_never_answers_5xx(cluster, session, case):
    case.body = confined(case.body)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if case.body is not None or case.method.upper() in ("POST", "PUT"):  # a DELETE without a body needs none
        headers["Content-Type"] = "application/json"
    response = case.call(base_url=cluster.url, session=session, headers=headers, timeout=30)
    statuses[f"admin {case.method.upper()} {case.operation.path}"][response.status_code] += 1
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
