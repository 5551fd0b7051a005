"""`Projection`'s one-row fast paths compute x · W + b, and the fast twin of a transformer shares its
weights and leaves the original alone."""

from collections.abc import Iterator

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from gencli.gemv import (
    ONEDNN_PACKED,
    Projection,
    packed_few_row_products,
    with_fast_one_row_projections,
)
from gencli.kernels import onednn_disabled


@pytest.fixture
def threads() -> Iterator:
    original = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(original)


def reference(x: torch.Tensor, weight_in_out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ weight_in_out.double()
    return (out if bias is None else out + bias.double()).float()


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("thread_count", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 5])
def test_float32_projection_matches_the_product(threads, layout, with_bias, thread_count, rows):
    threads(thread_count)
    torch.manual_seed(0)
    weight_in_out, bias = torch.randn(96, 40), torch.randn(40) if with_bias else None
    weight = weight_in_out if layout == "in_out" else weight_in_out.t().contiguous()
    x = torch.randn(1, rows, 96)
    out = Projection(weight, bias, layout=layout)(x)
    assert out.shape == (1, rows, 40)
    torch.testing.assert_close(out, reference(x, weight_in_out, bias), atol=1e-4, rtol=1e-5)


def test_float32_one_row_product_is_split_across_threads(threads, monkeypatch):
    """With two threads the reduction runs as a batch of two half-products, the bias added to the
    first; the result is their sum."""
    threads(2)
    calls = []
    real = torch.baddbmm
    monkeypatch.setattr(
        torch, "baddbmm", lambda bias, a, b: calls.append((bias.shape, a.shape, b.shape)) or real(bias, a, b)
    )
    weight, bias = torch.randn(64, 8), torch.randn(8)
    out = Projection(weight, bias, layout="in_out")(torch.ones(1, 64))
    assert calls == [((2, 1, 8), (2, 1, 32), (2, 32, 8))]
    torch.testing.assert_close(out, weight.sum(0, keepdim=True) + bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_reduced_precision_one_row_runs_with_onednn_off_and_restores_it(dtype, layout, monkeypatch):
    torch.manual_seed(0)
    weight_in_out, bias = torch.randn(128, 48), torch.randn(48)
    weight = weight_in_out if layout == "in_out" else weight_in_out.t().contiguous()
    projection = Projection(weight.to(dtype), bias.to(dtype), layout=layout)
    seen = []
    real_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append((torch.backends.mkldnn.enabled, w.shape, w.is_contiguous()))
        return real_linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    x = torch.randn(1, 128)
    out = projection(x.to(dtype))
    assert seen == [(False, (48, 128), True)]  # [out, in], PyTorch's own reduced-precision kernel
    assert torch.backends.mkldnn.enabled
    torch.testing.assert_close(out.float(), reference(x, weight_in_out, bias), atol=0.5, rtol=0.02)


def test_onednn_is_restored_after_an_error():
    with pytest.raises(RuntimeError), onednn_disabled():
        assert not torch.backends.mkldnn.enabled
        raise RuntimeError
    assert torch.backends.mkldnn.enabled


def test_several_rows_compute_exactly_what_conv1d_does():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)
    x = torch.randn(2, 3, 16)
    assert torch.equal(Projection(conv.weight, conv.bias, layout="in_out")(x), conv(x))


def test_fast_twin_shares_weights_and_leaves_the_model_alone(tiny):
    transformer = tiny.model.transformer
    twin = with_fast_one_row_projections(transformer)
    assert twin is not transformer
    assert not any(isinstance(m, Conv1D) for m in twin.modules())
    assert sum(isinstance(m, Projection) for m in twin.modules()) == 4 * len(transformer.h)
    assert all(isinstance(block.attn.c_attn, Conv1D) for block in transformer.h)
    projection = twin.h[0].attn.c_attn
    # float32 reads the [in, out] weight as it is: no copy.
    assert projection.prepared[0].data_ptr() == transformer.h[0].attn.c_attn.weight.data_ptr()
    assert twin.wte.weight is transformer.wte.weight
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(
            twin(ids[:, -1:]).last_hidden_state,
            transformer(ids[:, -1:]).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )
        assert torch.equal(twin(ids).last_hidden_state, transformer(ids).last_hidden_state)


