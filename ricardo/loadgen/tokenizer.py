"""A model's own tokenizer, for prompts of an exact token length (`ricardo profile --tokenizer`).

The synthetic prompts of `prompts.py` are exact only in Llama-3/cl100k tokens; another model counts the same text
differently (Llama-2's SentencePiece, ...). With the model's tokenizer, `exact_prompt` cuts synthetic text
at a token boundary and checks that the cut text encodes to the wanted count.

Where a tokenizer comes from (the optional extra `ricardo[tokenizer]`: HF `tokenizers`, and `gguf` for GGUF files):
- a `tokenizer.json` file, or a directory holding one (a HF model directory);
- a `.gguf` file: the vocabulary and merges it carries, for byte-level BPE vocabularies (`tokenizer.ggml.model`
  gpt2: SmolLM2, Llama-3, Qwen2, GPT-2), whose pre-tokenizer (`tokenizer.ggml.pre`) is one of `PRE_TOKENIZERS`;
- a name on the Hugging Face hub (`tokenizers` fetches it, or reads its cache; not offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ricardo.errors import InvalidInput
from ricardo.loadgen.prompts import synthetic_prompt

# GPT-2's split, which tokenizers' ByteLevel applies itself; Llama-3's, which it does not know
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = ("gpt-2", "default", "smollm", "llama-bpe", "llama3", "qwen2")


@dataclass
class ModelTokenizer:
    """Encodes and decodes text as the model does, without the special tokens a server adds (BOS, templates)."""

    source: str
    backend: Any  # tokenizers.Tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=False))


def load_tokenizer(spec: str) -> ModelTokenizer:
    """The tokenizer `spec` names (see the module's doc); InvalidInput says why one cannot be had."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InvalidInput("--tokenizer needs the `tokenizers` package: pip install 'ricardo[tokenizer]'") from None
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix == ".gguf":
        return ModelTokenizer(str(path), _from_gguf(path))
    if path.suffix == ".json":
        if not path.exists():
            raise InvalidInput(f"--tokenizer: no such file {path}")
        return ModelTokenizer(str(path), Tokenizer.from_file(str(path)))
    try:
        return ModelTokenizer(spec, Tokenizer.from_pretrained(spec))
    except Exception as exc:  # the hub client raises its own kinds: offline, not found, refused
        raise InvalidInput(
            f"--tokenizer {spec!r}: not a tokenizer.json, a directory or a .gguf, and the hub "
            f"did not give it ({type(exc).__name__})"
        ) from None


def _from_gguf(path: Path) -> Any:
    """A byte-level BPE tokenizer from the vocabulary, merges and pre-tokenizer name a GGUF file carries."""
    try:
        from gguf import GGUFReader
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise InvalidInput("a .gguf --tokenizer needs the `gguf` package: pip install 'ricardo[tokenizer]'") from None
    if not path.exists():
        raise InvalidInput(f"--tokenizer: no such file {path}")
    fields = GGUFReader(str(path)).fields

    def field(name: str, default: Any = None) -> Any:
        return fields[name].contents() if name in fields else default

    kind, pre = field("tokenizer.ggml.model"), field("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in PRE_TOKENIZERS:
        raise InvalidInput(
            f"{path.name}: tokenizer {kind}/{pre} is not a byte-level BPE this reader knows "
            f"({', '.join(PRE_TOKENIZERS)})"
        )
    vocab = {token: index for index, token in enumerate(field("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    llama3 = pre in ("llama-bpe", "llama3", "qwen2")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=llama3))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
    steps: list[Any] = [byte_level]
    if llama3:
        steps.insert(0, pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"))
    elif pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def exact_prompt(tokenizer: ModelTokenizer, n_tokens: int, key: int | str, seed: int = 0) -> str:
    """Synthetic text (as `synthetic_prompt`'s) that `tokenizer` encodes to exactly `n_tokens` tokens."""
    if n_tokens <= 0:
        return ""
    words = n_tokens + 8
    while len(ids := tokenizer.encode(synthetic_prompt(words, key, seed))) < n_tokens:
        words *= 2  # a tokenizer that needs fewer tokens for these words than Llama-3
    want = n_tokens
    for _ in range(8):  # decoding a cut can re-encode differently at the cut; move the cut until it does not
        text = tokenizer.decode(ids[:want])
        got = len(tokenizer.encode(text))
        if got == n_tokens:
            return text
        want += n_tokens - got
    raise InvalidInput(f"{tokenizer.source}: no cut of the synthetic text encodes to {n_tokens} tokens")
