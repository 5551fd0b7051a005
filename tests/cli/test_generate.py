"""Drive the real `gencli` command: exit codes, stdout/stderr contents, one-line errors."""

import json
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gencli import generation
from gencli.cli import app

runner = CliRunner()
JSON_KEYS = {"mode", "model", "prompt", "prompt_token_ids", "token_ids", "text", "finish_reason", "timings"}


def gencli(*args, input=None):
    return runner.invoke(app, ["generate", *map(str, args)], input=input)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gencli: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


def test_streams_text_to_stdout_and_timings_to_stderr(tiny_model_dir):
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 8)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and len(result.stdout) > 8
    assert "2 prompt tokens · 8 new tokens (length)" in result.stderr
    assert "tokens/s" in result.stderr and "first token" in result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # no escape codes off a terminal


def test_the_stats_line_counts_in_words_and_names_int8_weights_and_the_kernels(tiny_model_dir):
    result = gencli("Hi", "--model", tiny_model_dir, "-n", 1, "--quantize", "int8", "--kernels", "int8pack")
    assert result.exit_code == 0, result.output
    assert "kv-cache · 1 prompt token · 1 new token (length) · " in result.stderr
    assert result.stderr.endswith(" · cpu float32+int8 · kernels int8pack\n")
    result = gencli("Hi", "--model", tiny_model_dir, "-n", 1, "--mode", "generate")
    assert result.stderr.endswith(" · cpu float32 · kernels PyTorch's\n")


def test_every_mode_runs_without_a_warning_in_a_real_process(tiny_model_dir):
    # compare runs the four modes in one process; stderr must hold nothing, deprecations included.
    done = subprocess.run(
        [sys.executable, "-m", "gencli", "compare", "Hello", "--model", str(tiny_model_dir), "-n", "3"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and "agree" in done.stdout
    assert done.stderr == ""


def test_quiet_hides_timings(tiny_model_dir):
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 3, "--quiet")
    assert result.exit_code == 0 and result.stderr == ""


def test_json_output(tiny_model_dir):
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 4, "--json", "--mode", "kv-cache")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= JSON_KEYS
    assert set(data["timings"]) == {"load_s", "prefill_s", "decode_s", "ttft_s", "tokens_per_s", "total_s"}
    assert 0 < data["timings"]["load_s"] < data["timings"]["total_s"]
    assert data["mode"] == "kv-cache" and data["prompt"] == "Hello world"
    assert data["prompt_token_ids"] == [15496, 995]
    assert len(data["token_ids"]) == 4 and data["finish_reason"] == "length"
    assert "cache" not in data


def test_json_matches_streamed_text_in_every_mode(tiny_model_dir):
    texts = set()
    for mode in ("generate", "greedy", "kv-cache"):
        streamed = gencli("Hello world", "--model", tiny_model_dir, "-n", 10, "--mode", mode, "-q")
        as_json = json.loads(
            gencli("Hello world", "--model", tiny_model_dir, "-n", 10, "--mode", mode, "--json").stdout
        )
        assert streamed.stdout == as_json["text"] + "\n"
        texts.add(as_json["text"])
    assert len(texts) == 1


def test_json_with_cache(tiny_model_dir):
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 3, "--json", "--inspect-cache")
    data = json.loads(result.stdout)
    assert [layer["key_shape"] for layer in data["cache"]] == [[1, 4, 4, 16], [1, 4, 4, 16]]
    assert set(data["cache"][0]) == {
        "layer",
        "key_shape",
        "value_shape",
        "dtype",
        "positions",
        "capacity",
        "used_bytes",
        "bytes",
    }
    assert [s["seq_len"] for s in data["cache_snapshots"]] == [2, 4]


def test_inspect_cache_table(tiny_model_dir):
    result = gencli(
        "Hello world", "--model", tiny_model_dir, "-n", 3, "--mode", "kv-cache", "--inspect-cache", "-q"
    )
    assert result.exit_code == 0
    assert "KV cache after prefill: 2 of 5 positions in use" in result.stderr
    assert "KV cache at the end (3 new tokens): 4 of 5 positions in use" in result.stderr
    assert "4/5" in result.stderr  # positions used / allocated, per layer
    assert "[1, 4, 4, 16]" in result.stderr and "keys and values each" in result.stderr
    assert "KV cache" not in result.stdout


