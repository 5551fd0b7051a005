"""`kv-cache` mode: run the prompt once, then feed only the newest token with the cache.

Each layer's keys and values for past positions live in a transformers `StaticCache`, allocated
once for prompt + new tokens (`cache.layers[i].keys`: [batch, heads, max_length, head_dim]) and
written in place, rather than a `DynamicCache` that grows by concatenation. A step costs one
token's work.

On CPU in float32 the logits come from the transformer's last hidden state times the LM head's
weight stored transposed ([n_embd, vocab], contiguous): that product streams the 154 MB of
GPT-2's head about twice as fast as `lm_head`'s [vocab, n_embd] layout, the largest single cost
of a step (see `prefers_embedding_columns`).
"""

from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from gencli.engines.base import DecodeRequest, StepEngine
from gencli.scratch.model import prefers_embedding_columns

_output_embeddings: weakref.WeakKeyDictionary[PreTrainedModel, torch.Tensor] = weakref.WeakKeyDictionary()


def output_embedding_columns(model: PreTrainedModel) -> torch.Tensor:
    """The LM head's weight as [n_embd, vocab], contiguous; made once per loaded model."""
    if model not in _output_embeddings:
        _output_embeddings[model] = model.lm_head.weight.detach().t().contiguous()
    return _output_embeddings[model]


class KVCacheEngine(StepEngine):
    name = "kv-cache"
    uses_cache = True

    def new_cache(self, model: PreTrainedModel, max_length: int) -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=max_length)

    def forward_module(self, model: PreTrainedModel) -> torch.nn.Module:
        return model.transformer

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        # Positions a prompt cache already holds are not run again.
        return self._next_logits(request, request.input_ids[:, int(request.cache.get_seq_length()) :])

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        return self._next_logits(request, sequence[:, -1:])

    @staticmethod
    def _next_logits(request: DecodeRequest, new_tokens: torch.Tensor) -> torch.Tensor:
        body = request.model.transformer(new_tokens, past_key_values=request.cache, use_cache=True)
        hidden = body.last_hidden_state[:, -1]
        if prefers_embedding_columns(request.model.lm_head.weight):
            return hidden @ output_embedding_columns(request.model)
        return request.model.lm_head(hidden)
