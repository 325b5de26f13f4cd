"""What the output-length model knows about a request: its body, never its headers.

`features_from_body(body, input_tokens)` reads an OpenAI chat or completions body. The prompt text is cut to its
first 400 and last 100 characters (the instruction is usually at one end; the cut bounds the cost of a huge prompt:
halving the window from 800 + 200, with `dense` counting bytes by `bytes.translate` instead of numpy, cut the
prediction's p50 time to 0.66-0.86 of what it was on ShareGPT and 0.77-0.83 on GSM8K, in passes interleaved in one
process, at the same cross-validated MAE: 50.04 against 50.05 tokens on the ShareGPT training half, 23.93 against
23.89 on GSM8K's) and described two ways:

- `term_keys`: the text's llama3 BPE tokens (lower-cased) as a bag of unigrams and bigrams, plus markers for the
  first and last tokens. Keys are integers in disjoint ranges, so a fitted model maps them to columns with array
  lookups (`model.TermIndex`), without Python loops. The model name is a key of its own (`model_key`).
- `dense`: a short vector of numbers (input length, digits, lines, code, questions, sampling parameters ...), see
  `DENSE_NAMES`, and a few marks of who wrote the last message. Much chat traffic (and the ShareGPT replay) sends a
  text written by an assistant ("Sure, here is ...": the next turn is usually short) as often as one written by a
  person asking for something ("write me ...", often lower-case: the answer is usually long). Five cheap marks
  (an assistant-style opener, a request-style opener, a lower-case start, the rate of "you", markdown emphasis and
  headings) took the MAE on the ShareGPT training half from 51.6 to 50.3 tokens in grouped 5-fold cross-validation
  (3 repeats, with the folds and model of that time); on the held-out half, scored once afterwards, from 53.2 to 52.8.

Both are pure functions of the features, which stay small (at most ~500 characters of text) so outcomes can be
buffered for retraining and shipped to a worker process.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import quicktok

from ricardo.predictor.tokens import encodable, prompt_texts

if TYPE_CHECKING:
    from ricardo.predictor.online import Prediction

FEATURE_VERSION = 3
HEAD_CHARS = 400
TAIL_CHARS = 100
MAX_CAP = 1 << 40  # a larger max_tokens caps nothing and would overflow a float
EDGE_TOKENS = 16  # how many first / last tokens get their own "at the start / at the end" keys
TOKENIZER = "llama3"
VOCAB = 1 << 17  # > llama3's 128,256 token ids
BIGRAM_BASE = VOCAB
HEAD_BASE = 1 << 40
TAIL_BASE = HEAD_BASE + VOCAB

LIST_ITEM = re.compile(r"\n\s*(?:\d+[.)]|[-*\u2022])\s")  # a literal first character keeps the scan fast
CODE_BYTES = b"{}();=<>[]"
# digits -> "d", code punctuation -> tab, the rest -> space: the digit runs are then the words of `bytes.split()`, one
# C pass (counting ".d" and "cd" pairs, which must step through every byte of a text of mostly ".", took 8x as long)
BYTE_CLASS = bytes(ord("d") if 48 <= b < 58 else ord("\t") if b in CODE_BYTES else ord(" ") for b in range(256))
# byte values (unpacking bytes gives ints): `int in bytes` is a memchr, while `bytes in bytes` first tries its
# argument as an integer and formats the TypeError it then catches (7x the time)
EXCLAMATION, BACKTICK, ASTERISK, HASH = b"!`*#"
OPENER_CHARS = 40  # how much of the last message the opener patterns look at
# anchored at the start of the last message (a `match` of a few dozen characters costs ~1 µs)
ASSISTANT_OPENER = re.compile(
    r"(?:sure|certainly|of course|absolutely|great|yes|no problem|here(?:'s| is| are)|i apologi[sz]e|i'm sorry|sorry|"
    r"thank you|thanks|you're (?:right|correct|welcome)|you are (?:right|correct)|as an ai|in summary|based on|"
    r"it seems|it is|it's|this|that|there (?:is|are)|the)\b",
    re.IGNORECASE,
)
REQUEST_OPENER = re.compile(
    r"(?:write|create|generate|make|give|list|explain|describe|tell|help|rewrite|summari[sz]e|continue|provide|"
    r"translate|fix|improve|suggest|draft|compose|design|build|implement|can|could|would|please|i want|i need|"
    r"i'd like|act|pretend|how|what|why|imagine|let's|you are|you will)\b",
    re.IGNORECASE,
)

DENSE_NAMES = (
    "log_input_tokens",
    "input_tokens_k",
    "log_chars",
    "numbers_10",
    "log_numbers",
    "log_digits",
    "log_sentences",
    "log_lines",
    "log_questions",
    "ends_with_question",
    "log_list_items",
    "log_code_fences",
    "multibyte_share",
    "code_char_share",
    "log_messages",
    "has_system",
    "has_max_tokens",
    "log_max_tokens",
    "temperature",
    "top_p",
    "has_stop",
    "json_mode",
    "has_tools",
    "is_chat",
    "log_last_message_chars",
    "assistant_opener",
    "request_opener",
    "lowercase_start",
    "you_per_10_words",
    "log_markdown_marks",
)


@dataclass(slots=True)
class RequestFeatures:
    text: str  # head and tail of the prompt text (all messages joined)
    input_tokens: int
    chars: int  # length of the whole prompt text
    last_message_chars: int
    last_message_head: str  # its first OPENER_CHARS characters, leading blanks stripped
    messages: int  # 0 for a completions prompt
    has_system: bool
    max_tokens: int | None
    model: str
    temperature: float
    top_p: float
    has_stop: bool
    json_mode: bool
    has_tools: bool
    is_chat: bool
    # known by its lengths only (`features_from_lengths`): no text for the text model to read
    lengths_only: bool = False
    # set by OutputLengthPredictor.predict, so that observe() scores the prediction the router actually used ...
    prediction: Prediction | None = None
    # ... and learns the text model's bias from the text model's own prediction: (model generation, log p50, log p90)
    base: tuple[int, float, float] | None = None

    def tokens(self) -> np.ndarray:
        """The lower-cased text's llama3 token ids."""
        ids = _tokenizer().encode_ordinary(encodable(self.text.lower()))
        # fromiter with the count: np.array would first discover the list's type and shape, element by element
        return np.fromiter(ids, np.int64, len(ids))

    def term_keys(self) -> np.ndarray:
        """The prompt's term keys, one per occurrence: unigrams, bigrams, first and last tokens."""
        tokens = self.tokens()
        return np.concatenate(
            [
                tokens,
                BIGRAM_BASE + tokens[:-1] * VOCAB + tokens[1:],
                HEAD_BASE + tokens[:EDGE_TOKENS],
                TAIL_BASE + tokens[-EDGE_TOKENS:],
            ]
        )

    def model_key(self) -> int:
        return zlib.crc32(self.model.encode("utf-8", "surrogatepass"))

    def to_record(self) -> list[Any]:
        """The fields as plain JSON values (the prediction left out): how outcomes travel between replicas,
        as JSON rather than pickle, so reading another replica's outcomes can never run code."""
        return [getattr(self, name) for name in RECORD_FIELDS]

    @classmethod
    def from_record(cls, record: object) -> RequestFeatures:
        """The features of `to_record`; ValueError unless every field has its type, finite and not negative (one
        bad record from another replica would otherwise fail every refit that it is part of)."""
        if not isinstance(record, list) or len(record) != len(RECORD_FIELDS):
            raise ValueError(f"a features record is a list of {len(RECORD_FIELDS)} fields, not {record!r:.80}")
        for name, value in zip(RECORD_FIELDS, record, strict=True):
            if not isinstance(value, RECORD_TYPES[name]) or (
                isinstance(value, (int, float)) and not 0 <= value < MAX_RECORD_NUMBER
            ):  # NaN fails too
                raise ValueError(f"a features record's {name} is {value!r:.80}")
        return cls(*record)

    def dense(self) -> list[float]:
        """The numbers named by DENSE_NAMES (C-level str/bytes methods and three regexes: ~10 µs per 500 characters)."""
        text, opening = self.text, self.last_message_head
        # ASCII patterns are counted in the UTF-8 bytes, which is exact (no multi-byte sequence holds an ASCII byte)
        # and twice as fast as str.count on text that is not all ASCII
        utf8 = text.encode("utf-8", "surrogatepass")
        count = utf8.count
        classes = utf8.translate(BYTE_CLASS)
        digits = classes.count(b"d")
        numbers = len(classes.split())  # runs of digits
        # a pattern is counted only where its first byte occurs (`in` is a memchr): a count of two bytes walks the
        # text, ~0.5 µs, and most prompts have no "?", "!", "`", "*" or "#"; a list item starts with a newline
        questions = count(b"?")
        lines = count(b"\n")
        size = max(1, len(text))
        log1p = math.log1p
        return [
            log1p(self.input_tokens),
            self.input_tokens / 1000,
            log1p(self.chars),
            numbers / 10,
            log1p(numbers),
            log1p(digits),
            log1p(
                count(b". ")
                + (count(b"? ") if questions else 0)
                + (count(b"! ") if EXCLAMATION in utf8 else 0)
                + count(b".\n")
            ),
            log1p(lines),
            log1p(questions),
            float(text.rstrip().endswith("?")),
            log1p(len(LIST_ITEM.findall(text)) if lines else 0),
            log1p(count(b"```") if BACKTICK in utf8 else 0),
            (len(utf8) - len(text)) / size,
            classes.count(b"\t") / size,
            log1p(self.messages),
            float(self.has_system),
            float(self.max_tokens is not None),
            log1p(self.max_tokens or 0),
            self.temperature,
            self.top_p,
            float(self.has_stop),
            float(self.json_mode),
            float(self.has_tools),
            float(self.is_chat),
            log1p(self.last_message_chars),
            float(ASSISTANT_OPENER.match(opening) is not None),
            float(REQUEST_OPENER.match(opening) is not None),
            float(opening[:1].islower()),
            10 * utf8.lower().count(b" you") / (count(b" ") + 1),  # you, your, you're: replies talk to the reader
            log1p((count(b"**") if ASTERISK in utf8 else 0) + (count(b"\n#") if lines and HASH in utf8 else 0)),
        ]