def test_inspect_cache_steps_table(tiny_model_dir):
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 3, "--inspect-cache-steps", "-q")
    assert "KV cache at every step" in result.stderr
    for seq_len in (2, 3, 4):
        assert f"[1, 4, {seq_len}, 16]" in result.stderr


def test_greedy_mode_says_there_is_no_cache(tiny_model_dir):
    result = gencli(
        "Hello world", "--model", tiny_model_dir, "-n", 3, "--mode", "greedy", "--inspect-cache", "-q"
    )
    assert result.exit_code == 0
    assert "greedy mode keeps no KV cache" in result.stderr


@pytest.mark.parametrize("prompt_args", [[], ["-"]])
def test_prompt_from_stdin(tiny_model_dir, prompt_args):
    result = gencli(*prompt_args, "--model", tiny_model_dir, "-n", 2, "--json", input="Hello world\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompt_token_ids"] == [15496, 995]


def test_config_file_and_flag_precedence(tiny_model_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('mode = "greedy"\nmax_new_tokens = 7\n')
    data = json.loads(gencli("Hi", "--model", tiny_model_dir, "--config", config, "--json").stdout)
    assert data["mode"] == "greedy" and len(data["token_ids"]) == 7
    data = json.loads(gencli("Hi", "--model", tiny_model_dir, "--config", config, "-n", 2, "--json").stdout)
    assert len(data["token_ids"]) == 2


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-n", "0"], ["--max-new-tokens must be an integer, at least 1, got 0"]),
        (
            ["--temperature", "-0.5"],
            ["--temperature must be a number, 0 (greedy) or at least 1e-06, got -0.5"],
        ),
        (["--top-p", "0"], ["--top-p must be a number in (0, 1]; 1 turns it off, got 0.0"]),
        (["--top-p", "1.01"], ["--top-p must be a number in (0, 1]"]),
        (["--top-k", "-1"], ["--top-k must be an integer, 0 (off) or more"]),
        (["--repetition-penalty", "0"], ["--repetition-penalty must be a number, at least 1e-06"]),
        # either would overflow the scores into NaN probabilities
        (
            ["--temperature", "1e-45", "--sample"],
            ["--temperature must be a number, 0 (greedy) or at least 1e-06"],
        ),
        (["--repetition-penalty", "1e-30"], ["--repetition-penalty must be a number, at least 1e-06"]),
        (["--top-k", "many"], ["Invalid value for '--top-k'", "--help"]),
        (["--mode", "fast"], ["'fast' is not one of 'generate', 'greedy', 'kv-cache'"]),
        (["--colour"], ["No such option: --colour"]),
        (["-n", "1023"], ["exceeds the model's context of 1024 tokens", "--max-new-tokens 1022 or less"]),
    ],
)
def test_bad_options(tiny_model_dir, args, fragments):
    assert_one_line_error(gencli("Hello world", "--model", tiny_model_dir, *args), *fragments)


@pytest.mark.parametrize("stdin", ["", "  \n"])
def test_empty_prompt(tiny_model_dir, stdin):
    assert_one_line_error(gencli("--model", tiny_model_dir, input=stdin), "prompt is empty")
    assert_one_line_error(gencli(stdin, "--model", tiny_model_dir), "prompt is empty")


def test_missing_model_folder(tmp_path):
    assert_one_line_error(gencli("Hi", "--model", tmp_path / "nope" / "model"), "does not exist", "--model")


def test_hub_model_not_cached_and_offline_without_fallback(hub_cache):
    result = gencli("Hi", "--model", "gpt2", "--no-fallback")
    assert_one_line_error(result, "'gpt2' is not in the local", "HF_HUB_OFFLINE", "folder", "--model demo")


