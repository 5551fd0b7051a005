import json

from typer.testing import CliRunner

from gencli.catalog import DEMO_MODEL, bundled_model_dir, list_models, safetensors_parameters
from gencli.cli import app
from tests.conftest import populate_hub_cache

runner = CliRunner()


def test_parameter_count_from_safetensors_headers(tiny, tiny_model_dir):
    # model.parameters() counts the tied LM head once, as the file stores it
    assert safetensors_parameters(tiny_model_dir) == sum(p.numel() for p in tiny.model.parameters())


def test_lists_bundled_and_cached_models(tiny_model_dir, tmp_path):
    populate_hub_cache(tmp_path, "someone/tiny-gpt2", tiny_model_dir)
    entries = {entry.name: entry for entry in list_models(tmp_path)}
    assert entries[DEMO_MODEL].source == "bundled"
    assert entries[DEMO_MODEL].path == str(bundled_model_dir())
    cached = entries["someone/tiny-gpt2"]
    assert cached.source == "hub cache" and cached.model_type == "gpt2"
    assert cached.parameters == safetensors_parameters(tiny_model_dir)
    assert cached.size_bytes > 0


def test_models_command_json(tiny_model_dir, tmp_path, monkeypatch):
    populate_hub_cache(tmp_path, "someone/tiny-gpt2", tiny_model_dir)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [entry["name"] for entry in entries] == [DEMO_MODEL, "someone/tiny-gpt2"]
    assert all({"name", "path", "source", "parameters"} <= set(entry) for entry in entries)


def test_models_command_table(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert (
        "demo" in result.stdout and "No runnable hub models in the local Hugging Face cache" in result.stdout
    )


def test_cached_hub_model_loads_offline(tiny_model_dir, hub_cache):
    populate_hub_cache(hub_cache, "gpt2", tiny_model_dir)
    done = runner.invoke(app, ["generate", "Hello", "--model", "gpt2", "-n", "3", "--json", "--no-log"])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "gpt2"
    assert "demo" not in done.stderr
