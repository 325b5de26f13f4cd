"""The OpenAI wire format, shared by everything that speaks it (gateway, emulator, load generator).

Request bodies are validated just enough to route and account for them; every field we do not
interpret is kept and passed on untouched (`extra="allow"`), so vendor extensions (vLLM's
`ignore_eos`, `kv_transfer_params` ...) survive the trip.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator

from ricardo.errors import RicardoError


class OpenAIError(RicardoError):
    """An error that becomes `{"error": {...}}` with an HTTP status."""

    status: int

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_for_status(status: int, message: str, **kwargs: Any) -> OpenAIError:
    return OpenAIError(status, message, ERROR_TYPES.get(status, "api_error"), **kwargs)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


MAX_CHOICES = 128  # OpenAI's bound on `n`
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _prompt_form(value: Any) -> str | None:
    """Which of the prompt's forms `value` is meant to be, by its first element."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    return "texts" if isinstance(first, str) else "token_lists" if isinstance(first, list) else "tokens"


# a text (OpenAI's description allows an empty one: the backend decides), texts, token ids, or lists of token ids.
# Told apart by the first element (`_prompt_form`): tried in turn, each form that does not fit failed on every element
# of a list, a million errors for a body of a million small prompts (seconds of the event loop)
Prompt = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[list[str], Field(min_length=1), Tag("texts")]
    | Annotated[TokenIds, Tag("tokens")]
    | Annotated[list[TokenIds], Field(min_length=1), Tag("token_lists")],
    Discriminator(_prompt_form),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    # choices per prompt, passed through to the backend (vLLM, SGLang, llama.cpp honour it); OpenAI's bound
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)  # 0 is valid in OpenAI's description: the backend decides

    @field_validator("stream", "n", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: object, info: ValidationInfo) -> object:
        """OpenAI's description lets these be null, meaning the default."""
        return cls.model_fields[info.field_name].default if value is None and info.field_name else value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def output_cap(self) -> int | None:
        caps = [c for c in (self.max_tokens, self.max_completion_tokens) if c is not None]
        return min(caps) if caps else None

    def text(self) -> str:
        return "\n".join(message_text(m.content) for m in self.messages)

    @property
    def sequences(self) -> int:
        """How many answers the backend generates: `n`."""
        return self.n


class CompletionRequest(_Request):
    # a text, texts, token ids, or lists of token ids (OpenAI's and vLLM's four forms); each prompt of a list is a
    # request of its own for the backend, with `n` choices of its own
    prompt: Prompt

    @property
    def output_cap(self) -> int | None:
        return self.max_tokens

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per entry: a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [prompt]  # type: ignore[list-item]  # one prompt of token ids
        return list(prompt)  # type: ignore[arg-type]  # texts or lists of token ids

    @property
    def sequences(self) -> int:
        """How many answers the backend generates: `n` for each prompt."""
        return self.n * len(self.prompts)

    def text(self) -> str:
        """The prompts' text (token ids have none)."""
        return "\n".join(p for p in self.prompts if isinstance(p, str))


class EmbeddingRequest(BaseModel):
    """`/v1/embeddings`: validated enough to route and price it (by its input tokens); the rest passes through."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: Prompt

    @property
    def inputs(self) -> list[str | list[int]]:
        """The inputs, one per entry: a text or a list of token ids."""
        value = self.input
        if isinstance(value, str) or all(isinstance(v, int) for v in value):
            return [value]  # type: ignore[list-item]  # one text, or one input of token ids
        return list(value)  # type: ignore[arg-type]


def parse_embedding_request(raw: bytes) -> tuple[dict[str, Any], EmbeddingRequest]:
    """Decode and validate an embeddings body; raise a 400 OpenAIError that says what is wrong."""
    body = load_json(raw)
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    try:
        return body, EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"][:1] == ("input",):
            raise OpenAIError(400, f"input: {PROMPT_FORMS}", param="input") from None
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


PROMPT_FORMS = "must be a string, a non-empty list of strings, of token ids (integers >= 0) or of lists of token ids"

Endpoint = Literal["chat", "completions"]
ParsedRequest = ChatCompletionRequest | CompletionRequest
REQUEST_MODELS: dict[str, type[ParsedRequest]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text" and isinstance(part.get("text"), str))


# Deeper JSON is refused: Python's decoder and encoder recurse on the C stack, so a body nested ~1000 deep raises
# RecursionError somewhere between parsing and forwarding it. No OpenAI request nests near this (a structured
# output's JSON schema: two levels per object property).
MAX_JSON_DEPTH = 100


def load_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body; raise a 400 OpenAIError for bytes that are not JSON or nest deeper than `max_depth`."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        value = None
        too_deep = True
    else:  # each level needs a bracket: counting them (in C) spares the check for nearly every body
        too_deep = raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(raw, value, max_depth)
    if too_deep:
        raise OpenAIError(400, f"request body nests deeper than {max_depth} levels")
    return value


_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_INNERMOST = re.compile(rb"\[\]|\{\}")


def _deeper_than(raw: bytes, value: Any, limit: int) -> bool:
    """Whether `raw` (JSON that decoded to `value`) nests deeper than `limit`: its brackets outside strings, the
    innermost pairs removed once per level, in C (walking the decoded value in Python took 1.5 s of the event loop
    for a body of a million small lists). A body in UTF-16 or UTF-32, whose bytes are not characters, is walked."""
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return _walk_deeper_than(value, limit)
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def _walk_deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_request(endpoint: Endpoint, raw: bytes) -> tuple[dict[str, Any], ParsedRequest]:
    """Decode and validate a request body; raise a 400 OpenAIError that says what is wrong."""
    body = load_json(raw)
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    try:
        request = REQUEST_MODELS[endpoint].model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if endpoint == "completions" and first["loc"][:1] == ("prompt",):  # a union: say what it may be
            raise OpenAIError(400, f"prompt: {PROMPT_FORMS}", param="prompt") from None
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    return body, request


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# one encoder for compact JSON: json.dumps builds a new JSONEncoder on every call that passes it options
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact_json(payload: Any) -> str:
    """`payload` as JSON without spaces (as json.dumps(payload, separators=(",", ":")))."""
    return _COMPACT.encode(payload)


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else compact_json(payload)
    return f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
