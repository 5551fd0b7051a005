"""Property-based checks over the command line and the file formats (hypothesis): whatever the
input, the exit status is one of the documented ones, and stderr holds no traceback."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gencli.cli import app
from gencli.settings import SETTING_KEYS

runner = CliRunner()
DOCUMENTED = {0, 1, 2, 130}
FLAGS = [
    "--max-new-tokens",
    "--temperature",
    "--top-k",
    "--top-p",
    "--repetition-penalty",
    "--no-repeat-ngram-size",
    "--seed",
    "--stop",
    "--mode",
    "--device",
    "--dtype",
    "--model",
    "--preset",
]
# argv and the environment cannot hold NUL: no program ever receives one there.
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
)
values = st.one_of(
    texts,
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["", "-1", "nan", "inf", "1e309", str(2**70)]),
)
quick = settings(max_examples=28, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_clean(result):
    assert result.exit_code in DOCUMENTED, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("gencli: error: ")


@quick
@given(st.lists(st.tuples(st.sampled_from(FLAGS), values), max_size=4))
def test_any_flag_values(pairs):
    argv = ["config", "show", "--json"] + [word for pair in pairs for word in pair]
    result = runner.invoke(app, argv)
    assert_clean(result)
    if result.exit_code == 0:
        json.loads(result.stdout)


@quick
@given(st.lists(st.tuples(st.sampled_from([*SETTING_KEYS, "colour"]), values), max_size=3))
def test_any_option_and_environment_values(pairs):
    argv = ["config", "show"] + [word for key, value in pairs for word in ("-o", key, value)]
    assert_clean(runner.invoke(app, argv))
    environment = {f"GENCLI_{key.upper()}": value for key, value in pairs}
    assert_clean(runner.invoke(app, ["config", "show"], env=environment))


@quick
@given(st.binary(max_size=200) | st.text(alphabet=string.printable, max_size=200).map(str.encode))
def test_any_toml_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_bytes(data)
    assert_clean(runner.invoke(app, ["config", "show", "--config", str(path)]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=100))
def test_any_bytes_on_stdin(tiny_model_dir, data):
    result = runner.invoke(
        app, ["generate", "--model", str(tiny_model_dir), "-n", "1", "-q", "--no-log"], input=data
    )
    assert_clean(result)


line_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
lines = st.one_of(
    st.dictionaries(
        st.sampled_from(["id", "prompt", "max_new_tokens", "top_p", "stop", "seed", "colour"]), line_values
    ),
    line_values,
).map(json.dumps) | st.text(max_size=40)


@settings(max_examples=7, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, min_size=1, max_size=4))
def test_any_jsonl_lines(tiny_model_dir, batch_lines):
    data = "\n".join([*batch_lines, json.dumps({"id": "fine", "prompt": "Hello"})]) + "\n"
    result = runner.invoke(app, ["batch", "-", "--model", str(tiny_model_dir), "-n", "1"], input=data)
    assert_clean(result)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[-1]["id"] == "fine" and "error" not in records[-1]  # bad lines never sink the rest


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory, tiny_model_dir):
    path = tmp_path_factory.mktemp("cache") / "p.safetensors"
    argv = ["generate", "Hello world", "--model", str(tiny_model_dir), "--mode", "kv-cache", "-n", "1", "-q"]
    assert runner.invoke(app, [*argv, "--prompt-cache", str(path), "--no-log"]).exit_code == 0
    return path.read_bytes()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=4000), st.binary(max_size=16))
def test_any_damaged_prompt_cache(tiny_model_dir, tmp_path_factory, cache_file, cut, junk):
    path = tmp_path_factory.mktemp("damaged") / "p.safetensors"
    path.write_bytes(cache_file[:cut] + junk)
    argv = [
        "generate",
        "Hello world",
        "--model",
        str(tiny_model_dir),
        "--mode",
        "kv-cache",
        "-n",
        "2",
        "--json",
    ]
    result = runner.invoke(app, [*argv, "--prompt-cache", str(path), "--prompt-cache-ro", "-q", "--no-log"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr
    assert len(json.loads(result.stdout)["token_ids"]) == 2  # refused or used, the output is whole


def _command_options() -> dict[str, list[str]]:
    """Every command that runs here and ends on its own (not chat, serve, explore, pull, bench),
    with the long names of its options."""
    import typer.main

    root = typer.main.get_command(app)
    options = {}
    for name, command in root.commands.items():
        if name in ("chat", "serve", "explore", "pull", "bench", "config"):
            continue
        options[name] = [
            flag for parameter in command.params for flag in parameter.opts if flag.startswith("--")
        ]
    return options


COMMAND_OPTIONS = _command_options()
command_argv = st.sampled_from(sorted(COMMAND_OPTIONS)).flatmap(
    lambda command: st.tuples(
        st.just(command),
        st.lists(st.tuples(st.sampled_from(COMMAND_OPTIONS[command]), values), max_size=3),
        st.lists(values, max_size=2),
    )
)


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command_argv)
def test_any_argv_for_every_command(tiny_model_dir, user_dirs, monkeypatch, drawn):
    monkeypatch.chdir(user_dirs)  # a drawn --png name is written here, never into the checkout
    command, pairs, arguments = drawn
    argv = [command, *arguments, *(word for pair in pairs for word in pair)]
    if any(flag == "--model" for flag, _ in pairs):
        argv += ["--no-fallback"]  # a name that is no folder must not wait for the hub
    else:
        argv += ["--model", str(tiny_model_dir)] if "--model" in COMMAND_OPTIONS[command] else []
    result = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1"})
    assert_clean(result)


MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(MODEL_FILES),
        st.sampled_from(["whole", "missing", "empty", "truncated", "junk"]),
        min_size=1,
    ),
    st.binary(min_size=1, max_size=64),
)
def test_any_damaged_model_folder(tiny_model_dir, tmp_path_factory, damage, junk):
    folder = tmp_path_factory.mktemp("model")
    for name in MODEL_FILES:
        original = (tiny_model_dir / name).read_bytes() if (tiny_model_dir / name).exists() else None
        state = damage.get(name, "whole")
        if original is None or state == "missing":
            continue
        data = {"whole": original, "empty": b"", "truncated": original[: len(original) // 2], "junk": junk}[
            state
        ]
        (folder / name).write_bytes(data)
    result = runner.invoke(app, ["generate", "Hi", "--model", str(folder), "-n", "2", "--no-log"])
    assert_clean(result)
