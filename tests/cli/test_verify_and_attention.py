"""`gencli verify` and `gencli attention` through the CLI runner."""

import builtins
import json

import pytest
from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()


def test_verify_passes_and_prints_a_table(tiny_model_dir):
    result = runner.invoke(app, ["verify", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    for case in ("(a) causal", "(b) padded batch", "(c) incremental", "(d) logits"):
        assert case in result.stdout
    assert "32/32 agree" in result.stdout and "FAIL" not in result.stdout


def test_verify_json(tiny_model_dir):
    result = runner.invoke(
        app, ["verify", "Call me Ishmael.", "The whale", "--model", str(tiny_model_dir), "--json"]
    )
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["prompts"] == ["Call me Ishmael.", "The whale"]
    assert {check["case"] for check in data["checks"]} == {"a", "b", "c", "d"}
    assert data["greedy"] == {"tokens_compared": 32, "tokens_agreeing": 32, "passed": True}


def test_verify_exits_1_when_a_check_fails(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("gencli.scratch.verify.ATTENTION_ATOL", 0.0)
    result = runner.invoke(app, ["verify", "--model", str(tiny_model_dir)])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout


def test_attention_heatmap(tiny_model_dir):
    result = runner.invoke(
        app, ["attention", "It is a truth", "--model", str(tiny_model_dir), "-l", "1", "-H", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "attention, layer 1, head 3" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.lstrip()[:1].isdigit()]
    assert [row.split()[1] for row in rows] == ["It", "·is", "·a", "·truth"]
    # causal: row i has i + 1 shaded cells, two characters each
    assert [sum(ch in "░▒▓█" for ch in row) for row in rows] == [2, 4, 6, 8]


def test_attention_truncates_long_prompts_to_the_terminal(tiny_model_dir):
    prompt = " ".join(["word"] * 200)
    result = runner.invoke(app, ["attention", prompt, "--model", str(tiny_model_dir)])
    assert "(last" in result.stdout and "of 200 tokens)" in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "2"], "there is no layer 2: this model has layers 0 to 1\n"),
        (["-H", "4"], "there is no head 4: this model has heads 0 to 3\n"),
    ],
)
def test_attention_bad_layer_or_head(tiny_model_dir, args, message):
    result = runner.invoke(app, ["attention", "Hi there", "--model", str(tiny_model_dir), *args])
    assert result.exit_code == 2 and result.stderr == "gencli: error: " + message


def test_attention_png(tiny_model_dir, tmp_path):
    path = tmp_path / "map.png"
    result = runner.invoke(
        app, ["attention", "Hello world", "--model", str(tiny_model_dir), "--png", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_png_without_matplotlib(tiny_model_dir, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(
        app, ["attention", "Hi", "--model", str(tiny_model_dir), "--png", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2
    assert "need matplotlib: pip install 'gencli[plot]'" in result.stderr


def test_attention_refuses_a_prompt_longer_than_the_context(tiny_model_dir):
    result = runner.invoke(app, ["attention", " word" * 1100, "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "gencli: error: the prompt is 1100 tokens, more than the model's context of 1024; shorten it\n"
    )


def test_attention_json_for_text_and_for_its_token_ids(tiny_model_dir, tiny):
    model = ["--model", str(tiny_model_dir), "--layer", "1", "--head", "2", "--json"]
    from_text = json.loads(runner.invoke(app, ["attention", "The cat sat", *model]).stdout)
    ids = " ".join(map(str, tiny.tokenizer.encode("The cat sat")))
    from_ids = json.loads(runner.invoke(app, ["attention", ids, "--token-ids", *model]).stdout)
    assert from_ids == from_text
    assert from_text["ids"] == tiny.tokenizer.encode("The cat sat")
    assert [len(row) for row in from_text["weights"]] == [1, 2, 3]
    assert from_text["weights"][0] == [1.0]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ("464 cat", "gencli: error: --token-ids takes token ids (integers) separated by spaces, got 'cat'\n"),
        ("464 -1", "gencli: error: --token-ids takes token ids (integers) separated by spaces, got '-1'\n"),
        ("464 50257", "gencli: error: token ids must be 0 to 50256 for this model\n"),
    ],
)
def test_bad_token_ids_are_one_line(tiny_model_dir, ids, message):
    result = runner.invoke(app, ["explain", ids, "--token-ids", "--model", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert result.stderr == message
