import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gencli.padding import left_pad, position_ids
from gencli.scratch import ScratchGPT2, gelu_tanh


def test_gelu_matches_gpt2():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(gelu_tanh(x), ACT2FN["gelu_new"](x), atol=1e-6)


@pytest.fixture(scope="module")
def gpt2_124m_one_layer():
    """GPT-2 124M's shapes (768 wide, 12 heads, 50,257 tokens, 1,024 positions) with one layer."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1)).eval()


@pytest.mark.parametrize("which", ["tiny", "gpt2_124m_one_layer"])
def test_logits_match_hugging_face(request, which):
    hf = request.getfixturevalue(which)
    hf = hf.model if hasattr(hf, "model") else hf
    scratch = ScratchGPT2.from_hf(hf)
    input_ids = torch.randint(0, hf.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = hf(input_ids).logits
        actual = scratch(input_ids)
    assert (expected - actual).abs().max() < 1e-4


def test_cached_decoding_matches_full_forward(tiny):
    scratch = ScratchGPT2.from_hf(tiny.model)
    input_ids = torch.tensor([tiny.tokenizer.encode("It is a truth universally acknowledged")])
    with torch.inference_mode():
        full = scratch(input_ids)
        cache = scratch.new_cache(batch=1, max_length=input_ids.size(1))
        steps = [scratch(input_ids[:, :3], cache=cache)]
        steps += [scratch(input_ids[:, t : t + 1], cache=cache) for t in range(3, input_ids.size(1))]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert cache.get_seq_length() == input_ids.size(1)


def test_left_padded_batch_matches_each_prompt_alone(tiny):
    scratch = ScratchGPT2.from_hf(tiny.model)
    short, long = tiny.tokenizer.encode("Call me"), tiny.tokenizer.encode("It is a truth universally")
    pad = len(long) - len(short)
    assert pad > 0
    input_ids, attention_mask = left_pad([short, long], pad_token_id=0)
    with torch.inference_mode():
        batch = scratch(input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
        alone = scratch(torch.tensor([short]))
    assert torch.allclose(batch[0, pad:], alone[0], atol=1e-5)


def test_an_untied_head_keeps_its_own_weights(tiny_model_dir):
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone() + 0.01)
    scratch = ScratchGPT2.from_hf(hf)
    input_ids = torch.tensor([[15496, 995, 0]])
    with torch.inference_mode():
        assert torch.allclose(scratch(input_ids), hf(input_ids).logits, atol=1e-4)


# GPT-2 config options Hugging Face implements; the from-scratch model must match each.
CONFIG_OPTIONS = [
    {"n_inner": 96},
    {"activation_function": "gelu"},
    {"activation_function": "relu"},
    {"activation_function": "silu"},
    {"activation_function": "gelu_fast"},
    {"activation_function": "quick_gelu"},
    {"tie_word_embeddings": False},
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False},
    {"reorder_and_upcast_attn": True},
]


@pytest.mark.parametrize("options", CONFIG_OPTIONS, ids=lambda options: "-".join(map(str, options.items())))
def test_every_gpt2_option_verifies(tmp_path, options):
    from gencli.loading import load_model
    from gencli.scratch.verify import verify
    from tests.conftest import save_tiny_model

    loaded = load_model(str(save_tiny_model(tmp_path / "m", n_layer=1, **options)), device="cpu")
    report = verify(loaded, ["Hello world! The meaning of life is"])
    assert report.passed, [check for check in report.checks if not check.passed]


def test_an_activation_it_does_not_cover_is_one_line(tiny_model_dir):
    from gencli.errors import GencliError

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    hf.config.activation_function = "mish"
    with pytest.raises(GencliError, match="the from-scratch GPT-2 has no 'mish' activation"):
        ScratchGPT2.from_hf(hf)
