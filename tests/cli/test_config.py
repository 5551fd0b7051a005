"""`gencli config show` and `config path`: every source, and errors named as the user wrote them."""

import json

import pytest
from typer.testing import CliRunner

from gencli.cli import app
from gencli.settings import user_config_path
from tests.conftest import save_tiny_model

runner = CliRunner()


def show(*args, env=None):
    result = runner.invoke(app, ["config", "show", "--json", *map(str, args)], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def model_with_generation_config(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "top_k": 11,
                "top_p": 0.8,
                "temperature": 0.9,
                "min_p": 0.02,
                "eos_token_id": 1,
            }
        )
    )
    return folder


def test_all_five_sources_in_their_order(model_with_generation_config, tmp_path):
    user_config_path().parent.mkdir(parents=True)
    user_config_path().write_text(
        f"model = '{model_with_generation_config}'\ntop_p = 0.7\ntemperature = 0.5\n"
    )
    config = tmp_path / "run.toml"
    config.write_text("temperature = 0.6\nmax_new_tokens = 20\nseed = 5\n")
    data = show(
        "--config", config, "-n", 7, "-o", "min_p", "0.1", env={"GENCLI_SEED": "9", "GENCLI_MODE": "kv-cache"}
    )
    generation_config = str(model_with_generation_config / "generation_config.json")
    assert data["top_k"] == {"value": 11, "source": generation_config}
    assert data["sample"] == {"value": True, "source": generation_config}
    assert data["top_p"] == {"value": 0.7, "source": f"user config {user_config_path()}"}
    assert data["temperature"] == {"value": 0.6, "source": f"--config {config}"}
    assert data["seed"] == {"value": 9, "source": "GENCLI_SEED"}
    assert data["mode"] == {"value": "kv-cache", "source": "GENCLI_MODE"}
    assert data["max_new_tokens"] == {"value": 7, "source": "--max-new-tokens"}
    assert data["min_p"] == {"value": 0.1, "source": "-o min_p"}
    assert data["typical_p"] == {"value": 1.0, "source": "default"}


def test_a_preset_is_a_layer(model_with_generation_config):
    data = show("--preset", "focused", "--model", model_with_generation_config)
    assert data["mode"] == {"value": "kv-cache", "source": "preset 'focused'"}
    assert data["top_k"]["value"] == 11  # from the checkpoint, below the preset


def test_table_lists_every_key_with_its_source():
    result = runner.invoke(app, ["config", "show", "--top-k", "4"])
    assert result.exit_code == 0, result.output
    assert "Effective settings" in result.stdout
    assert "--top-k" in result.stdout and "default" in result.stdout


def test_path_follows_the_platform_config_directory(user_dirs):
    result = runner.invoke(app, ["config", "path"])
    assert result.stdout == f"{user_dirs / 'user-config' / 'gencli' / 'config.toml'}\n"


def one_line_error(result, expected):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == f"gencli: error: {expected}\n"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--top-p", "2"], None, "--top-p must be a number in (0, 1]; 1 turns it off, got 2.0"),
        (["-o", "top_p", "2"], None, "-o top_p must be a number in (0, 1]; 1 turns it off, got '2'"),
        ([], {"GENCLI_TOP_P": "2"}, "GENCLI_TOP_P must be a number in (0, 1]; 1 turns it off, got '2'"),
        (["--seed", str(2**64)], None, "--seed must be an integer in [0, 2**64), got 18446744073709551616"),
        (["--model", ""], None, "--model must be a Hugging Face hub id, a model folder or 'demo', got ''"),
        (
            ["--top-k", "3", "-o", "top_k", "4"],
            None,
            "--top-k and -o top_k both set 'top_k'; give one of them",
        ),
        (["-o", "top_k"], None, "-o takes a key and a value, as in '-o min_p 0.05'; got only 'top_k'"),
        (["--preset", "wild"], None, "unknown preset 'wild'; choose from creative, default, focused"),
    ],
)
def test_errors_name_the_key_as_the_user_wrote_it(args, env, expected):
    one_line_error(runner.invoke(app, ["config", "show", *args], env=env), expected)


def test_a_bad_user_config_file_is_named(user_dirs):
    user_config_path().parent.mkdir(parents=True)
    user_config_path().write_text("top_k = -3\n")
    result = runner.invoke(app, ["config", "show"])
    one_line_error(
        result, f"'top_k' in user config {user_config_path()} must be an integer, 0 (off) or more, got -3"
    )
