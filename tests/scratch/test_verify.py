"""`verify` must pass on correct code and fail on the two bugs the seed articles carried."""

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from gencli.loading import load_model
from gencli.scratch import MultiHeadSelfAttention
from gencli.scratch.verify import ATTENTION_ATOL, LOGITS_ATOL, verify
from gencli.tokens import BUNDLED_TOKENIZER


class KeysAndValuesFromQueryProjection(MultiHeadSelfAttention):
    """Bug: keys and values projected with the query weights."""

    def project(self, x):
        query = self.split_heads(self.query(x))
        return query, query, query


class SoftmaxBeforeScaling(MultiHeadSelfAttention):
    """Bug: softmax(QKᵀ) · (1/√d_k) instead of softmax(QKᵀ/√d_k)."""

    def attend(self, query, key, value, mask):
        scores = (query @ key.transpose(-2, -1)).masked_fill(~mask, torch.finfo(query.dtype).min)
        weights = torch.softmax(scores, dim=-1) * self.scale
        return weights @ value, weights


def assert_passes_with_tolerances(report, layers):
    assert report.passed
    by_case = {case: [c for c in report.checks if c.case == case] for case in "abcd"}
    for case in "abc":
        assert [c.layer for c in by_case[case]] == list(range(layers))
        assert all(c.max_abs_error <= ATTENTION_ATOL and c.atol == ATTENTION_ATOL for c in by_case[case])
    assert by_case["d"][0].max_abs_error <= LOGITS_ATOL
    assert report.greedy_tokens_agreeing == report.greedy_tokens_compared == 32


def test_verify_passes_on_the_tiny_model(tiny):
    assert_passes_with_tolerances(verify(tiny), layers=2)


def test_verify_passes_on_gpt2_124m_shapes(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)).save_pretrained(tmp_path)
    assert_passes_with_tolerances(verify(load_model(str(tmp_path), device="cpu")), layers=1)


@pytest.mark.parametrize("buggy", [KeysAndValuesFromQueryProjection, SoftmaxBeforeScaling])
def test_verify_catches_known_bugs(tiny, buggy):
    def build(hf_attention):
        correct = MultiHeadSelfAttention.from_hf(hf_attention)
        bug = buggy(64, 4, scale=correct.scale).eval()
        bug.load_state_dict(correct.state_dict())
        return bug

    report = verify(tiny, attention=build)
    assert not report.passed
    for case in "abc":
        failures = [c for c in report.checks if c.case == case and not c.passed]
        assert len(failures) == 2, f"case ({case}) should fail on every layer"
        assert all(c.max_abs_error > 100 * ATTENTION_ATOL for c in failures)


def test_checks_are_relative_and_absolute_as_allclose_is():
    import torch

    from gencli.scratch.verify import compare

    expected = torch.tensor([60.0, -0.001, 0.0])
    # 6e-5 off at 60 is a relative error of 1e-6: an absolute bound of 1e-5 alone would fail it
    large = compare("a", 0, expected, expected + torch.tensor([6e-5, 0.0, 0.0]), atol=1e-5)
    assert large.passed and large.max_abs_error > 1e-5 and large.max_rel_error < 2e-6
    small = compare("a", 0, expected, expected + torch.tensor([0.0, 1e-3, 0.0]), atol=1e-5)
    assert not small.passed and small.max_rel_error == pytest.approx(1.0, rel=1e-3)
    zero = compare("a", 0, expected, expected + torch.tensor([0.0, 0.0, 2e-5]), atol=1e-5)
    assert not zero.passed  # near zero only the absolute bound helps
