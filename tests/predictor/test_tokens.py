import math

import pytest
import quicktok
from ricardo.predictor.tokens import InputTokenCounter

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "How many legs do three spiders and two cats have in total?"},
    {"role": "assistant", "content": "32."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Explain "},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "step by step."},
        ],
    },
]


def test_llama3_counts_match_the_rendered_chat_template():
    tokenizer = quicktok.get_encoding("llama3")
    rendered = "<|begin_of_text|>"
    for message in MESSAGES:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part["text"] for part in content if part["type"] == "text")
        rendered += f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n{content}<|eot_id|>"
    rendered += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert InputTokenCounter("llama3").count_messages(MESSAGES) == len(tokenizer.encode_with_special(rendered))


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_openai_encodings_follow_the_published_per_message_rule(encoding):
    tokenizer = quicktok.get_encoding(encoding)
    texts = [
        "You are a terse assistant.",
        "How many legs do three spiders and two cats have in total?",
        "32.",
        "Explain step by step.",
    ]
    expected = 3 + sum(
        3 + tokenizer.count(m["role"]) + tokenizer.count(t) for m, t in zip(MESSAGES, texts, strict=True)
    )
    assert InputTokenCounter(encoding).count_messages(MESSAGES) == expected


def test_prompt_and_body_counts_are_exact():
    tokenizer = quicktok.get_encoding("cl100k_base")
    counter = InputTokenCounter("cl100k_base")
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert counter.count_prompt(text) == tokenizer.count(text)
    assert counter.count_body({"prompt": [text, text]}) == tokenizer.count(text + "\n" + text)
    assert counter.count_body({"messages": MESSAGES}) == counter.count_messages(MESSAGES)
    assert InputTokenCounter("llama3").count_prompt(text) == quicktok.get_encoding("llama3").count(text) + 1


def test_exact_mode_ignores_backend_reports():
    counter = InputTokenCounter("llama3")
    before = counter.count_prompt("hello world")
    counter.observe(before, before * 3)
    assert counter.count_prompt("hello world") == before


def test_estimate_converges_toward_reported_counts():
    exact = InputTokenCounter("llama3")
    estimate = InputTokenCounter(None)
    prompts = [
        f"Request {i}: summarise the attached report about quarterly sales in region {i % 7}. " * (1 + i % 5)
        for i in range(300)
    ]

    def relative_error(prompt: str) -> float:
        return abs(estimate.count_prompt(prompt) - exact.count_prompt(prompt)) / exact.count_prompt(prompt)

    error_before = sum(map(relative_error, prompts[-50:])) / 50
    for prompt in prompts[:250]:
        estimate.observe(estimate.count_prompt(prompt), exact.count_prompt(prompt))
    error_after = sum(map(relative_error, prompts[-50:])) / 50
    assert error_after < 0.05 < error_before


def test_one_absurd_report_barely_moves_a_warm_estimate():
    counter = InputTokenCounter(None)
    text = "x" * 400  # estimated at 100 tokens before any correction
    for _ in range(100):
        counter.observe(counter.count_prompt(text), 80)
    assert counter.ratio() == pytest.approx(0.8, rel=0.01)
    warm = counter.ratio()
    counter.observe(counter.count_prompt(text), 100_000)
    assert 1 < counter.ratio() / warm <= math.exp(0.05 * math.log(2)) + 1e-9


def test_ratios_are_kept_per_model():
    counter = InputTokenCounter(None)
    text = "x" * 400
    for _ in range(100):
        counter.observe(counter.count_prompt(text, model="a"), 200, model="a")
    assert counter.ratio("a") == pytest.approx(2.0, rel=0.01)
    assert counter.ratio("b") == 1.0
    assert counter.count_prompt(text, model="a") == pytest.approx(2 * counter.count_prompt(text, model="b"), abs=2)


@pytest.mark.parametrize("text", ["", "a", "plain ASCII text " * 50, "caf\u00e9 \U0001f600", "lone \ud800 surrogate"])
def test_an_estimate_counts_four_utf8_bytes_a_token(text):
    """ASCII text is measured by its length, the rest by its UTF-8 encoding (lone surrogates replaced): the same
    size either way."""
    messages = [{"role": "user", "content": text}]
    size = len(text.encode("utf-8", "replace")) + len("user")
    assert InputTokenCounter(None).count_messages(messages) == max(1, round(size / 4 + 6))
    assert InputTokenCounter(None).count_prompt(text) == max(1, round(len(text.encode("utf-8", "replace")) / 4))
