"""Structured output: an answer held to a shape (one of some choices, a regular expression, a JSON
schema, any JSON object, a Lark grammar) by llguidance, the grammar engine behind llama.cpp's,
vLLM's and SGLang's structured output.

The shape is compiled once per run into llguidance's grammar and checked against the tokenizer;
`GrammarConstraint`, a logits processor of the one decoding path, gives each row its own matcher,
lets it consume the row's new tokens, and leaves only the tokens the grammar allows (end-of-text
only where the grammar accepts). Every mode, batches and the server's scheduler run it unchanged.

llguidance is an extra (`pip install 'gencli[structured]'`); nothing here is imported unless a
run asks for a shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor

from gencli.errors import GencliError
from gencli.settings import DecodingOptions

# The settings that shape an answer; at most one may be set.
CONSTRAINT_KEYS = ("choice", "regex", "json_schema", "json_object", "grammar")


class ConstraintError(GencliError):
    """A shape that cannot constrain a run: `key` is the setting at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def constraint_kind(options: DecodingOptions) -> str | None:
    """Which setting shapes the answer, if any; ConstraintError when more than one does."""
    given = [key for key in CONSTRAINT_KEYS if getattr(options, key)]
    if len(given) > 1:
        raise ConstraintError(given[1], f"{' and '.join(given)} each shape the answer; give one of them")
    return given[0] if given else None


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise GencliError(
            "structured output (choice, regex, json_schema, json_object, grammar) needs its extra: "
            "pip install 'gencli[structured]'"
        ) from None
    return llguidance


def grammar_text(options: DecodingOptions) -> str | None:
    """llguidance's grammar for the run's shape, or None when nothing shapes it."""
    kind = constraint_kind(options)
    if kind is None:
        return None
    for holding_the_end in ("ignore_eos", "min_new_tokens"):  # the end the shape needs, held back
        if getattr(options, holding_the_end):
            raise ConstraintError(
                kind, f"{kind} ends the answer where its shape is complete: drop {holding_the_end}"
            )
    matcher = _llguidance().LLMatcher
    if kind == "choice":
        return matcher.grammar_from_lark("start: " + " | ".join(json.dumps(text) for text in options.choice))
    if kind == "regex":
        return matcher.grammar_from_regex(options.regex)
    if kind == "grammar":
        return matcher.grammar_from_lark(options.grammar)
    schema = options.json_schema if kind == "json_schema" else '{"type": "object"}'
    return matcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)


# JSON laid out as Python's json.dumps writes it, one way: with llguidance's default (any run of
# whitespace between tokens) a small model fills the answer with blank lines. A schema's own
# "x-guidance" settings still win.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# A tokenizer as llguidance reads it takes a second or two to build (its own copy, then the token
# tables its first mask builds): one per tokenizer (by its files, its size and end token), kept,
# and built before a run's clock starts.
_TOKENIZERS: dict[tuple[Any, ...], Any] = {}


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos_token_id: int | None) -> Any:
    key = (tokenizer.name_or_path, len(tokenizer), vocab_size, eos_token_id)
    if key not in _TOKENIZERS:
        from llguidance.hf import from_tokenizer

        reader = from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_id)
        first = _llguidance().LLMatcher(reader, _llguidance().LLMatcher.grammar_from_regex("a"))
        fill_mask(first, new_mask(1, reader.vocab_size), 0)
        _TOKENIZERS[key] = reader
    return _TOKENIZERS[key]


@dataclass(frozen=True)
class CompiledConstraint:
    """A run's shape, compiled and checked: which setting, llguidance's grammar and tokenizer."""

    kind: str
    grammar: str
    tokenizer: Any
    eos_token_id: int | None

    def processor(self, prompt_length: int) -> GrammarConstraint:
        """A fresh processor for one run (it keeps each row's matcher)."""
        return GrammarConstraint(self.grammar, self.tokenizer, prompt_length, self.eos_token_id)


def compile_constraint(
    options: DecodingOptions, tokenizer: Any, vocab_size: int, eos_token_id: int | None
) -> CompiledConstraint | None:
    """The run's shape, compiled and checked; None when nothing shapes it. ConstraintError, naming
    the setting, for a shape llguidance cannot compile (an invalid regex or schema) or the
    tokenizer cannot spell."""
    kind = constraint_kind(options)
    grammar = grammar_text(options)
    if kind is None or grammar is None:
        return None
    reader = ll_tokenizer(tokenizer, vocab_size, eos_token_id)
    problem = _llguidance().LLMatcher.validate_grammar(grammar, reader)
    if problem:
        raise ConstraintError(kind, f"{kind} cannot shape an answer: {_one_line(problem)}; fix the {kind}")
    return CompiledConstraint(kind, grammar, reader, eos_token_id)


def _one_line(problem: str) -> str:
    """llguidance's message without its drawing of where the error is."""
    lines = [line.strip() for line in problem.splitlines() if line.strip()]
    kept = [lines[0], *(line for line in lines[1:] if line.startswith("error:"))] if lines else [problem]
    return " ".join(kept)


def new_mask(rows: int, vocab_size: int) -> torch.Tensor:
    """llguidance's token bitmask: a bit per token, 32 to an int32 word; [rows, words]."""
    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def fill_mask(matcher: Any, mask: torch.Tensor, row: int) -> None:
    """The tokens `matcher` allows next, into `mask[row]` (what llguidance.torch does; that module
    compiles a kernel with torch.compile as it is imported, which is slow and warns)."""
    words = mask[row]
    matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())


class GrammarConstraint(LogitsProcessor):
    """Only the tokens the grammar allows next, for each row: each row's matcher consumes the
    row's tokens after `prompt_length` (the padded width in a batch) as they come. A row whose
    matcher has stopped (its answer is complete, or the row has finished) may only end."""

    def __init__(self, grammar: str, tokenizer: Any, prompt_length: int, eos_token_id: int | None):
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be 0 or more, got {prompt_length}")
        self.prototype = _llguidance().LLMatcher(tokenizer, grammar)
        if self.prototype.is_error():
            raise ValueError(f"the grammar does not compile: {self.prototype.get_error()}")
        self.vocab_size = tokenizer.vocab_size
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.matchers: list[Any] = []
        self.consumed: list[int] = []
        self.allowed_counts: list[int] = []  # per row, how many tokens the last step allowed
        self.bits = torch.arange(32, dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = input_ids.shape[0]
        if not self.matchers:
            self.matchers = [self.prototype.deep_copy() for _ in range(rows)]
            self.consumed = [0] * rows
        mask = new_mask(rows, self.vocab_size)  # [rows, words of 32 tokens]
        for row, matcher in enumerate(self.matchers):
            new = input_ids[row, self.prompt_length + self.consumed[row] :].tolist()
            self.consumed[row] += len(new)
            for token in new:
                if not matcher.is_stopped() and not matcher.is_error():
                    matcher.consume_token(token)
            if matcher.is_stopped() or matcher.is_error():
                mask[row] = 0
                if self.eos_token_id is not None:  # int32 words: bit 31 is the sign
                    bit = self.eos_token_id % 32
                    mask[row, self.eos_token_id // 32] = -(2**31) if bit == 31 else 1 << bit
            else:
                fill_mask(matcher, mask, row)
        allowed = ((mask.unsqueeze(-1) >> self.bits) & 1).view(rows, -1)[:, : scores.shape[-1]].bool()
        self.allowed_counts = allowed.sum(dim=-1).tolist()
        if allowed.shape[-1] < scores.shape[-1]:  # logits past the tokenizer's vocabulary: never
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[-1] - allowed.shape[-1]))
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
