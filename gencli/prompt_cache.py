"""Prompt caches on disk: the model's keys and values for a prompt, reused by a later prompt for
the tokens the two share at the start (`gencli.prefix`), so that only the rest needs a prefill.

The file is safetensors (tensors and string metadata, nothing executable). A file for another
model, dtype, device type or format, or a damaged file is refused with a reason, never used:
the output with a cache is always the output without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize

from gencli.files import atomic_path
from gencli.loading import LoadedModel

FORMAT_VERSION = "2"  # 2: the fingerprint covers every byte of the weights


class PromptCacheRefused(Exception):
    """The file exists but cannot be used; the message says why."""


@dataclass(frozen=True)
class StoredPrompt:
    token_ids: list[int]
    keys: list[torch.Tensor]  # per layer: [1, heads, len(token_ids), head_dim]
    values: list[torch.Tensor]
    # What else the writer stored with it (a chat session's turns, say).
    extra: dict[str, str]


def _expected_metadata(loaded: LoadedModel) -> dict[str, str]:
    return {
        "gencli_prompt_cache_format": FORMAT_VERSION,
        "model_fingerprint": loaded.fingerprint(),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device_type": loaded.device.type,
    }


# Checked in this order: the fingerprint depends on the dtype, so dtype speaks first.
_MISMATCH_REASONS = {
    "gencli_prompt_cache_format": "was written in another cache format",
    "dtype": "holds another dtype",
    "device_type": "was made on another device type",
    "model_fingerprint": "is for another model",
}


def load(path: Path, loaded: LoadedModel) -> StoredPrompt:
    """Read and check a prompt cache; raise `PromptCacheRefused` with the reason if unusable."""
    try:
        with safe_open(path, framework="pt", device=str(loaded.device)) as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, ValueError, SafetensorError) as error:
        raise PromptCacheRefused(f"is unreadable (corrupt or truncated: {error})") from None
    expected = _expected_metadata(loaded)
    for key, reason in _MISMATCH_REASONS.items():
        if metadata.get(key) != expected[key]:
            raise PromptCacheRefused(reason)
    try:
        token_ids = [int(token) for token in json.loads(metadata["token_ids"])]
        layers = loaded.model.config.n_layer
        keys = [tensors[f"layer.{i}.keys"] for i in range(layers)]
        values = [tensors[f"layer.{i}.values"] for i in range(layers)]
    except (KeyError, ValueError, TypeError):
        raise PromptCacheRefused("is incomplete (tensors or token ids missing)") from None
    heads = loaded.model.config.n_head
    shape = (1, heads, len(token_ids), loaded.model.config.n_embd // heads)
    if not token_ids or any(tuple(t.shape) != shape for t in keys + values):
        raise PromptCacheRefused("is damaged (tensor shapes do not match its prompt)")
    extra = {key: value for key, value in metadata.items() if key not in (*_MISMATCH_REASONS, "token_ids")}
    return StoredPrompt(token_ids, keys, values, extra)


def save(
    path: Path, loaded: LoadedModel, prompt_ids: list[int], cache: object, extra: dict[str, str] | None = None
) -> None:
    """Write the first len(prompt_ids) positions of `cache` (a transformers or scratch cache),
    atomically: a reader never sees a half-written file. `extra`: more string metadata. A place
    that cannot be written raises OSError: the bytes are made here and written by Python, since
    safetensors' own file writer reports such failures as its own error type."""
    length = len(prompt_ids)
    tensors = {}
    for index, layer in enumerate(cache.layers):
        tensors[f"layer.{index}.keys"] = layer.keys[:, :, :length].contiguous()
        tensors[f"layer.{index}.values"] = layer.values[:, :, :length].contiguous()
    metadata = {**(extra or {}), **_expected_metadata(loaded), "token_ids": json.dumps(prompt_ids)}
    data = serialize(tensors, metadata=metadata)
    with atomic_path(path) as partial:
        partial.write_bytes(data)


def restore(stored: StoredPrompt, length: int, cache: object) -> None:
    """Fill an empty cache with the first `length` stored positions."""
    for index, (keys, values) in enumerate(zip(stored.keys, stored.values, strict=True)):
        cache.update(keys[:, :, :length], values[:, :, :length], index)
