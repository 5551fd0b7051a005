import pytest
import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

from gencli.scratch import (
    KVCache,
    MultiHeadSelfAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)


def test_seed_002_worked_example():
    x = torch.tensor([[1, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]], dtype=torch.float32)
    w_q = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float32)
    w_k = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float32)
    w_v = torch.tensor([[0, 2, 0], [0, 3, 0], [1, 0, 3], [1, 1, 0]], dtype=torch.float32)
    output, weights = scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, scale=1.0)
    assert torch.allclose(weights[0], torch.tensor([6.3379e-02, 4.6831e-01, 4.6831e-01]), rtol=1e-4)
    assert torch.allclose(weights[1], torch.tensor([6.0337e-06, 9.8201e-01, 1.7986e-02]), rtol=1e-4)
    assert torch.allclose(output, weights @ (x @ w_v))


def test_default_scale_is_one_over_sqrt_dk():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 16).unbind(0)
    _, default = scaled_dot_product_attention(q, k, v)
    _, explicit = scaled_dot_product_attention(q, k, v, scale=0.25)
    _, unscaled = scaled_dot_product_attention(q, k, v, scale=1.0)
    assert torch.equal(default, explicit)
    assert not torch.allclose(default, unscaled)


def test_matches_torch_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    mask = causal_mask(7, 7)
    ours, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_causal_mask_with_cached_positions():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # two new queries after three cached positions see everything up to themselves
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_padding_mask_and_fully_masked_rows():
    mask = padding_mask(torch.tensor([[0, 1, 1]]))
    assert mask.shape == (1, 1, 1, 3) and mask.flatten().tolist() == [False, True, True]
    q = k = v = torch.ones(1, 1, 3, 4)
    _, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(3, 3) & mask)
    assert not weights.isnan().any()  # the padding query's row is fully masked
    assert weights[0, 0, 2].tolist() == pytest.approx([0.0, 0.5, 0.5])


def hf_attention(n_embd=64, n_head=4, layer_idx=0, **config):
    torch.manual_seed(0)
    config = GPT2Config(n_embd=n_embd, n_head=n_head, initializer_range=0.2, **config)
    config._attn_implementation = "eager"
    attention = GPT2Attention(config, layer_idx=layer_idx).eval()
    torch.nn.init.normal_(attention.c_attn.bias, std=0.1)
    return attention


def test_from_hf_splits_the_packed_transposed_weights():
    hf = hf_attention()
    ours = MultiHeadSelfAttention.from_hf(hf)
    x = torch.randn(2, 6, 64)
    q, k, v = hf.c_attn(x).split(64, dim=2)
    assert torch.allclose(ours.query(x), q, atol=1e-6)
    assert torch.allclose(ours.key(x), k, atol=1e-6)
    assert torch.allclose(ours.value(x), v, atol=1e-6)
    assert not ours.training


def test_layer_idx_scaling_is_kept():
    hf = hf_attention(layer_idx=3, scale_attn_by_inverse_layer_idx=True)
    assert MultiHeadSelfAttention.from_hf(hf).scale == pytest.approx(16**-0.5 / 4)


def test_incremental_path_equals_full_sequence():
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(32, 4).eval()
    x = torch.randn(1, 9, 32)
    full, _ = attention(x)
    cache = KVCache(1, 4, 9, 8)
    steps = [attention(x[:, :4], cache=cache)[0]]
    steps += [attention(x[:, t : t + 1], cache=cache)[0] for t in range(4, 9)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-6)
    assert cache.keys.shape == (1, 4, 9, 8)


def test_cache_refuses_to_overflow():
    cache = KVCache(1, 1, 2, 4)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.append(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))
