"""`gencli tokenize` and `gencli detokenize`."""

import json

import pytest
from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()
KNOWN = "Hello world! The meaning of life is"
KNOWN_IDS = [15496, 995, 0, 383, 3616, 286, 1204, 318]


def test_ids_and_back(tiny_model_dir):
    ids = runner.invoke(app, ["tokenize", KNOWN, "--model", str(tiny_model_dir), "--ids"])
    assert ids.exit_code == 0 and ids.stdout == " ".join(map(str, KNOWN_IDS)) + "\n"
    text = runner.invoke(app, ["detokenize", *map(str, KNOWN_IDS), "--model", str(tiny_model_dir)])
    assert text.exit_code == 0 and text.stdout == KNOWN + "\n"


def test_the_readme_example_runs_offline_on_the_bundled_gpt2_tokenizer(hub_cache, monkeypatch):
    monkeypatch.setattr(
        "gencli.hub.hub_is_reachable", lambda: pytest.fail("tokenizing for gpt2 asked the hub")
    )
    ids = runner.invoke(app, ["tokenize", "--ids", "Hello world"])
    assert ids.exit_code == 0 and ids.stdout == "15496 995\n" and ids.stderr == ""
    text = runner.invoke(app, ["detokenize", "15496", "995", "0", "-m", "openai-community/gpt2"])
    assert text.exit_code == 0 and text.stdout == "Hello world!\n"


def test_table_and_count(tiny_model_dir):
    result = runner.invoke(app, ["tokenize", "Ça va?", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} tokens"
    assert any(line.split()[-1] == "\\xc3" for line in lines[:-1])  # Ç is split across two tokens


def test_json(tiny_model_dir):
    data = json.loads(
        runner.invoke(app, ["tokenize", KNOWN, "--model", str(tiny_model_dir), "--json"]).stdout
    )
    assert data["count"] == 8 and [token["id"] for token in data["tokens"]] == KNOWN_IDS
    assert data["tokens"][1] == {"id": 995, "text": " world", "bytes": list(b" world"), "label": "·world"}


def test_an_id_outside_the_vocabulary_is_one_line(tiny_model_dir):
    result = runner.invoke(app, ["detokenize", "50257", "--model", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert result.stderr.startswith("gencli: error: token id 50257 is not in ")
    assert "vocabulary of 50257 tokens (0 to 50256)" in result.stderr