def test_fallback_can_be_turned_off_in_a_config_file(hub_cache, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("fallback = false\n")
    assert_one_line_error(gencli("Hi", "--config", config), "'gpt2' is not in the local")


def test_falls_back_to_the_demo_model_with_one_notice(hub_cache):
    result = gencli("It is a truth universally acknowledged", "-n", "8", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "demo"
    assert result.stderr.splitlines()[0] == (
        "gencli: gpt2 is not cached and the hub is unreachable: using the bundled demo model "
        "(--no-fallback makes this an error)"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("colour = 'red'\n", "unknown key(s) 'colour'"),
        ("top_p = [\n", "not valid TOML"),
        ("top_k = -2\n", "'top_k'"),
    ],
)
def test_bad_config_file(tiny_model_dir, tmp_path, text, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert_one_line_error(gencli("Hi", "--model", tiny_model_dir, "--config", config), fragment)


def test_unreadable_config_file(tiny_model_dir, tmp_path):
    assert_one_line_error(gencli("Hi", "--config", tmp_path / "missing.toml"), "does not exist", "--config")


def test_interrupted_json_run_reports_partial_result(tiny_model_dir, monkeypatch):
    original_put = generation._RecordingStreamer.put

    def put_then_interrupt(self, value):
        original_put(self, value)
        if len(self.token_ids) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(generation._RecordingStreamer, "put", put_then_interrupt)
    result = gencli("Hello world", "--model", tiny_model_dir, "-n", 50, "--json")
    assert result.exit_code == 130
    data = json.loads(result.stdout)
    assert data["finish_reason"] == "interrupted" and len(data["token_ids"]) == 4


def run_gencli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "gencli", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.mark.parametrize("command", [["--help"], ["generate", "--help"]])
def test_help_imports_neither_torch_nor_transformers(command):
    code = (
        "import sys\nfrom gencli.cli import main\n"
        f"sys.argv = ['gencli', *{command!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: gencli" in done.stdout
    assert done.stderr.strip() == "False False"


def test_ctrl_c_and_sigterm_keep_output_and_exit_130(tiny_model_dir):
    # Both processes at once: each spends most of its time importing, on a core of its own.
    arguments = ("generate", "Hello", "--model", tiny_model_dir, "--mode", "greedy", "-n", 1000)
    processes = {
        signal.SIGINT: run_gencli(*arguments),
        signal.SIGTERM: run_gencli(*arguments, "--no-log"),
    }
    for stop_signal, process in processes.items():
        first_bytes = process.stdout.read(8)
        process.send_signal(stop_signal)
        rest, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        # the text printed before the signal stays, held-back text is flushed, and the line is ended
        assert len(first_bytes) == 8 and (first_bytes + rest).endswith(b"\n")
        assert b"Traceback" not in stderr
        assert b"(interrupted)" in stderr


def test_closed_pipe_exits_quietly(tiny_model_dir):
    process = run_gencli("generate", "Hello", "--model", tiny_model_dir, "--mode", "greedy", "-n", 1000)
    assert len(process.stdout.read(20)) == 20
    process.stdout.close()  # like `| head -c 20`
    stderr = process.stderr.read()
    assert process.wait(timeout=60) != 0
    assert stderr == b"", stderr


def test_checkpoint_generation_config_takes_part_and_beam_search_does_not_leak(tmp_path):
    from tests.conftest import save_tiny_model

    folder = save_tiny_model(tmp_path / "model")
    (folder / "generation_config.json").write_text(
        json.dumps({"num_beams": 4, "no_repeat_ngram_size": 2, "eos_token_id": 50256, "bos_token_id": 50256})
    )
    texts = set()
    for mode in ("generate", "kv-cache"):
        result = gencli("Hello world", "--model", folder, "-n", 12, "--mode", mode, "--json", "-q")
        assert result.exit_code == 0, result.output
        assert result.stderr == (
            "gencli: the checkpoint's generation_config.json sets num_beams, which gencli cannot run "
            "identically in every mode: ignored\n"
        )
        texts.add(tuple(json.loads(result.stdout)["token_ids"]))
    assert len(texts) == 1  # generate mode ran no beam search


def test_a_bad_checkpoint_value_names_the_file(tmp_path):
    from tests.conftest import save_tiny_model

    folder = save_tiny_model(tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({"top_p": 3.0}))
    assert_one_line_error(
        gencli("Hi", "--model", folder),
        f"'top_p' in {folder / 'generation_config.json'} must be a number in (0, 1]",
    )


def test_a_prompt_cache_that_is_not_a_regular_file_is_refused(tiny_model_dir, tmp_path):
    assert_one_line_error(
        gencli("Hi", "--model", tiny_model_dir, "--mode", "kv-cache", "--prompt-cache", "/dev/null"),
        "--prompt-cache /dev/null is not a regular file",
    )


def test_a_file_name_holding_a_line_break_stays_one_line(tiny_model_dir):
    result = gencli("--model", tiny_model_dir, "-f", "notes\x1e.txt\nmore")
    assert_one_line_error(result, "cannot read the prompt file notes\\x1e.txt\\nmore")


def test_stdin_that_is_not_utf8_is_one_line(tiny_model_dir):
    result = runner.invoke(app, ["generate", "--model", str(tiny_model_dir)], input=b"\xff\xfe binary")
    assert_one_line_error(result, "stdin is not UTF-8 text (byte 0xff at offset 0)")


def test_an_argument_that_is_not_utf8_is_one_line(tiny_model_dir):
    # Python hands argv bytes that are not UTF-8 over as surrogates
    assert_one_line_error(
        gencli("caf\udce9", "--model", tiny_model_dir), "the prompt is not valid UTF-8 text"
    )


def test_a_full_disk_on_stdout_is_one_line_and_exit_1(tiny_model_dir):
    for args in (["models"], ["generate", "Hello", "--model", str(tiny_model_dir), "-n", "4", "--no-log"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "gencli", *args],
                stdout=full,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
        assert done.returncode == 1
        assert (
            done.stderr.decode().splitlines()[-1]
            == "gencli: error: cannot write the output: No space left on device"
        )
        assert b"Traceback" not in done.stderr


def test_top_logprobs_in_json_and_as_a_table(tiny_model_dir):
    data = json.loads(
        gencli("Hello world", "--model", tiny_model_dir, "-n", 3, "--top-logprobs", 2, "--json", "-q").stdout
    )
    assert len(data["logprobs"]) == 3 and all(len(step["top"]) == 2 for step in data["logprobs"])
    assert {"token", "text", "bytes", "logprob", "top"} == set(data["logprobs"][0])
    table = gencli("Hello world", "--model", tiny_model_dir, "-n", 3, "--top-logprobs", 2)
    assert table.exit_code == 0 and "Next-token probabilities" in table.stderr
    assert "logprobs" not in json.loads(
        gencli("Hi", "--model", tiny_model_dir, "-n", 2, "--json", "-q").stdout
    )


def test_show_probs_off_a_terminal_prints_the_same_text(tiny_model_dir):
    for mode in ("generate", "kv-cache"):
        plain = gencli("Ça va? Hello", "--model", tiny_model_dir, "-n", 6, "--mode", mode, "-q")
        shown = gencli("Ça va? Hello", "--model", tiny_model_dir, "-n", 6, "--mode", mode, "--show-probs")
        assert shown.exit_code == 0 and shown.stdout == plain.stdout
        assert "Next-token probabilities" in shown.stderr
    refused = gencli("Hi", "--show-probs", "--server", "http://127.0.0.1:9")
    assert_one_line_error(refused, "--show-probs is for local runs")


def test_speculation_flags_the_stats_line_and_its_errors(tiny_model_dir, tmp_path):
    prompt = "one two three four one two three four one two"
    plain = gencli(prompt, "--model", tiny_model_dir, "-n", 12, "--json")
    result = gencli(
        prompt, "--model", tiny_model_dir, "-n", 12, "--speculate", "ngram", "--speculative-tokens", 3
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == json.loads(plain.stdout)["text"] + "\n"
    line = result.stderr.strip().splitlines()[-1]
    assert " · speculate ngram: " in line and " tokens/pass, " in line and line.endswith(" saved")
    record = json.loads(
        gencli(prompt, "--model", tiny_model_dir, "-n", 12, "-o", "speculate", "ngram", "--json").stdout
    )
    assert record["token_ids"] == json.loads(plain.stdout)["token_ids"]
    assert record["speculation"]["method"] == "ngram" and record["speculation"]["speculative_tokens"] == 4
    assert_one_line_error(
        gencli("Hi", "--model", tiny_model_dir, "--speculative-tokens", 0),
        "--speculative-tokens must be an integer, at least 1, got 0",
    )
    assert_one_line_error(
        gencli("Hi", "--model", tiny_model_dir, "--speculate", "draft"),
        "speculate draft needs a draft model: give --draft-model MODEL",
    )
    assert_one_line_error(
        gencli("Hi", "--model", tiny_model_dir, "--speculate", "draft", "--draft-model", "demo"),
        "draft model 'demo' has another tokenizer than",
    )


def test_a_kernel_that_cannot_run_the_models_weights_is_one_line(tiny_model_dir):
    result = gencli("Hi", "--model", tiny_model_dir, "-n", 1, "--kernels", "int8pack")
    assert_one_line_error(result, "kernel 'int8pack' runs int8 weights and this model's are float32")
    result = gencli("Hi", "--model", tiny_model_dir, "-n", 1, "--kernels", "fastest")
    assert_one_line_error(result, "'fastest' is not one of 'auto', 'bmm-split'")
