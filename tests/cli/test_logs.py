"""The run history: every generate run is appended; `gencli logs` reads it back."""

import json

from typer.testing import CliRunner

from gencli import history
from gencli.cli import app

runner = CliRunner()


def generate(model, *args, env=None):
    result = runner.invoke(
        app, ["generate", *map(str, args), "--model", str(model), "-n", "3", "-q"], env=env
    )
    assert result.exit_code == 0, result.output
    return result


def test_runs_are_logged_and_read_back(tiny_model_dir):
    first = generate(tiny_model_dir, "Hello world")
    generate(tiny_model_dir, "Goodbye", "--mode", "kv-cache")
    runs = json.loads(runner.invoke(app, ["logs", "--json"]).stdout)
    assert [run["prompt"] for run in runs] == ["Hello world", "Goodbye"]
    assert runs[0]["text"] + "\n" == first.stdout and runs[1]["mode"] == "kv-cache"
    assert runs[0]["command"] == "generate" and len(runs[0]["token_ids"]) == 3
    assert runs[0]["settings"]["max_new_tokens"] == 3 and "time" in runs[0]

    last = json.loads(runner.invoke(app, ["logs", "-n", "1", "--json"]).stdout)
    assert [run["prompt"] for run in last] == ["Goodbye"]
    table = runner.invoke(app, ["logs"]).stdout
    assert "Hello world" in table and "kv-cache · 3 new tokens (length)" in table


def test_opting_out_by_flag_or_variable(tiny_model_dir):
    generate(tiny_model_dir, "Hello", "--no-log")
    generate(tiny_model_dir, "Hello", env={"GENCLI_LOG": "0"})
    assert not history.history_path().exists()
    assert runner.invoke(app, ["logs"]).stdout == "No runs recorded yet.\n"


def test_an_unwritable_history_costs_a_notice_not_the_output(tiny_model_dir, user_dirs):
    (user_dirs / "user-data").write_text("a file where the folder should be")
    result = runner.invoke(app, ["generate", "Hello", "--model", str(tiny_model_dir), "-n", "3", "-q"])
    assert result.exit_code == 0 and len(result.stdout) > 1
    assert result.stderr.startswith("gencli: could not write the history") and "--no-log" in result.stderr


def test_path():
    assert runner.invoke(app, ["logs", "--path"]).stdout == f"{history.history_path()}\n"
