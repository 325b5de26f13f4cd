"""What the simulator's router is told about each request's answer: the gateway's prediction, or the truth.

`PredictedSizes` (the default) is the gateway's own predictor (`ricardo.predictor`): the text model and its
per-model running statistics, asked at arrival and taught each answer's length when the request finishes in
virtual time, never before. A trace of lengths only (no prompt text) is predicted from what a gateway would know
without the text: the input tokens and the model (`features_from_lengths`). `OracleSizes` tells the router the
true length: an upper bound on what prediction can give, reported beside it.
"""

from __future__ import annotations

from typing import Any, Protocol

from ricardo.errors import InvalidInput
from ricardo.predictor.features import RequestFeatures, features_from_body, features_from_lengths
from ricardo.predictor.model import OutputLengthPredictor


class Sizes(Protocol):
    @property
    def name(self) -> str:
        """What the router is told, for reports."""
        ...

    def predict(self, input_tokens: int, output_tokens: int, prompt: str | None, model: str) -> tuple[int, int, Any]:
        """(p50, p90, a handle for `observe`) of a request arriving now."""
        ...

    def observe(self, handle: Any, output_tokens: int) -> None:
        """The request finished with this many output tokens."""
        ...


class OracleSizes:
    """The true output length, as p50 and p90 alike."""

    name = "oracle"

    def predict(self, input_tokens: int, output_tokens: int, prompt: str | None, model: str) -> tuple[int, int, Any]:
        return output_tokens, output_tokens, None

    def observe(self, handle: Any, output_tokens: int) -> None:
        pass


class PredictedSizes:
    """The gateway's predictor, learning online as requests finish (one fresh predictor per simulation)."""

    def __init__(self, predictor: OutputLengthPredictor | None = None):
        self.predictor = predictor or OutputLengthPredictor.load_default()
        self.text_seen = False

    @property
    def name(self) -> str:
        return "predicted (text)" if self.text_seen else "predicted (lengths only: input tokens and model)"

    def predict(
        self, input_tokens: int, output_tokens: int, prompt: str | None, model: str
    ) -> tuple[int, int, RequestFeatures]:
        if prompt is None:
            features = features_from_lengths(input_tokens, model)
        else:
            self.text_seen = True
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            features = features_from_body(body, input_tokens)
        prediction = self.predictor.predict(features)
        return prediction.p50, prediction.p90, features

    def observe(self, handle: RequestFeatures, output_tokens: int) -> None:
        self.predictor.observe(handle, output_tokens)


def sizes_named(name: str) -> Sizes:
    """`predicted` (a fresh predictor) or `oracle`."""
    if name == "predicted":
        return PredictedSizes()
    if name == "oracle":
        return OracleSizes()
    raise InvalidInput(f"unknown sizes {name!r}; known: predicted, oracle")
