"""The root command: usage, -h, the version, shell completion, and a start-up free of torch."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gencli import __version__
from gencli.cli import app

runner = CliRunner()


def test_bare_gencli_prints_the_usage_on_stdout_and_succeeds():
    result = runner.invoke(app, [], prog_name="gencli")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: gencli") and "generate" in result.stdout


@pytest.mark.parametrize("command", [[], ["generate"], ["config", "show"], ["models"], ["logs"]])
def test_dash_h_is_help(command):
    result = runner.invoke(app, [*command, "-h"], prog_name="gencli")
    assert result.exit_code == 0 and result.stdout.startswith(" ".join(["Usage: gencli", *command]))


def test_version():
    assert runner.invoke(app, ["--version"]).stdout == f"gencli {__version__}\n"


def test_renamed_short_flags():
    help_text = runner.invoke(app, ["generate", "-h"]).stdout
    assert "-m, --model" in help_text and "-f, --file" in help_text and "-o, --option KEY VALUE" in help_text
    assert "-m, --mode " not in help_text and "-t," not in help_text and "-c," not in help_text


@pytest.mark.parametrize(
    "command",
    [["--help"], ["generate", "--help"], ["config", "show"], ["config", "path"], ["models"], ["logs"]],
)
def test_light_commands_import_neither_torch_nor_transformers(command):
    code = (
        "import sys\nfrom gencli.cli import main\n"
        f"sys.argv = ['gencli', *{command!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "False False", done.stderr


def complete(words: str, index: int) -> list[str]:
    env = {**os.environ, "_GENCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(index)}
    done = subprocess.run(
        [sys.executable, "-m", "gencli"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_shell_completion_of_commands_options_presets_and_models():
    assert complete("gencli gen", 1) == ["generate"]
    assert complete("gencli generate --pre", 2) == ["--presence-penalty", "--preset"]
    assert complete("gencli generate --preset ", 3) == ["creative", "default", "focused"]
    assert "demo" in complete("gencli generate -m ", 3)


def test_completion_script_for_the_shell():
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="gencli")
    assert result.exit_code == 0
    assert "_gencli_completion" in result.stdout and "complete " in result.stdout


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, {"GOMP_SPINCOUNT": "1000000"}),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
        ({"GOMP_SPINCOUNT": "10"}, {"GOMP_SPINCOUNT": "10", "OMP_WAIT_POLICY": None}),
    ],
)
def test_openmp_threads_spin_a_bounded_while_unless_the_user_says_otherwise(monkeypatch, user, expected):
    import gencli.cli

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["gencli", "--version"])
    with pytest.raises(SystemExit):
        gencli.cli.main()
    assert {name: os.environ.get(name) for name in expected} == expected
