import json
import math

import pytest
import torch
from typer.testing import CliRunner

from gencli.cli import app
from gencli.perplexity import measure_perplexity, prepare, windows
from gencli.tokens import token_bytes

runner = CliRunner()
TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 6


@pytest.mark.parametrize(("count", "context", "stride"), [(10, 4, 2), (100, 32, 31), (7, 16, 8), (33, 8, 3)])
def test_windows_score_every_token_once_with_enough_before_it(count, context, stride):
    scored = []
    for begin, end, first in windows(count, context, stride):
        assert end - begin <= context
        scored += range(first, end)
        if begin:
            assert first - begin >= context - stride  # every scored token sees that many before it
    assert scored == list(range(1, count))


def test_one_window_equals_the_model_loss(tiny):
    ids = tiny.tokenizer.encode(TEXT)
    report = measure_perplexity(tiny, prepare(tiny, TEXT))  # the whole text fits the context
    with torch.inference_mode():
        loss = tiny.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert report.windows == 1 and report.scored_tokens == len(ids) - 1
    assert report.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert report.scored_bytes == len(TEXT.encode()) - len(token_bytes(tiny.tokenizer, ids[0]))
    assert report.bits_per_byte == pytest.approx(report.nll / math.log(2) / report.scored_bytes)


def test_windows_overlapping_by_one_token_equal_the_sum_of_their_losses(tiny):
    """With stride = context - 1, each window scores all its tokens but the first: the model's own
    loss over each window, summed, is the whole text's NLL."""
    ids = tiny.tokenizer.encode(TEXT)
    report = measure_perplexity(tiny, prepare(tiny, TEXT, context=16, stride=15))
    nll = 0.0
    with torch.inference_mode():
        for begin in range(0, len(ids) - 1, 15):
            chunk = torch.tensor([ids[begin : begin + 16]])
            nll += float(tiny.model(chunk, labels=chunk).loss) * (chunk.shape[1] - 1)
    assert report.scored_tokens == len(ids) - 1
    assert report.nll == pytest.approx(nll, rel=1e-4)


def test_cli_json_and_errors(tiny_model_dir, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    result = runner.invoke(app, ["perplexity", str(path), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["context"] == 1024 and data["stride"] == 512 and data["weights"] == "float32"
    assert data["perplexity"] == pytest.approx(math.exp(data["nll"] / data["scored_tokens"]))
    table = runner.invoke(
        app, ["perplexity", "-", "--model", str(tiny_model_dir), "--quantize", "int8"], input=TEXT
    )
    assert table.exit_code == 0 and "float32+int8" in table.stdout and "bits per byte" in table.stdout
    too_wide = runner.invoke(
        app, ["perplexity", str(path), "--model", str(tiny_model_dir), "--context", "4096"]
    )
    assert too_wide.exit_code == 2
    assert too_wide.stderr == "gencli: error: the context must be 2 to 1024 tokens for this model, got 4096\n"
    short = runner.invoke(app, ["perplexity", "-", "--model", str(tiny_model_dir)], input="Hi")
    assert short.exit_code == 2 and "fewer than 2 tokens" in short.stderr


def test_a_stride_as_wide_as_the_window_is_refused(tiny_model_dir):
    result = runner.invoke(
        app,
        ["perplexity", "-", "--model", str(tiny_model_dir), "--context", "16", "--stride", "16"],
        input=TEXT,
    )
    assert result.exit_code == 2
    assert (
        result.stderr == "gencli: error: the stride must be 1 to 15 tokens (less than the context), got 16\n"
    )
