"""`gencli chat` off a terminal: stdin lines are turns or /commands, one JSON record per turn."""

import json

import pytest
from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()


def chat(model, lines, *args):
    result = runner.invoke(
        app,
        ["chat", "--model", str(model), "--mode", "kv-cache", "-n", "8", *map(str, args)],
        input="".join(line + "\n" for line in lines),
    )
    return result


def records(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


def one_shot(model, prompt, *args):
    result = runner.invoke(
        app,
        ["generate", prompt, "--model", str(model), "--mode", "kv-cache", "-n", "8", "--json", "-q", *args],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_turns_reuse_the_cache_and_equal_generate_on_the_transcript(tiny_model_dir):
    result = chat(tiny_model_dir, ["Good morning.", "What news?", "Goodbye."], "--json")
    assert result.exit_code == 0, result.output
    turns = records(result)
    assert [turn["turn"] for turn in turns] == [1, 2, 3]
    assert turns[0]["cache"]["reused"] == 0
    assert all(turn["cache"]["reused"] > 0 for turn in turns[1:])
    transcript = ""
    for entry, turn in zip(["Good morning.", "What news?", "Goodbye."], turns, strict=True):
        prompt = transcript + f"\nUser: {entry}\nAssistant:"
        expected = one_shot(tiny_model_dir, prompt)
        assert turn["token_ids"] == expected["token_ids"]
        assert turn["cache"]["reused"] + turn["cache"]["prefilled"] == len(expected["prompt_token_ids"])
        transcript = prompt + turn["text"]
    # one stats line per turn on stderr
    assert result.stderr.count("tokens from the cache") == 3


def test_plain_replies_go_to_stdout_one_per_turn(tiny_model_dir):
    result = chat(tiny_model_dir, ["Hello", "Again"], "-q")
    assert result.exit_code == 0 and result.stderr == ""
    expected = one_shot(tiny_model_dir, "\nUser: Hello\nAssistant:")["text"]
    assert result.stdout.startswith(expected + "\n")


def test_undo_then_the_same_line_gives_the_same_turn(tiny_model_dir):
    result = chat(tiny_model_dir, ["Hello", "What news?", "/undo", "What news?"], "--json")
    assert result.exit_code == 0, result.output
    _, second, again = records(result)
    assert again["token_ids"] == second["token_ids"] and again["turn"] == 2  # the undone turn is gone
    assert again["cache"]["reused"] >= second["cache"]["reused"]
    assert "dropped the last turn" in result.stderr


def test_save_in_one_process_and_load_in_another(tiny_model_dir, tmp_path):
    path = tmp_path / "talk.safetensors"
    whole = records(chat(tiny_model_dir, ["Hello", "What news?", "Goodbye."], "--json"))
    saved = chat(tiny_model_dir, ["Hello", "What news?", f"/save {path}"], "--json")
    assert saved.exit_code == 0 and "saved 2 turns" in saved.stderr
    loaded = chat(tiny_model_dir, [f"/load {path}", "Goodbye."], "--json")
    assert loaded.exit_code == 0, loaded.output
    (turn,) = records(loaded)
    assert turn["token_ids"] == whole[2]["token_ids"]
    assert turn["cache"]["reused"] == whole[2]["cache"]["reused"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/set top_p 2", "gencli: error: /set top_p must be a number in (0, 1]; 1 turns it off, got '2'"),
        (
            "/set num_beams 4",
            "gencli: error: /set num_beams: 'num_beams' is a Hugging Face generation option",
        ),
        ("/set top_p", "gencli: error: /set takes KEY VALUE"),
        ("/load nowhere.safetensors", "gencli: error: nowhere.safetensors does not exist; check the path"),
        ("/frobnicate", "gencli: error: unknown command /frobnicate; /help lists them"),
    ],
)
def test_a_bad_command_is_one_line_and_the_session_goes_on(tiny_model_dir, line, message):
    result = chat(tiny_model_dir, ["Hello", line, "Again"], "--json", "-q")
    assert result.exit_code == 1  # a line failed
    assert [turn["turn"] for turn in records(result)] == [1, 2]
    (error,) = result.stderr.splitlines()
    assert error.startswith(message)


def test_set_changes_the_next_turn_like_the_flag(tiny_model_dir):
    via_set = records(chat(tiny_model_dir, ["/set max_new_tokens 3", "Hello"], "--json"))
    via_flag = records(chat(tiny_model_dir, ["Hello"], "--json", "-n", "3"))
    assert via_set[0]["token_ids"] == via_flag[0]["token_ids"] and len(via_set[0]["token_ids"]) == 3


def test_show_cache_and_help_go_to_stderr(tiny_model_dir):
    result = chat(
        tiny_model_dir, ["Hello", "/show", "/cache", "/help", "/quit", "Never sent"], "--json", "-q"
    )
    assert result.exit_code == 0
    assert len(records(result)) == 1
    assert "transcript" in result.stderr and "of 1024 tokens" in result.stderr
    assert "KV cache now:" in result.stderr and "/1024" in result.stderr
    assert "/undo" in result.stderr


def test_a_first_prompt_argument_is_the_first_turn(tiny_model_dir):
    result = runner.invoke(
        app,
        ["chat", "Hello", "--model", str(tiny_model_dir), "--mode", "scratch", "-n", "4", "--json", "-q"],
        input="",
    )
    assert [turn["turn"] for turn in records(result)] == [1]


def test_raw_continues_the_text_as_it_is(tiny_model_dir):
    turns = records(chat(tiny_model_dir, ["It is a truth"], "--raw", "--json", "-q"))
    assert turns[0]["token_ids"] == one_shot(tiny_model_dir, "It is a truth")["token_ids"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "greedy"], "greedy mode keeps no KV cache"),
        (["--raw", "--template", "{text}"], "--raw and --template both"),
        (["--template", "no slot"], "needs '{text}' exactly once"),
    ],
)
def test_refusals_before_the_session(tiny_model_dir, args, message):
    result = runner.invoke(app, ["chat", "--model", str(tiny_model_dir), *args], input="Hello\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("gencli: error: ") and message in result.stderr


def test_a_line_that_is_not_utf8_is_refused_and_the_session_goes_on(tiny_model_dir):
    result = runner.invoke(
        app,
        ["chat", "--model", str(tiny_model_dir), "--mode", "kv-cache", "-n", "4", "--json", "-q"],
        input=b"Hello\n\xff bad\nAgain\n",
    )
    assert result.exit_code == 1
    assert [turn["turn"] for turn in records(result)] == [1, 2]
    assert result.stderr.startswith("gencli: error: the prompt is not valid UTF-8 text")
