import json

import pytest
import torch
from typer.testing import CliRunner

from gencli import compare
from gencli.cli import app
from gencli.generation import generate_text
from gencli.settings import DecodingOptions

runner = CliRunner()


def test_all_modes_agree(tiny_model_dir):
    result = runner.invoke(app, ["compare", "Hello world", "--model", str(tiny_model_dir), "-n", "10"])
    assert result.exit_code == 0, result.output
    assert "all 4 modes agree on all 10 tokens" in result.stdout
    for mode in ("generate", "greedy", "kv-cache", "scratch"):
        assert mode in result.stdout


def test_json_and_sampling_share_one_seed(tiny_model_dir):
    args = ["compare", "Hello", "--model", str(tiny_model_dir), "-n", "6", "--sample", "--json"]
    data = json.loads(runner.invoke(app, args).stdout)
    assert data["agree"] is True and data["divergence"] is None
    seeds = {result["seed"] for result in data["results"].values()}
    assert len(seeds) == 1 and None not in seeds


@pytest.fixture
def scratch_goes_astray(monkeypatch):
    real = compare.generate_text

    def fourth_token_is_a_comma(loaded, prompt, mode, options, *args, **kwargs):
        result = real(loaded, prompt, mode, options, *args, **kwargs)
        if mode == "scratch":
            result.token_ids[3] = 11  # ","
        return result

    monkeypatch.setattr(compare, "generate_text", fourth_token_is_a_comma)


def test_disagreement_is_located_with_its_margin(tiny, tiny_model_dir, scratch_goes_astray):
    result = runner.invoke(
        app, ["compare", "Hello world", "--model", str(tiny_model_dir), "-n", "8", "--json"]
    )
    assert result.exit_code == 1
    divergence = json.loads(result.stdout)["divergence"]
    assert (
        divergence["index"] == 3 and divergence["other_mode"] == "scratch" and divergence["other_token"] == 11
    )
    reference = generate_text(tiny, "Hello world", "generate", DecodingOptions(max_new_tokens=8))
    prefix = reference.prompt_token_ids + reference.token_ids[:3]
    with torch.inference_mode():
        logits = tiny.model(torch.tensor([prefix])).logits[0, -1]
    assert abs(divergence["logit_margin"] - float(logits[reference.token_ids[3]] - logits[11])) < 1e-4
    assert divergence["near_tie"] is False
    table = runner.invoke(app, ["compare", "Hello world", "--model", str(tiny_model_dir), "-n", "8"])
    assert "modes disagree at new token 3" in table.stdout and "not a near-tie" in table.stdout
    assert "--dtype float32" not in table.stdout


def test_disagreement_in_bfloat16_points_to_float32(tiny_model_dir, scratch_goes_astray):
    args = ["compare", "Hello world", "--model", str(tiny_model_dir), "-n", "8", "--dtype", "bfloat16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "in bfloat16 every sum keeps only a few significant digits" in " ".join(result.stdout.split())
    assert "check agreement with --dtype float32" in " ".join(result.stdout.split())


def test_stopped_early_counts_as_divergence(tiny):
    results = {
        mode: generate_text(tiny, "Hi", mode, DecodingOptions(max_new_tokens=4))
        for mode in ("generate", "greedy")
    }
    results["greedy"].token_ids.pop()
    divergence = compare.find_divergence(tiny, results)
    assert divergence.index == 3 and divergence.other_token is None and divergence.logit_margin is None


def test_unknown_mode(tiny_model_dir):
    result = runner.invoke(app, ["compare", "Hi", "--model", str(tiny_model_dir), "--modes", "fast"])
    assert result.exit_code == 2 and "unknown mode 'fast'" in result.stderr


def test_ctrl_c_keeps_the_modes_run_so_far(tiny_model_dir, monkeypatch):
    from gencli import generation

    original_put = generation._RecordingStreamer.put
    calls = {"runs": 0}

    def interrupt_the_third_mode(self, value):
        original_put(self, value)
        if not hasattr(self, "counted"):
            self.counted = True
            calls["runs"] += 1
        if calls["runs"] == 3 and len(self.token_ids) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(generation._RecordingStreamer, "put", interrupt_the_third_mode)
    result = runner.invoke(app, ["compare", "Hello", "--model", str(tiny_model_dir), "-n", "6", "--json"])
    assert result.exit_code == 130, result.output
    data = json.loads(result.stdout)
    assert data["interrupted"] is True and data["agree"] is True
    assert list(data["results"]) == ["generate", "greedy", "kv-cache"]
    assert data["results"]["kv-cache"]["finish_reason"] == "interrupted"
    assert len(data["results"]["kv-cache"]["token_ids"]) == 2


def test_against_int8_runs_the_modes_on_both_weights(tiny_model_dir):
    argv = ["compare", "Hello world", "--model", str(tiny_model_dir), "-n", "8", "--modes", "kv-cache"]
    result = runner.invoke(app, [*argv, "--modes", "scratch", "--against", "int8", "--json"])
    data = json.loads(result.stdout)
    assert list(data["results"]) == [
        "kv-cache float32",
        "scratch float32",
        "kv-cache float32+int8",
        "scratch float32+int8",
    ]
    assert data["across_weights"] is True
    assert result.exit_code == (0 if data["agree"] else 1)
    same = runner.invoke(app, [*argv, "--against", "float32"])
    assert same.exit_code == 2
    assert (
        same.stderr == "gencli: error: --against float32 is what --dtype runs already; pick other weights\n"
    )
