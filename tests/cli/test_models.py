"""`gencli models`, `show` and `pull`, and refusing other architectures before any weights."""

import json
import re

import pytest
from typer.testing import CliRunner

from gencli.catalog import DEMO_MODEL
from gencli.cli import app
from tests.conftest import populate_hub_cache

runner = CliRunner()


def other_architecture(folder):
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (folder / "model.safetensors").write_bytes(b"not weights at all")
    return folder


def test_models_lists_what_gencli_cannot_run_apart(tiny_model_dir, hub_cache, tmp_path):
    populate_hub_cache(hub_cache, "someone/tiny-gpt2", tiny_model_dir)
    populate_hub_cache(hub_cache, "someone/llama", other_architecture(tmp_path / "llama"))
    entries = {entry["name"]: entry for entry in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    assert entries["someone/tiny-gpt2"]["runnable"] and entries[DEMO_MODEL]["runnable"]
    assert not entries["someone/llama"]["runnable"]
    assert entries["someone/llama"]["reason"] == "a 'llama' model; gencli runs GPT-2 models"

    table = runner.invoke(app, ["models"], terminal_width=80).stdout
    runnable, others = table.split("Cached models gencli cannot run")
    assert "someone/tiny-gpt2" in runnable and "someone/llama" not in runnable
    assert "someone/llama" in others and "'llama' model" in others


def test_models_table_wraps_paths_on_an_80_column_terminal(tiny_model_dir, hub_cache):
    snapshot = populate_hub_cache(hub_cache, "someone/tiny-gpt2", tiny_model_dir)
    assert len(str(snapshot)) > 80
    # TTY_COMPATIBLE: rich draws as on a terminal; NO_COLOR keeps escape codes out of the widths.
    on_a_terminal = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    table = runner.invoke(app, ["models"], terminal_width=80, env=on_a_terminal).stdout
    assert max(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in table.splitlines()) <= 80
    assert "…" not in table  # nothing is cut off


def test_off_a_terminal_a_path_stays_on_one_line(tiny_model_dir, hub_cache):
    snapshot = populate_hub_cache(hub_cache, "someone/tiny-gpt2", tiny_model_dir)
    table = runner.invoke(app, ["models"], terminal_width=80).stdout
    assert any(str(snapshot) in line for line in table.splitlines())


def test_another_architecture_is_refused_before_its_weights(tmp_path):
    folder = other_architecture(tmp_path / "llama")
    result = runner.invoke(app, ["generate", "Hi", "--model", str(folder)])
    assert result.exit_code == 2
    assert result.stderr == f"gencli: error: model '{folder}' is a 'llama' model; gencli runs GPT-2 models\n"


def test_a_folder_without_config_is_not_a_model(tmp_path):
    result = runner.invoke(app, ["generate", "Hi", "--model", str(tmp_path)])
    assert result.stderr == f"gencli: error: {tmp_path} is not a model folder: it has no config.json\n"


def test_show_describes_the_demo_model():
    result = runner.invoke(app, ["show", "demo", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["architecture"] == "GPT2LMHeadModel" and data["model_type"] == "gpt2"
    assert (data["layers"], data["heads"], data["width"], data["context_length"]) == (6, 8, 256, 512)
    assert data["vocab_size"] == 4096 and data["dtype"] == "float32" and data["runnable"]
    assert data["parameters"] > 5_000_000 and data["size_bytes"] > 1_000_000
    assert data["tokenizer"] == "tokenizer.json in the model folder"
    assert data["generation_config"]["eos_token_id"] == 0
    text = runner.invoke(app, ["show", "demo"]).stdout
    assert "GPT2LMHeadModel" in text and "512 tokens" in text


def test_show_a_folder_without_tokenizer(model_without_tokenizer):
    data = json.loads(runner.invoke(app, ["show", str(model_without_tokenizer), "--json"]).stdout)
    assert data["source"] == "folder"
    assert data["tokenizer"] == "none in the folder: gencli uses its bundled GPT-2 tokenizer"


def test_show_a_model_that_is_not_here(hub_cache):
    result = runner.invoke(app, ["show", "someone/else"])
    assert result.exit_code == 2
    assert "not here" in result.stderr and "gencli pull someone/else" in result.stderr


def test_pull_offline_is_one_line_before_any_retry(hub_cache, monkeypatch):
    def no_download(name):
        raise AssertionError("the hub client (and its retries) must not run offline")

    monkeypatch.setattr("gencli.hub.download_model", no_download)
    result = runner.invoke(app, ["pull", "someone/else"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "gencli: error: cannot pull 'someone/else': the Hugging Face hub is unreachable (or HF_HUB_OFFLINE "
        "is set); check the network or the HTTPS_PROXY setting\n"
    )


def test_pull_demo_goes_nowhere_near_the_hub(hub_cache, monkeypatch):
    monkeypatch.setattr("gencli.hub.hub_is_reachable", lambda: pytest.fail("pull demo asked the hub"))
    result = runner.invoke(app, ["pull", "demo"])
    assert result.exit_code == 0 and result.stderr == ""
    assert "demo" in result.stdout and "bundled" in result.stdout and "gencli pull" not in result.stdout


def test_pull_a_local_folder_is_one_line(tiny_model_dir, hub_cache):
    result = runner.invoke(app, ["pull", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"gencli: error: '{tiny_model_dir}' is a local folder, not a hub id: there is nothing to pull\n"
    )


def test_truncated_weights_are_one_line(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = runner.invoke(app, ["generate", "Hi", "--model", str(folder)])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"gencli: error: the weights of model '{folder}' in {folder} are damaged")


def test_a_folder_without_tokenizer_says_which_tokenizer_it_uses(model_without_tokenizer):
    result = runner.invoke(app, ["generate", "Hi", "--model", str(model_without_tokenizer), "-n", "2", "-q"])
    assert result.exit_code == 0
    assert result.stderr == (
        f"gencli: {model_without_tokenizer} has no tokenizer files: using gencli's bundled GPT-2 tokenizer\n"
    )
