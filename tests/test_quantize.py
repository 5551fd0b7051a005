import pytest
import torch

from gencli.generation import generate_text
from gencli.loading import load_model
from gencli.quantize import Int8Projection
from gencli.settings import MODES, DecodingOptions


def test_int8_rows_stand_for_the_weights_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(64, 96)  # [in, out], as Conv1D stores it
    projection = Int8Projection.quantize(weight, torch.zeros(96), layout="in_out")
    assert projection.weight.dtype == torch.int8 and projection.weight.shape == (96, 64)
    assert projection.weight.abs().max() == 127  # each row's largest value uses the whole range
    error = (projection.dequantized() - weight.t()).abs()
    assert (error <= projection.scales[:, None] / 2 + 1e-7).all()


def test_the_kernel_and_the_dequantized_product_agree():
    torch.manual_seed(0)
    projection = Int8Projection.quantize(torch.randn(96, 64), torch.randn(96), layout="out_in")
    x = torch.randn(3, 5, 64)
    expected = x @ projection.dequantized().t() + projection.bias
    # float32 activations enter the int8 product in bfloat16: 8 bits of mantissa, ~0.4% each
    assert torch.allclose(projection(x), expected, rtol=0.02, atol=0.05)
    assert projection(x).dtype == torch.float32
    assert projection(x[:1, :1]).shape == (1, 1, 96)


@pytest.mark.parametrize("rows", [1, 3])
def test_an_input_width_the_kernel_cannot_take_gets_the_dequantized_product(rows):
    # The kernel reads widths in blocks of 16 without checking: 24 crashed the process for 3 rows
    # and gave garbage (1e30, inf) for one.
    torch.manual_seed(0)
    projection = Int8Projection.quantize(torch.randn(24, 72), torch.randn(72), layout="in_out")
    x = torch.randn(rows, 24)
    expected = x @ projection.dequantized().t() + projection.bias
    assert not projection.kernel_fits
    assert torch.allclose(projection(x), expected, rtol=1e-5, atol=1e-5)


def test_rows_split_keeps_the_values_and_scales():
    torch.manual_seed(0)
    fused = Int8Projection.quantize(torch.randn(32, 96), torch.randn(96), layout="in_out")
    x = torch.randn(2, 32)
    parts = [fused.rows(start, start + 32)(x) for start in (0, 32, 64)]
    assert torch.equal(torch.cat(parts, dim=-1), fused(x))


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", quantize="int8")


def test_every_projection_is_int8_and_the_modes_agree(tiny_int8):
    blocks = tiny_int8.model.transformer.h
    assert all(isinstance(block.attn.c_attn, Int8Projection) for block in blocks)
    assert isinstance(blocks[0].mlp.c_fc, Int8Projection) and isinstance(
        tiny_int8.model.lm_head, Int8Projection
    )
    options = DecodingOptions(max_new_tokens=24, ignore_eos=True)
    runs = {mode: generate_text(tiny_int8, "It is a truth universally", mode, options) for mode in MODES}
    assert all(run.token_ids == runs["generate"].token_ids for run in runs.values())


def test_int8_logits_stay_close_to_float32(tiny, tiny_int8):
    input_ids = torch.tensor([tiny.tokenizer.encode("Call me Ishmael. Some years ago")])
    with torch.inference_mode():
        full, quantized = tiny.model(input_ids).logits, tiny_int8.model(input_ids).logits
    assert (quantized - full).abs().max() < 0.05 * full.abs().max()
    assert tiny_int8.fingerprint() != tiny.fingerprint()  # a prompt cache never crosses them


def test_the_kernel_scales_are_made_once_in_bfloat16(tiny_int8):
    scratch = tiny_int8.engine("scratch").forward_module
    projections = [
        m for m in (*tiny_int8.model.modules(), *scratch.modules()) if isinstance(m, Int8Projection)
    ]
    assert projections and all(p.kernel_scales.dtype == torch.bfloat16 for p in projections)
    assert all(p.scales.dtype == torch.float32 for p in projections)
