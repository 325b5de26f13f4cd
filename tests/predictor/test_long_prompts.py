"""The shipped cold-start model on prompts longer than any it was trained on (its reservoir's longest is 2,412
tokens; Llama-3.1-8B, a shipped book, takes 128k): `input_tokens_k` enters the ridge linearly with a negative
weight, so the prediction falls without bound as the prompt grows, to p50 = p90 = 1 token past ~3,600 tokens for a
request that asks for a detailed summary. The router then charges such a request the decode load of one token
(its capacity share is taken at the p90), until the running statistics of the model have learnt otherwise."""

import pytest
from ricardo.predictor.features import features_from_body
from ricardo.predictor.model import OutputLengthPredictor
from ricardo.predictor.tokens import InputTokenCounter

PARAGRAPH = (
    "The committee reviewed the quarterly results and noted that revenue grew in most regions, while costs rose "
    "faster than expected in logistics. "
)


@pytest.fixture(scope="module")
def predictor() -> OutputLengthPredictor:
    return OutputLengthPredictor.load_default()


@pytest.mark.parametrize("paragraphs", [150, 400, 800])  # about 3,600, 9,600 and 19,000 prompt tokens
def test_a_long_document_to_summarise_is_not_predicted_a_one_token_answer(predictor, paragraphs):
    body = {
        "model": "llama3.1-8b",
        "messages": [
            {"role": "user", "content": "Summarize the following report in detail:\n\n" + PARAGRAPH * paragraphs}
        ],
    }
    tokens = InputTokenCounter("llama3").count_body(body)
    short = predictor.predict(
        features_from_body(
            {**body, "messages": [{"role": "user", "content": body["messages"][0]["content"][:2000]}]}, 440
        )
    )
    long = predictor.predict(features_from_body(body, tokens))
    # the same request on a shorter document is predicted tens of tokens; the longer one must not fall to nothing
    assert short.p50 >= 20
    assert long.p90 >= 10, (tokens, long)
