"""Prompts of different lengths in one batch: left padding, its attention mask, and the position
ids that make each row's positions count from its first real token."""

from __future__ import annotations

from typing import Any

import torch


def pad_token_id(tokenizer: Any) -> int:
    """GPT-2 has no padding token: pad with end-of-text, as Hugging Face's `generate` does."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    return 0


def left_pad(
    rows: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> (input_ids, attention_mask), both [batch, longest row]; padding goes on the
    left, so every row's next token comes at the same last position."""
    width = max(map(len, rows))
    input_ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return input_ids, attention_mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] of 1/0 -> [batch, seq] positions: 0 at each row's first token. Padding gets
    position 1, as Hugging Face's `generate` gives it (it is masked, so any value would do)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def padding_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch]: how many padding positions each row starts with."""
    return (attention_mask == 0).sum(-1)
