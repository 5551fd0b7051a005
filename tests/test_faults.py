"""Fault injection: Ctrl-C (SIGINT) or SIGTERM at each stage of a run. Both arrive as
KeyboardInterrupt, raised here where the stage runs. The exit status is 130 and what was already
written stays whole."""

import json

import pytest
from typer.testing import CliRunner

from gencli import generation, loading, prompt_cache
from gencli.cli import app
from gencli.cli.edge import Terminated

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
    monkeypatch.setattr(prompt_cache, "save_file", interrupt)
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