@pytest.mark.skipif(not ONEDNN_PACKED, reason="oneDNN's packed linear is not in this torch build")
@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_few_row_products_equal_the_product_and_only_inside_the_block(layout, with_bias):
    torch.manual_seed(0)
    weight = torch.randn(64, 96) if layout == "in_out" else torch.randn(96, 64)
    bias = torch.randn(96) if with_bias else None
    projection = Projection(weight, bias, layout=layout)
    x = torch.randn(8, 1, 64)  # a decode step of 8 rows
    expected = x @ (weight if layout == "in_out" else weight.t()) + (0 if bias is None else bias)
    outside = projection(x)
    assert projection.packed_weight is None and torch.allclose(outside, expected, atol=1e-5)
    with packed_few_row_products():
        inside = projection(x)
    assert projection.packed_weight is not None and inside.shape == (8, 1, 96)
    assert torch.allclose(inside, expected, atol=1e-4)


def test_a_projection_keeps_its_split_when_the_thread_count_changes(threads):
    threads(2)
    torch.manual_seed(0)
    projection = Projection(torch.randn(768, 256), layout="in_out")
    x = torch.randn(1, 768)
    with torch.inference_mode():
        two = projection(x)
        threads(1)
        assert torch.equal(projection(x), two)


@pytest.mark.parametrize(("dtype", "kernel"), [("float32", "bmm-split"), ("bfloat16", "linear-no-onednn")])
def test_every_mode_reads_the_models_own_weights(tiny_model_dir, dtype, kernel):
    """One layout per weight, made at load: where the kernel reads the model's dtype, the engines'
    one-row products read the model's tensors (the LM head, tied to the embedding, included), and
    the scratch attention's Q/K/V are views."""
    from gencli.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype=dtype, kernels=kernel)
    model = loaded.model
    head = model.lm_head.weight
    assert head is model.transformer.wte.weight
    storage = {head.untyped_storage().data_ptr()}
    convs = [module for module in model.modules() if isinstance(module, Conv1D)]
    storage |= {conv.weight.untyped_storage().data_ptr() for conv in convs}
    kv_cache, scratch = loaded.engine("kv-cache"), loaded.engine("scratch")
    projections = [module for module in kv_cache.transformer.modules() if isinstance(module, Projection)]
    scratch.scratch.lm_head(torch.zeros(1, model.config.n_embd, dtype=head.dtype))  # makes its head
    projections += [kv_cache.lm_head, scratch.scratch._head]
    assert projections and all(p.prepared[0].is_contiguous() for p in projections)
    assert {p.prepared[0].untyped_storage().data_ptr() for p in projections} <= storage
    attention = scratch.scratch.blocks[0].attention
    fused = model.transformer.h[0].attn.c_attn.weight
    assert attention.key.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


@pytest.mark.parametrize("kernel", ["bmm-split", "linear-no-onednn"])
def test_reduced_precision_weights_stay_out_in_whatever_kernel_reads_them(tiny_model_dir, kernel):
    """Products of more rows (a prefill, `generate`) in bfloat16 run 6x slower on an [in, out]
    weight: a kernel that reads a float32 copy must not leave the model's weight so."""
    from gencli.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16", kernels=kernel)
    convs = [module for module in loaded.model.modules() if isinstance(module, Conv1D)]
    assert convs and all(conv.weight.t().is_contiguous() for conv in convs)  # [out, in] in memory
    projection = loaded.engine("kv-cache").transformer.h[0].mlp.c_fc
    assert projection.kernel.name == kernel
    weight = loaded.model.transformer.h[0].mlp.c_fc.weight
    own = projection.prepared[0].untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    assert own == (kernel == "linear-no-onednn")  # bmm-split reads a float32 copy
