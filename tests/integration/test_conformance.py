"""Conformance with OpenAI's published API description: schemathesis generates requests for `/chat/completions`,
`/completions`, `/models` and `/embeddings` from it and sends them through a real gateway to emulated pools.

No request may cause a server error, and no answer may break the schema the description gives it. The model is
fixed to one the gateway serves (any other is a 404, which says nothing about the answers). Bounded: a few dozen
cases per operation and mode, fixed seeds, so a run takes well under a minute and a failure reproduces.

The description is a cut of ../shared/data/openai-openapi (scripts/openapi_subset.py), copied with its licence.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.harness import Cluster

SPEC = Path(__file__).resolve().parents[1] / "data" / "openai-openapi" / "openapi.json"
MODEL, EMBEDDER = "llama2-7b", "embed-small"
EXAMPLES = 25  # per operation and generation mode

statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        {"a100": ("A100-80GB", 1), "embed": ("L4", 1)},
        tmp_path_factory.mktemp("conformance"),
        speed=100.0,
        models=[MODEL, EMBEDDER],
        embedding_models={EMBEDDER: 0.02},
        pool_settings={"a100": {"models": [MODEL]}, "embed": {"models": [EMBEDDER]}},
    ).start()
    yield cluster
    cluster.stop()
    print(f"\nconformance: {sum(sum(c.values()) for c in statuses.values())} cases")
    for what, counter in sorted(statuses.items()):
        print(f"  {what}: statuses {dict(sorted(counter.items()))}")
    assert "Traceback" not in cluster.logs()
    if any(what.startswith("POST /chat/completions") for what in statuses):  # not deselected (`-k`)
        assert statuses["POST /chat/completions (streamed)"][200], "no streamed chat answer was checked"


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


schema = schemathesis.openapi.from_dict(json.loads(SPEC.read_text()))
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE], max_examples=EXAMPLES
)
# schemathesis stops reading an event stream after 20 events by default (it may never end): a chat stream with `n`
# choices runs to about n x (tokens + 1) events, and a stream read in part would look incomplete. Read them whole.
MAX_STREAM_EVENTS = 10_000
schema.config.max_stream_events = MAX_STREAM_EVENTS


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_answers_conform_to_openais_description(cluster, session, case):
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = EMBEDDER if case.operation.path == "/embeddings" else MODEL
        if case.body.get("max_tokens") == 0:  # valid in the description, refused by vLLM and the gateway: an
            case.body["max_tokens"] = 1  # answer is worth checking, a 400 is not
        if case.body.get("stream") in (None, False) and len(repr(case.body)) % 2:  # the generated cases rarely
            case.body["stream"] = True  # ask for a stream: about half of those that do not are, so streams are checked
    # short answers keep a case fast; the emulator reads this header, the gateway passes it on unread
    headers = {"x-emulator-output-tokens": "3"}
    response = case.call(base_url=cluster.url, session=session, headers=headers, timeout=60)
    statuses[f"{case.method.upper()} {case.operation.path}"][response.status_code] += 1
    if "text/event-stream" not in str(response.headers.get("content-type")):
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        return
    case.validate_response(response, checks=[not_a_server_error])
    statuses[f"{case.method.upper()} {case.operation.path} (streamed)"][response.status_code] += 1
    assert not response.stream_cut_short, f"schemathesis read only part of the stream ({MAX_STREAM_EVENTS} events)"
    check_events(case.operation.path, response.text)


# The description gives a stream's schema as the schema of each event's data (OpenAI's convention), which
# schemathesis applies to the event object itself ({"event", "data"}): streams are checked here instead.
def nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, which this 3.1 description still uses, as JSON Schema says it (as
    schemathesis reads it)."""
    if isinstance(node, list):
        return [nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    converted = {k: nullable(v) for k, v in node.items() if k != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") is True else converted


CHUNK = jsonschema_rs.validator_for(
    {
        "$ref": "#/components/schemas/CreateChatCompletionStreamResponse",
        "components": nullable(json.loads(SPEC.read_text())["components"]),
    }
)


def check_events(path: str, text: str) -> None:
    """A complete stream, without error events; each chat chunk valid. `usage: null` is allowed in a chunk: the
    description says chunks carry it (all but the last) while its schema has no null. The description gives no
    schema for a completions stream."""
    events = [e.strip() for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events and events[-1] == "data: [DONE]", events[-3:]
    for event in events[:-1]:
        assert event.startswith("data: "), event[:200]
        chunk = json.loads(event[len("data: ") :])
        assert "error" not in chunk, chunk
        if path == "/chat/completions":
            if "usage" in chunk and chunk["usage"] is None:
                del chunk["usage"]
            errors = [e.message for e in CHUNK.iter_errors(chunk)]
            assert not errors, (errors[:3], chunk)
