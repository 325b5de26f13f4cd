"""Turn a request into a `RequestShape`: input tokens counted, output tokens predicted, SLO resolved.

The predictor sees the request body and nothing else. In particular it never sees headers: a load
generator may tell an emulated backend the true answer length in a header, and the gateway passes
that header on without reading it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from aiohttp import web

from ricardo.gateway.metrics import GatewayMetrics
from ricardo.policies.types import SLO, RequestShape
from ricardo.predictor.features import MAX_CAP, RequestFeatures, features_from_body
from ricardo.predictor.model import OutputLengthPredictor
from ricardo.predictor.tokens import InputTokenCounter
from ricardo.protocol.openai import CompletionRequest, Endpoint, OpenAIError, ParsedRequest

ESTIMATE_MARGIN = 1.25  # an estimated input count can be this far off before a request is refused on it
SLO_HEADERS = {"ttft_ms": "x-slo-ttft-ms", "tpot_ms": "x-slo-tpot-ms"}
PRIORITY_HEADER = "x-priority"
MIN_PRIORITY = -5
# where a layer in front of the proxy (client API keys) puts the priority it grants a request: its default priority
# and the most `x-priority` may claim (without a grant: 0, and `max_header_priority`)
PRIORITY_GRANT = web.RequestKey("ricardo.priority", int)


class Shaped(NamedTuple):
    """A request's shape, its features, and what sizing it took: `longest_input` is its longest prompt (each prompt of
    a list is a sequence of its own, which must fit the context alone), `sequences` how many answers the backend
    generates (`n` per prompt)."""

    shape: RequestShape
    features: RequestFeatures
    longest_input: int
    sequences: int


class Shaper:
    def __init__(
        self,
        default_slo: SLO,
        encoding: str | None = None,
        predictor: OutputLengthPredictor | None = None,
        max_header_priority: int = 0,
    ):
        self.default_slo = default_slo
        self.max_header_priority = max_header_priority
        self.counter = InputTokenCounter(encoding)
        self.predictor = predictor or OutputLengthPredictor.load_default()
        # the first prediction loads the features' tokenizer (~0.3 s): here, not on the event loop's first request
        self.predictor.predict(features_from_body({"prompt": "warm up"}, 2))
        # called with (features, completion tokens) of every outcome, after the predictor has buffered it
        self.outcome_hooks: list[Callable[[RequestFeatures, int], None]] = []
        # called with (model, prompt tokens, completion tokens) of every outcome, on a pair or a unified pool: the
        # scaling hints' traffic (gateway/scaling_loop.py)
        self.usage_hooks: list[Callable[[str, int, int], None]] = []

    def shape(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        request: ParsedRequest,
        headers: Mapping[str, str],
        granted: int | None = None,
    ) -> Shaped:
        """`granted`: the priority a layer in front granted (an API key's; see `_priority`).

        A request for several answers (`n`, or a list of prompts) is shaped as the total work the backend does: its
        input tokens summed over prompts (as backends report them), its output predicted per answer and multiplied
        by the number of answers. The features describe one answer of the average prompt, so that the predictor
        learns per answer (`observe` with `sequences`)."""
        if endpoint == "chat" or not isinstance(request, CompletionRequest):  # one prompt: most requests
            input_tokens = longest = self.counter.count_messages(body["messages"])
            per_prompt = input_tokens
        else:
            sizes = self._prompt_sizes(request)
            input_tokens, longest = sum(sizes), max(sizes)
            per_prompt = round(input_tokens / len(sizes))
        sequences = request.sequences
        features = features_from_body(body, per_prompt)
        cap = request.output_cap  # a property that builds a list: read once
        # the validated cap: the body may spell it "3" or 3.0, which pydantic accepts and the features do not
        features.max_tokens = None if cap is None else min(cap, MAX_CAP)
        prediction = self.predictor.predict(features)
        shape = RequestShape(
            model=request.model,
            input_tokens=input_tokens,
            output_p50=prediction.p50 * sequences,
            output_p90=prediction.p90 * sequences,
            slo=self._slo(headers),
            max_tokens=cap,
            stream=request.stream,
            priority=self._priority(headers, granted),
        )
        return Shaped(shape, features, longest, sequences)

    def _prompt_sizes(self, request: CompletionRequest) -> list[int]:
        """Input tokens of each prompt of a completions request: of each text, or list of token ids (its own count,
        exact whatever the tokenizer). A chat's messages are one prompt (`shape`)."""
        return [self.counter.count_prompt(p) if isinstance(p, str) else len(p) for p in request.prompts]

    def check_context(self, shape: RequestShape, context_tokens: int | None, longest_input: int | None = None) -> None:
        """Refuse, before routing, a request that no pool's model can hold: its (longest) prompt and the answer it
        asks for (max_tokens, else 1) beyond the model's context window (OpenAI's 400 `context_length_exceeded`). An
        estimated count (no tokenizer configured) is refused only past ESTIMATE_MARGIN x the window: the backend
        still refuses what it cannot hold, and a request it could hold must not be turned away on a guess."""
        if context_tokens is None:
            return
        prompt = shape.input_tokens if longest_input is None else longest_input
        asked = prompt + (shape.max_tokens or 1)
        if asked <= context_tokens * (1.0 if self.counter.exact else ESTIMATE_MARGIN):
            return
        about = "" if self.counter.exact else "about "
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context_tokens} tokens. However, you requested {about}"
            f"{asked} tokens ({about}{prompt} in the messages, {shape.max_tokens or 1} in the completion). "
            "Please reduce the length of the messages or completion.",
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        )

    def _priority(self, headers: Mapping[str, str], granted: int | None) -> int:
        """`x-priority`: an integer; anyone may lower their own priority, but claim at most what was granted (an
        API key's priority, which is also the default), or without a grant `max_header_priority` (an
        unauthenticated header must not let a client jump every queue)."""
        default, ceiling = (0, self.max_header_priority) if granted is None else (granted, granted)
        raw = headers.get(PRIORITY_HEADER)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise OpenAIError(400, f"header {PRIORITY_HEADER} must be an integer", param=PRIORITY_HEADER) from None
        return max(MIN_PRIORITY, min(ceiling, value))

    def _slo(self, headers: Mapping[str, str]) -> SLO:
        if SLO_HEADERS["ttft_ms"] not in headers and SLO_HEADERS["tpot_ms"] not in headers:
            return self.default_slo  # most requests: immutable, shared
        values = {}
        for field, header in SLO_HEADERS.items():
            raw = headers.get(header)
            if raw is None:
                values[field] = getattr(self.default_slo, field)
                continue
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not (value > 0 and math.isfinite(value)):  # "inf" parses; no latency is infinitely long
                raise OpenAIError(400, f"header {header} must be a positive number of milliseconds", param=header)
            values[field] = value
        return SLO(**values)

    def observe(
        self,
        shape: RequestShape,
        features: RequestFeatures,
        prompt_tokens: int,
        completion_tokens: int,
        metrics: GatewayMetrics,
        sequences: int = 1,
    ) -> None:
        """Learn from what the backend reported: the true input count and the true output length (per answer, of
        a request for `sequences` answers)."""
        self.counter.observe(shape.input_tokens, prompt_tokens)
        per_answer = math.ceil(completion_tokens / sequences)
        self.predictor.observe(features, per_answer)
        for hook in self.outcome_hooks:
            hook(features, per_answer)
        for usage_hook in self.usage_hooks:
            usage_hook(shape.model, prompt_tokens, completion_tokens)
        metrics.outcomes.inc()
        metrics.predicted_output.observe(shape.output_p50)
        metrics.prediction_error.observe(abs(completion_tokens - shape.output_p50))
        if completion_tokens <= shape.output_p90:
            metrics.prediction_under_p90.inc()
