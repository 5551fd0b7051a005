"""The kv-cache mode's one-token step computes what transformers' forward pass computes: the same
logits and the same keys and values in the cache, step after step."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gencli.engines.kv_cache import KVCacheEngine
from gencli.gemv import choose_one_row_kernels
from gencli.loading import load_model


def run_steps(engine: KVCacheEngine, prompt: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], object]:
    """Prefill `prompt`, then feed each step's greedy token; the logits of every step and the cache."""
    cache = engine.new_cache(64)
    logits = [engine.logits(cache, prompt)[:, -1]]
    for _ in range(steps):
        logits.append(engine.logits(cache, logits[-1].argmax(-1, keepdim=True))[:, -1])
    return logits, cache


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_the_one_token_step_equals_the_transformers_forward_pass(tiny_model_dir, dtype, tolerance):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype=dtype)
    engine = KVCacheEngine(loaded.model)
    prompt = torch.tensor([[464, 1893, 286, 262, 1578]])
    with torch.inference_mode():
        ours, our_cache = run_steps(engine, prompt, 6)
        step, engine.one_token = engine.one_token, None  # every step through the transformer
        theirs, their_cache = run_steps(engine, prompt, 6)
    assert step is not None
    for mine, reference in zip(ours, theirs, strict=True):
        scale = reference.abs().max()
        assert (mine.float() - reference.float()).abs().max() <= tolerance * scale
        assert mine.argmax() == reference.argmax()
    assert our_cache.get_seq_length() == their_cache.get_seq_length() == prompt.shape[1] + 6
    for mine, reference in zip(our_cache.layers, their_cache.layers, strict=True):
        filled = int(reference.cumulative_length)
        torch.testing.assert_close(
            mine.keys[:, :, :filled].float(),
            reference.keys[:, :, :filled].float(),
            atol=tolerance,
            rtol=tolerance,
        )
        torch.testing.assert_close(
            mine.values[:, :, :filled].float(),
            reference.values[:, :, :filled].float(),
            atol=tolerance,
            rtol=tolerance,
        )


@pytest.mark.parametrize(
    "option", [{"scale_attn_by_inverse_layer_idx": True}, {"reorder_and_upcast_attn": True}]
)
def test_a_config_with_gpt2s_attention_options_keeps_the_transformers_step(option):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, **option)).eval()
    choose_one_row_kernels(model)
    assert KVCacheEngine(model).one_token is None
