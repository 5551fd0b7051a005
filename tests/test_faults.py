"""Fault injection: Ctrl-C (SIGINT) or SIGTERM at each stage of a run. Both arrive as
KeyboardInterrupt, raised here where the stage runs. The exit status is 130 and what was already
written stays whole. Then the other faults: each ends in one line and a documented status, and
keeps what was already produced."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gencli import generation, loading
from gencli.cli import app
from gencli.cli.edge import Terminated
from tests.conftest import save_tiny_model

runner = CliRunner()


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def stop_after_tokens(count, signal_class):
    original = generation._RecordingStreamer.put

    def put(self, value):
        original(self, value)
        if len(self.token_ids) == count:
            raise signal_class

    return put


@pytest.mark.parametrize("signal_class", [KeyboardInterrupt, Terminated], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("stage", ["load", "prefill", "decode"])
def test_an_interrupted_generate_keeps_its_output(tiny_model_dir, monkeypatch, stage, as_json, signal_class):
    if stage == "load":
        monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", interrupt)
    else:
        monkeypatch.setattr(
            generation._RecordingStreamer,
            "put",
            stop_after_tokens(0 if stage == "prefill" else 3, signal_class),
        )
    argv = [
        "generate",
        "Hello world",
        "--model",
        str(tiny_model_dir),
        "--mode",
        "kv-cache",
        "-n",
        "20",
        "--no-log",
    ]
    result = runner.invoke(app, argv + (["--json"] if as_json else []))
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    if stage == "load":
        assert result.stdout == ""
    elif as_json:
        record = json.loads(result.stdout)
        assert record["finish_reason"] == "interrupted"
        assert len(record["token_ids"]) == (0 if stage == "prefill" else 3)
    else:  # the text written before the signal stays, and the line is ended
        assert result.stdout == "" if stage == "prefill" else result.stdout.endswith("\n")
        assert "(interrupted)" in result.stderr


def test_an_interrupted_cache_save_leaves_the_old_file_whole(tiny_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "p.safetensors"
    options = ["--model", str(tiny_model_dir), "--mode", "kv-cache", "-n", "3", "--no-log"]
    options += ["--prompt-cache", str(path)]
    assert runner.invoke(app, ["generate", "Hello world", *options]).exit_code == 0
    before = path.read_bytes()

    def write_half_then_interrupt(self, data):
        with open(self, "wb") as partial:
            partial.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", write_half_then_interrupt)
    result = runner.invoke(app, ["generate", "Hello world, again", *options])
    assert result.exit_code == 130, result.stderr
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no partial file left


def test_an_interrupted_batch_keeps_the_records_written(tiny_model_dir, tmp_path, monkeypatch):
    from gencli import batch

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "prompt": f"Prompt {i}"}) + "\n" for i in range(6)))
    original = batch.decode_batch
    calls = {"count": 0}

    def decode_then_stop(loaded, items, job):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(loaded, items, job)

    monkeypatch.setattr(batch, "decode_batch", decode_then_stop)
    output = tmp_path / "out.jsonl"
    argv = ["batch", str(source), "--model", str(tiny_model_dir), "-n", "2", "--batch-size", "3"]
    result = runner.invoke(app, [*argv, "--output", str(output)])
    assert result.exit_code == 130
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["0", "1", "2"]


def test_a_destination_that_cannot_be_written_is_one_line(tiny_model_dir, tmp_path):
    # Below a regular file: no one can create it, root included (chmod does not stop root).
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    output = not_a_folder / "out.jsonl"
    result = runner.invoke(
        app, ["batch", str(source), "--model", str(tiny_model_dir), "--output", str(output)]
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"gencli: error: {output}: Not a directory; check the path\n"


def shell(command: str) -> subprocess.CompletedProcess:
    """`python -m gencli` under a shell, for redirections Python's subprocess cannot express."""
    return subprocess.run(
        ["bash", "-c", f"{sys.executable} -m gencli {command}"], capture_output=True, text=True, timeout=120
    )


def test_a_closed_stderr_costs_only_the_notices(tiny_model_dir):
    done = shell(f"generate Hello --model {tiny_model_dir} -n 4 --no-log 2>&-")
    assert done.returncode == 0 and len(done.stdout) > 4 and done.stdout.endswith("\n")


def test_a_closed_stdout_is_one_line_and_exit_1():
    done = shell("config show >&-")  # the same guard as generate's, without loading torch
    assert done.returncode == 1
    assert done.stderr == "gencli: error: cannot write the output: stdout is closed\n"


def test_a_prompt_cache_in_a_missing_folder_is_refused_before_the_run(tiny_model_dir, tmp_path):
    path = tmp_path / "missing" / "cache.safetensors"
    argv = [
        "generate",
        "Hi",
        "--model",
        str(tiny_model_dir),
        "--prompt-cache",
        str(path),
        "--json",
        "--no-log",
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"gencli: error: --prompt-cache {path}: the folder {path.parent} does not exist; create it or "
        "choose another path\n"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
def test_a_prompt_cache_that_cannot_be_written_keeps_the_record(tiny_model_dir):
    path = "/proc/gencli-prompt-cache.safetensors"
    argv = ["generate", "Hi", "--model", str(tiny_model_dir), "-n", "3", "--prompt-cache", path, "--json"]
    result = runner.invoke(app, [*argv, "--no-log", "--quiet"])
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)["token_ids"]) == 3
    assert result.stderr == f"gencli: could not write the prompt cache {path}: No such file or directory\n"


def test_a_tokenizer_larger_than_the_vocabulary_is_one_line(tmp_path):
    folder = save_tiny_model(tmp_path / "small-vocab", vocab_size=1000)  # with GPT-2's 50,257-token tokenizer
    result = runner.invoke(app, ["generate", "Call me Ishmael.", "--model", str(folder), "--no-log"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"gencli: error: model '{folder}' embeds 1000 tokens but its tokenizer has 50257; ids from 1000 on "
        "have no embedding: save the tokenizer it was trained with into its folder\n"
    )


def test_a_config_value_of_the_wrong_type_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "bad-config"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    result = runner.invoke(app, ["generate", "Hi", "--model", str(folder), "--no-log"])
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        f"gencli: error: the config.json of model '{folder}' in {folder} is not valid ("
    )
    assert "'n_layer'" in result.stderr and result.stderr.endswith("); fix or replace it\n")


def test_quantize_int8_on_a_width_the_kernel_cannot_take(tmp_path):
    folder = save_tiny_model(tmp_path / "n-embd-24", n_layer=1, n_head=2, n_embd=24)
    argv = ["generate", "Call me Ishmael.", "--model", str(folder), "--quantize", "int8", "-n", "3", "--json"]
    records = [
        json.loads(runner.invoke(app, [*argv, "--mode", mode, "--no-log"]).stdout)
        for mode in ("generate", "scratch")
    ]
    assert records[0]["token_ids"] == records[1]["token_ids"] and len(records[0]["token_ids"]) == 3
    assert records[0]["weights"] == "float32+int8"


def test_a_token_id_past_int64_is_one_line(tiny_model_dir):
    argv = ["generate", "Hi", "--model", str(tiny_model_dir), "-o", "suppress_tokens", str(2**63), "--no-log"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "gencli: error: -o suppress_tokens must be a list of token ids (integers in [0, 2**63)), "
        f"got '{2**63}'\n"
    )
