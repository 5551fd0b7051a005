import pytest
import torch

from gencli.errors import NoSuchIndexError
from gencli.scratch.attention import causal_mask
from gencli.scratch.explain import explain, worked_example
from gencli.scratch.verify import additive_mask

PROMPT = "It is a truth universally acknowledged"


def hf_attention_output(loaded, ids, layer):
    """The Hugging Face layer's attention output, [T, n_embd], from its own forward pass."""
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        hidden = loaded.model(input_ids, output_hidden_states=True).hidden_states[layer]
        block = loaded.model.transformer.h[layer]
        count = len(ids)
        mask = additive_mask(causal_mask(count, count)[None, None], torch.float32)
        return block.attn(block.ln_1(hidden), attention_mask=mask)[0][0]


@pytest.mark.parametrize(("layer", "head", "position"), [(0, 0, -1), (1, 3, 2), (-1, 1, 0)])
def test_the_walkthrough_ends_at_the_hf_layer_output(tiny, layer, head, position):
    explained = explain(tiny, PROMPT, layer, head, position)
    expected = hf_attention_output(tiny, explained.ids, explained.layer)[explained.position]
    assert torch.allclose(explained.attention_output, expected, atol=1e-5, rtol=1e-5)
    assert explained.check.passed and explained.check.max_abs_error < 1e-5
    assert explained.layer == layer % 2 and explained.position == position % len(explained.ids)


def test_each_step_follows_from_the_one_before(tiny):
    explained = explain(tiny, PROMPT, layer=1, head=2, position=3)
    steps, head_dim = explained.steps, explained.head_dim
    assert steps.query.shape == (head_dim,) and steps.keys.shape == (len(explained.ids), head_dim)
    assert torch.allclose(steps.raw_scores, steps.keys @ steps.query, atol=1e-6)
    assert steps.scale == pytest.approx(head_dim**-0.5)
    assert torch.allclose(steps.scaled_scores, steps.raw_scores * steps.scale, atol=1e-6)
    assert steps.allowed.tolist() == [True] * 4 + [False] * (len(explained.ids) - 4)
    assert torch.allclose(steps.weights[:4], torch.softmax(steps.scaled_scores[:4], -1), atol=1e-6)
    assert steps.weights[4:].abs().max() == 0
    assert torch.allclose(steps.head_output, steps.weights @ steps.values, atol=1e-6)
    # the head's output is its slice of the merged row, before the output projection
    assert torch.allclose(explained.merged[2 * head_dim : 3 * head_dim], steps.head_output, atol=1e-6)


def test_the_cache_holds_the_earlier_positions(tiny):
    explained = explain(tiny, PROMPT, layer=0, head=0, position=4)
    cache = explained.cache
    heads, head_dim = explained.n_head, explained.head_dim
    assert cache.cached_shape == (1, heads, 4, head_dim)
    assert cache.new_shape == (1, heads, 1, head_dim)
    assert cache.attended_shape == (1, heads, 5, head_dim)
    assert cache.max_abs_difference < 1e-5
    assert explain(tiny, PROMPT, position=0).cache.cached_shape == (1, heads, 0, head_dim)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"layer": 2}, "there is no layer 2: this model has layers 0 to 1"),
        ({"head": -5}, "there is no head -5: this model has heads 0 to 3"),
        ({"position": 99}, "there is no position 99: the prompt (6 tokens) has positions 0 to 5"),
    ],
)
def test_indexes_outside_the_model_or_prompt(tiny, arguments, message):
    with pytest.raises(NoSuchIndexError) as raised:
        explain(tiny, PROMPT, **arguments)
    assert str(raised.value) == message


def test_worked_example_numbers():
    example = worked_example()
    assert example.query.tolist() == [[1, 0, 2], [2, 2, 2], [2, 1, 3]]
    assert example.key.tolist() == [[0, 1, 1], [4, 4, 0], [2, 3, 1]]
    assert example.value.tolist() == [[1, 2, 3], [2, 8, 0], [2, 6, 3]]
    assert example.scores.tolist() == [[2, 4, 4], [4, 16, 12], [4, 12, 10]]
    assert torch.allclose(example.output[0], torch.tensor([1.9366, 6.6831, 1.5951]), atol=1e-4)
    assert torch.allclose(example.output[2], torch.tensor([1.9997, 7.7599, 0.3584]), atol=1e-4)
    # causal: the first token sees only itself, the last the same as without the mask
    assert example.causal_weights[0].tolist() == [1, 0, 0]
    assert torch.equal(example.causal_weights[2], example.weights[2])
