"""Prefix reuse: a KV cache and the token ids whose keys and values it holds.

The one mechanism behind the prompt cache file, `gencli chat` and (later) `gencli serve`: a new
prompt reuses the positions it shares with what the cache holds, the longest common prefix, and
only the rest is prefilled. Keys and values depend only on the tokens before them (GPT-2 is
causal and its positions are absolute), so reused positions are exactly what a prefill would
compute: the output with reuse is the output without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gencli.cache import consistent_length, crop_cache


def common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def reusable_length(cached_ids: list[int], prompt_ids: list[int]) -> int:
    """How many cached positions `prompt_ids` can reuse: their common prefix, less at least the
    last prompt token, which must run because its logits choose the first new token."""
    return min(common_prefix_length(cached_ids, prompt_ids), len(prompt_ids) - 1)


@dataclass
class CachedPrefix:
    """A mode's KV cache (`cache`) holding the keys and values of `token_ids`, in order."""

    cache: Any
    token_ids: list[int] = field(default_factory=list)

    def reuse(self, prompt_ids: list[int]) -> int:
        """Crop the cache to what `prompt_ids` can reuse; return that many positions."""
        return self.keep(reusable_length(self.token_ids, prompt_ids))

    def keep(self, length: int) -> int:
        """Keep the first `length` positions and forget the rest, with no recompute."""
        crop_cache(self.cache, length)
        self.token_ids = self.token_ids[:length]
        return length

    def record(self, sequence_ids: list[int]) -> None:
        """After a run over `sequence_ids` (prompt and new tokens), note which of them the cache
        now holds: all but the last token chosen, which no forward pass has seen. A run cut
        short mid-pass leaves some layers ahead: they are cropped back to the rest."""
        length = consistent_length(self.cache)
        crop_cache(self.cache, length)
        self.token_ids = list(sequence_ids[:length])

    def resync(self) -> None:
        """Make `token_ids` and the cache agree again after an interruption at any point."""
        self.keep(min(len(self.token_ids), consistent_length(self.cache)))
