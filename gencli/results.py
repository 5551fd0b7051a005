"""What one generation produced, as data: the same record locally, from a server, and in JSON.

Imports neither torch nor transformers, so `generate --server` can rebuild a server's record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gencli.cache import CacheSnapshot

FinishReason = Literal["eos", "length", "stop", "interrupted"]


@dataclass
class Timings:
    """Seconds. `prefill_s`: the first forward pass; `ttft_s`: from the start of generation to the
    first token; `decode_s` and `tokens_per_s`: the tokens after the first, over the time they
    took. `load_s` (loading the model) and `total_s` (the whole command, start-up included) are
    filled in by whoever knows them. `token_times_s` (when each token was chosen) is kept for
    latency percentiles in this process; it is not part of the record."""

    prefill_s: float | None = None
    ttft_s: float | None = None
    decode_s: float | None = None
    tokens_per_s: float | None = None
    load_s: float | None = None
    total_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)

    @classmethod
    def measured(cls, prefill_s: float | None, token_times_s: list[float], load_s: float | None) -> Timings:
        ttft = token_times_s[0] if token_times_s else None
        decode = token_times_s[-1] - token_times_s[0] if token_times_s else None
        speed = (len(token_times_s) - 1) / decode if decode else None
        return cls(prefill_s, ttft, decode, speed, load_s, None, list(token_times_s))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timings:
        return cls(**{key: data.get(key) for key in TIMING_KEYS})

    def to_dict(self) -> dict[str, float | None]:
        return {key: getattr(self, key) for key in TIMING_KEYS}


TIMING_KEYS = ("load_s", "prefill_s", "decode_s", "ttft_s", "tokens_per_s", "total_s")


@dataclass
class GenerationResult:
    mode: str
    model: str
    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    timings: Timings
    seed: int | None
    device: str
    dtype: str
    # How the weights are stored: the dtype, or with --quantize int8 "float32+int8" (as bench says).
    weights: str
    # The one-row kernels a decode step ran (gencli.kernels): "bmm-split+linear", or "PyTorch's".
    kernels: str = "PyTorch's"
    cache_snapshots: list[CacheSnapshot] | None = None
    prompt_cache_tokens: int = 0  # prompt positions restored from a prompt cache, not prefilled
    # With top_logprobs: per new token {"token", "text", "bytes", "logprob", "top": [the same, without
    # "top"]},
    # log-probabilities under the processed scores the token was chosen from.
    logprobs: list[dict[str, Any]] | None = None
    # With a scored prompt (the server's `echo` with `logprobs`): per prompt token the same record,
    # under the raw model; the first token's logprob is None.
    prompt_logprobs: list[dict[str, Any]] | None = None
    # With a shaped answer (structured output): {"kind": the setting, "complete": whether the
    # answer ended where its shape is complete (not cut off by the length or a stop)}.
    constraint: dict[str, Any] | None = None
    # With speculative decoding: `SpeculationStats.to_dict()`, and in the hand-written modes
    # "steps", one {"proposed", "accepted", "written", "kept"} per verification pass.
    speculation: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationResult:
        snapshots = data.get("cache_snapshots")
        return cls(
            mode=data["mode"],
            model=data["model"],
            prompt=data["prompt"],
            prompt_token_ids=data["prompt_token_ids"],
            token_ids=data["token_ids"],
            text=data["text"],
            finish_reason=data["finish_reason"],
            timings=Timings.from_dict(data["timings"]),
            seed=data.get("seed"),
            device=data["device"],
            dtype=data["dtype"],
            weights=data.get("weights", data["dtype"]),
            kernels=data.get("kernels", "PyTorch's"),
            cache_snapshots=None if snapshots is None else [CacheSnapshot.from_dict(s) for s in snapshots],
            prompt_cache_tokens=data.get("prompt_cache_tokens", 0),
            logprobs=data.get("logprobs"),
            prompt_logprobs=data.get("prompt_logprobs"),
            constraint=data.get("constraint"),
            speculation=data.get("speculation"),
        )

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "mode": self.mode,
            "model": self.model,
            "prompt": self.prompt,
            "prompt_token_ids": self.prompt_token_ids,
            "token_ids": self.token_ids,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "timings": self.timings.to_dict(),
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "weights": self.weights,
            "kernels": self.kernels,
            "prompt_cache_tokens": self.prompt_cache_tokens,
        }
        if self.logprobs is not None:
            result["logprobs"] = self.logprobs
        if self.prompt_logprobs is not None:
            result["prompt_logprobs"] = self.prompt_logprobs
        if self.constraint is not None:
            result["constraint"] = self.constraint
        if self.speculation is not None:
            result["speculation"] = self.speculation
        if self.cache_snapshots is not None:
            final = self.cache_snapshots[-1] if self.cache_snapshots else None
            result["cache"] = [layer.to_dict() for layer in final.layers] if final else []
            result["cache_snapshots"] = [snapshot.to_dict() for snapshot in self.cache_snapshots]
        return result