# what travels between replicas for refits: the request, not what this replica predicted for it
RECORD_FIELDS = tuple(name for name in RequestFeatures.__slots__ if name not in ("lengths_only", "prediction", "base"))
MAX_RECORD_NUMBER = 1 << 53
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "int | None": (int, type(None)),
}
# field.type is the annotation's text (postponed evaluation)
RECORD_TYPES = {
    field.name: _JSON_TYPES[str(field.type)] for field in fields(RequestFeatures) if field.name in RECORD_FIELDS
}


def features_from_body(body: dict[str, Any], input_tokens: int) -> RequestFeatures:
    """Features of an OpenAI chat (`messages`) or completions (`prompt`) request body."""
    messages = body.get("messages")
    is_chat = isinstance(messages, list)
    texts = prompt_texts(body)
    has_system = False
    # loops rather than any() over a generator or a list of the caps: each costs more to set up than its loop to run
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                has_system = True
                break
    text = "\n".join(texts)
    max_tokens = None
    for cap in (body.get("max_tokens"), body.get("max_completion_tokens")):
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            max_tokens = cap if max_tokens is None else min(max_tokens, cap)
    response_format = body.get("response_format")
    return RequestFeatures(
        text=head_and_tail(text),
        input_tokens=int(input_tokens),
        chars=len(text),
        last_message_chars=len(texts[-1]) if texts else 0,
        last_message_head=texts[-1].lstrip()[:OPENER_CHARS] if texts else "",
        messages=len(messages) if isinstance(messages, list) else 0,
        has_system=has_system,
        max_tokens=None if max_tokens is None else min(max_tokens, MAX_CAP),
        model=str(body.get("model") or ""),
        temperature=_number(body.get("temperature"), 1.0),
        top_p=_number(body.get("top_p"), 1.0),
        has_stop=bool(body.get("stop")),
        json_mode=isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"),
        has_tools=bool(body.get("tools") or body.get("functions")),
        is_chat=is_chat,
    )


def features_from_lengths(input_tokens: int, model: str = "", max_tokens: int | None = None) -> RequestFeatures:
    """Features of a request known only by what a gateway knows without its text (a trace of lengths): the model
    predicts from its running statistics of outcomes, not from the text model (see `online.py`)."""
    cap = max_tokens if max_tokens is not None and max_tokens > 0 else None
    return RequestFeatures(
        text="",
        input_tokens=int(input_tokens),
        chars=0,
        last_message_chars=0,
        last_message_head="",
        messages=0,
        has_system=False,
        max_tokens=None if cap is None else min(int(cap), MAX_CAP),
        model=model,
        temperature=1.0,
        top_p=1.0,
        has_stop=False,
        json_mode=False,
        has_tools=False,
        is_chat=False,
        lengths_only=True,
    )


def head_and_tail(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def _number(value: object, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


@functools.cache  # quicktok caches the loaded encoding too, behind a lookup that costs 4x this one
def _tokenizer() -> quicktok.Tokenizer:
    return quicktok.get_encoding(TOKENIZER)
