"""Prove the from-scratch attention and GPT-2 equal Hugging Face's, layer by layer.

Each check feeds the same inputs to a Hugging Face module and to its from-scratch counterpart:
(a) one causal sequence, (b) a left-padded batch with its attention mask, (c) incremental decoding
with a cache, (d) the whole model's logits and 32 greedy tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from gencli.loading import LoadedModel
from gencli.padding import left_pad
from gencli.scratch.attention import KVCache, MultiHeadSelfAttention, causal_mask, padding_mask
from gencli.scratch.model import ScratchGPT2
from gencli.scratch.probe import attention_inputs
from gencli.settings import DecodingOptions
from gencli.transformers_compat import cache_argument

DEFAULT_PROMPTS = (
    "Hello world! The meaning of life is",
    "It is a truth universally acknowledged",
    "Call me Ishmael.",
)
ATTENTION_ATOL = 1e-5
# Relative tolerance of every check: float32 keeps about 7 significant digits.
RTOL = 1e-5
# Logits pass through every layer and the vocabulary projection: float32 rounding adds up.
LOGITS_ATOL = 1e-4
GREEDY_TOKENS = 32

AttentionFactory = Callable[[nn.Module], nn.Module]

CASES = {
    "a": "causal",
    "b": "padded batch",
    "c": "incremental",
    "d": "logits",
}


@dataclass(frozen=True)
class Check:
    """One comparison, passed when every element is within atol + rtol * |expected|, as
    `torch.allclose` has it: an absolute bound alone fails layers whose outputs are large."""

    case: str
    layer: int | None  # None: the whole model
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float  # |actual - expected| / |expected|, where expected is not 0
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "case_name": CASES[self.case], "passed": self.passed}


@dataclass
class VerifyReport:
    model: str
    prompts: list[str]
    checks: list[Check] = field(default_factory=list)
    greedy_tokens_compared: int = 0
    greedy_tokens_agreeing: int = 0

    @property
    def greedy_agrees(self) -> bool:
        return self.greedy_tokens_agreeing == self.greedy_tokens_compared

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks) and self.greedy_agrees

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "prompts": self.prompts,
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
            "greedy": {
                "tokens_compared": self.greedy_tokens_compared,
                "tokens_agreeing": self.greedy_tokens_agreeing,
                "passed": self.greedy_agrees,
            },
        }


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" mask -> the additive float mask Hugging Face attention layers take."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def compare(
    case: str,
    layer: int | None,
    expected: torch.Tensor,
    actual: torch.Tensor,
    atol: float,
    rtol: float = RTOL,
) -> Check:
    expected, actual = expected.float(), actual.float()
    error = (expected - actual).abs()
    size = expected.abs()
    relative = (error / size)[size > 0]
    passed = bool((error <= atol + rtol * size).all())
    max_rel = relative.max().item() if relative.numel() else 0.0
    return Check(case, layer, error.max().item(), error.mean().item(), max_rel, atol, rtol, passed)


def check_causal_sequence(loaded: LoadedModel, prompt: str, attention: AttentionFactory) -> list[Check]:
    input_ids = torch.tensor([loaded.tokenizer.encode(prompt)], device=loaded.device)
    seq = input_ids.size(1)
    hf_mask = additive_mask(causal_mask(seq, seq, loaded.device)[None, None], loaded.dtype)
    checks = []
    for index, x in enumerate(attention_inputs(loaded, input_ids, None)):
        hf_attention = loaded.model.transformer.h[index].attn
        expected = hf_attention(x, attention_mask=hf_mask)[0]
        actual = attention(hf_attention)(x)[0]
        checks.append(compare("a", index, expected, actual, ATTENTION_ATOL))
    return checks


def left_padded_batch(loaded: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [loaded.tokenizer.encode(prompt) for prompt in prompts]
    return left_pad(encoded, loaded.eos_token_id or 0, loaded.device)


def check_padded_batch(loaded: LoadedModel, prompts: list[str], attention: AttentionFactory) -> list[Check]:
    input_ids, attention_mask = left_padded_batch(loaded, prompts)
    seq = input_ids.size(1)
    allowed = causal_mask(seq, seq, loaded.device)[None, None] & padding_mask(attention_mask)
    hf_mask = additive_mask(allowed, loaded.dtype)
    real = attention_mask.bool()  # compare the positions that hold tokens, not padding
    checks = []
    for index, x in enumerate(attention_inputs(loaded, input_ids, attention_mask)):
        hf_attention = loaded.model.transformer.h[index].attn
        expected = hf_attention(x, attention_mask=hf_mask)[0]
        actual = attention(hf_attention)(x, attention_mask=attention_mask)[0]
        checks.append(compare("b", index, expected[real], actual[real], ATTENTION_ATOL))
    return checks


def check_incremental(loaded: LoadedModel, prompt: str, attention: AttentionFactory) -> list[Check]:
    """Prefill the first half of the prompt, then feed one position at a time, through both caches."""
    input_ids = torch.tensor([loaded.tokenizer.encode(prompt)], device=loaded.device)
    seq = input_ids.size(1)
    prefill = max(1, seq // 2)
    config = loaded.model.config
    checks = []
    for index, x in enumerate(attention_inputs(loaded, input_ids, None)):
        hf_attention = loaded.model.transformer.h[index].attn
        ours = attention(hf_attention)
        hf_cache = DynamicCache(config=config)
        our_cache = KVCache(1, config.n_head, seq, config.n_embd // config.n_head, x.dtype, x.device)
        expected, actual = [], []
        for start, end in [(0, prefill), *((t, t + 1) for t in range(prefill, seq))]:
            step = x[:, start:end]
            hf_mask = additive_mask(causal_mask(end - start, end, x.device)[None, None], x.dtype)
            expected.append(hf_attention(step, attention_mask=hf_mask, **cache_argument(hf_cache))[0])
            actual.append(ours(step, cache=our_cache)[0])
        checks.append(compare("c", index, torch.cat(expected, 1), torch.cat(actual, 1), ATTENTION_ATOL))
    return checks


def check_end_to_end(loaded: LoadedModel, prompt: str, scratch: ScratchGPT2) -> Check:
    input_ids = torch.tensor([loaded.tokenizer.encode(prompt)], device=loaded.device)
    return compare("d", None, loaded.model(input_ids).logits, scratch(input_ids), LOGITS_ATOL)


def verify(
    loaded: LoadedModel,
    prompts: list[str] | None = None,
    attention: AttentionFactory = MultiHeadSelfAttention.from_hf,
) -> VerifyReport:
    """Run checks (a)-(d); `attention` builds the from-scratch layer from a HF `GPT2Attention`."""
    from gencli.generation import generate_text

    prompts = list(prompts or DEFAULT_PROMPTS)
    report = VerifyReport(model=loaded.name, prompts=prompts)
    with torch.inference_mode():
        report.checks += check_causal_sequence(loaded, prompts[0], attention)
        report.checks += check_padded_batch(loaded, prompts if len(prompts) > 1 else prompts * 2, attention)
        report.checks += check_incremental(loaded, prompts[0], attention)
        report.checks.append(check_end_to_end(loaded, prompts[0], ScratchGPT2.from_hf(loaded.model)))

    new_tokens = min(GREEDY_TOKENS, loaded.context_length - len(loaded.tokenizer.encode(prompts[0])))
    options = DecodingOptions(max_new_tokens=new_tokens)
    reference = generate_text(loaded, prompts[0], "generate", options).token_ids
    scratch = generate_text(loaded, prompts[0], "scratch", options).token_ids
    report.greedy_tokens_compared = len(reference)
    report.greedy_tokens_agreeing = next(
        (i for i, (a, b) in enumerate(zip(reference, scratch, strict=False)) if a != b), len(reference)
    )
    return report
