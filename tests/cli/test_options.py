"""Options shared by the commands: where the prompt comes from, and `-o KEY VALUE`."""

import json

import pytest
from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()


def prompt_of(*args, input=None, model):
    result = runner.invoke(
        app, ["generate", *map(str, args), "--model", str(model), "-n", "1", "--json"], input=input
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["prompt"]


def test_piped_text_comes_first_then_the_argument(tiny_model_dir):
    assert prompt_of("Summary:", input="Some notes.\n", model=tiny_model_dir) == "Some notes.\nSummary:"


def test_argument_alone_and_stdin_alone(tiny_model_dir):
    assert prompt_of("Hello", model=tiny_model_dir) == "Hello"
    assert prompt_of(input="Hello\n", model=tiny_model_dir) == "Hello"
    assert prompt_of("-", input="Hello\n", model=tiny_model_dir) == "Hello"


def test_prompt_file_then_argument(tiny_model_dir, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("Line one.\nLine two.\n")
    assert prompt_of("-f", file, "Summary:", model=tiny_model_dir) == "Line one.\nLine two.\nSummary:"
    # with -f, stdin is left alone
    assert prompt_of("--file", file, input="ignored", model=tiny_model_dir) == "Line one.\nLine two."


def test_missing_prompt_file(tiny_model_dir, tmp_path):
    result = runner.invoke(
        app, ["generate", "-f", str(tmp_path / "nope.txt"), "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("gencli: error: cannot read the prompt file") and "-f path" in result.stderr
    )


@pytest.mark.parametrize("value", ["-0.5", "--", "-n"])
def test_option_values_may_look_like_flags(tiny_model_dir, value):
    # -o always takes the next two words, as click's nargs=2 would
    result = runner.invoke(app, ["config", "show", "--json", "-o", "stop", value])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stop"]["value"] == [value]


def test_option_changes_the_run(tiny_model_dir):
    plain = runner.invoke(app, ["generate", "Hello", "--model", str(tiny_model_dir), "-n", "8", "--json"])
    banned = json.loads(plain.stdout)["token_ids"][0]
    args = [
        "generate",
        "Hello",
        "--model",
        str(tiny_model_dir),
        "-n",
        "8",
        "--json",
        "-o",
        "suppress_tokens",
        banned,
    ]
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    assert banned not in json.loads(result.stdout)["token_ids"]
