import json

import pytest
from typer.testing import CliRunner

from gencli.batch import BatchJob, run_batch
from gencli.cli import app
from gencli.generation import generate_batch, generate_text
from gencli.settings import MODES, DecodingOptions
from tests.engines.test_agreement import first_new_token_index

runner = CliRunner()
LONG = " ".join(["It is a truth universally acknowledged, that a single man in want of a wife."] * 10)
# Very different lengths, and one with the end-of-text token inside it (the padding token too).
PROMPTS = [
    "Hi",
    LONG,
    "Call me Ishmael.",
    "The<|endoftext|> end",
    "Whenever I find myself growing grim about the mouth",
]


def lines(*records):
    return [json.dumps(record) if not isinstance(record, str) else record for record in records]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_batch_equals_one_at_a_time(tiny, mode, batch_size):
    options = DecodingOptions(max_new_tokens=10)
    job = BatchJob(mode, options, batch_size)
    records = list(run_batch(tiny, lines(*({"prompt": p} for p in PROMPTS)), job))
    assert [r["id"] for r in records] == ["1", "2", "3", "4", "5"]
    for prompt, record in zip(PROMPTS, records, strict=True):
        alone = generate_text(tiny, prompt, mode, options)
        assert record["token_ids"] == alone.token_ids
        assert record["text"] == alone.text and record["finish_reason"] == "length"


@pytest.mark.parametrize("mode", MODES)
def test_rows_stop_on_their_own_and_keep_their_logprobs(tiny, eos_as, mode):
    """One row ends at EOS, one at a stop string, one runs to the end: each equals its run alone,
    log-probabilities included, while the finished rows wait padded."""
    free = generate_text(tiny, "Call me Ishmael.", "kv-cache", DecodingOptions(max_new_tokens=12))
    index = first_new_token_index(free.token_ids, 2)
    loaded = eos_as(free.token_ids[index])
    stop = tiny.tokenizer.decode(
        generate_text(tiny, "Hi", "kv-cache", DecodingOptions(max_new_tokens=4)).token_ids[2:4]
    )
    options = DecodingOptions(max_new_tokens=12, stop=(stop,))
    prompts = ["Call me Ishmael.", "Hi", "Whenever I find myself"]
    results = generate_batch(loaded, prompts, mode, options, top_logprobs=3)
    for prompt, result in zip(prompts, results, strict=True):
        alone = generate_text(loaded, prompt, mode, options, top_logprobs=3)
        assert result.token_ids == alone.token_ids and result.finish_reason == alone.finish_reason
        assert [step["token"] for step in result.logprobs] == alone.token_ids
        for ours, theirs in zip(result.logprobs, alone.logprobs, strict=True):
            assert ours["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)
            assert [t["token"] for t in ours["top"]] == [t["token"] for t in theirs["top"]]
    assert [r.finish_reason for r in results][:2] == ["eos", "stop"]


def test_per_line_options_and_stops(tiny, eos_as):
    free = generate_text(tiny, "Call me Ishmael.", "kv-cache", DecodingOptions(max_new_tokens=12)).token_ids
    index = first_new_token_index(free, 3)
    loaded = eos_as(free[index])
    records = list(
        run_batch(
            loaded,
            lines(
                {"id": "eos", "prompt": "Call me Ishmael."},
                {"id": "short", "prompt": "Call me Ishmael.", "max_new_tokens": 2},
                {"id": "penalty", "prompt": "Hi", "repetition_penalty": 1.3},
            ),
            BatchJob("kv-cache", DecodingOptions(max_new_tokens=12), batch_size=4),
        )
    )
    by_id = {r["id"]: r for r in records}
    assert by_id["eos"]["finish_reason"] == "eos" and by_id["eos"]["token_ids"] == free[: index + 1]
    assert by_id["short"]["token_ids"] == free[:2] and by_id["short"]["finish_reason"] == "length"
    penalised = generate_text(
        loaded, "Hi", "kv-cache", DecodingOptions(max_new_tokens=12, repetition_penalty=1.3)
    )
    assert by_id["penalty"]["token_ids"] == penalised.token_ids


def test_bad_lines_get_error_records_and_the_rest_go_on(tiny):
    too_long = " ".join(["word"] * 1100)
    records = list(
        run_batch(
            tiny,
            lines(
                {"id": "ok", "prompt": "Hi"},
                "{not json",
                "[1, 2]",
                {"id": "x"},
                {"prompt": "Hi", "colour": "red"},
                {"prompt": "Hi", "top_p": 2},
                {"id": "ok", "prompt": "again"},
                {"id": "long", "prompt": too_long},
                {"id": "last", "prompt": "The end"},
            ),
            BatchJob("kv-cache", DecodingOptions(max_new_tokens=3), batch_size=4),
        )
    )
    assert [r.get("line") for r in records] == [None, 2, 3, 4, 5, 6, 7, 8, None]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert "not valid JSON" in errors[2] and "not a JSON object" in errors[3]
    assert "'prompt' must be a non-empty string" in errors[4] and "unknown key(s) 'colour'" in errors[5]
    assert "'top_p' must be a number in (0, 1]" in errors[6] and "duplicate id 'ok'" in errors[7]
    assert "exceeds the model's context" in errors[8]
    assert records[-1]["id"] == "last" and len(records[-1]["token_ids"]) == 3


def write_input(tmp_path, count=6):
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"Prompt number {i}"}) + "\n" for i in range(count))
    )
    return path


def test_cli_writes_results_in_input_order(tiny_model_dir, tmp_path):
    output = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        [
            "batch",
            str(write_input(tmp_path)),
            "--model",
            str(tiny_model_dir),
            "-n",
            "3",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"p{i}" for i in range(6)]
    assert all(set(r) == {"id", "text", "token_ids", "finish_reason"} for r in records)


def test_cli_reads_stdin_and_exits_1_on_bad_lines(tiny_model_dir):
    result = runner.invoke(
        app, ["batch", "-", "--model", str(tiny_model_dir), "-n", "2"], input='{"prompt": "Hi"}\nnope\n'
    )
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["id"] == "1" and records[1]["line"] == 2
    assert "1 line(s) failed" in result.stderr


def test_cli_resume_skips_finished_ids(tiny_model_dir, tmp_path):
    output = tmp_path / "out.jsonl"
    previous = [{"id": "p0", "text": "KEPT", "token_ids": [1], "finish_reason": "length"}]
    previous.append({"id": "p1", "line": 2, "error": "retry me"})
    output.write_text("".join(json.dumps(r) + "\n" for r in previous) + '{"id": "p2", "te')  # cut short
    args = [
        "batch",
        str(write_input(tmp_path)),
        "--model",
        str(tiny_model_dir),
        "-n",
        "2",
        "--output",
        str(output),
    ]
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert records[0]["text"] == "KEPT" and "error" not in records[1]


@pytest.mark.parametrize(
    ("args", "message"), [(["--resume"], "--resume needs --output"), (["--batch-size", "0"], "--batch-size")]
)
def test_cli_bad_options(tiny_model_dir, tmp_path, args, message):
    result = runner.invoke(app, ["batch", str(write_input(tmp_path)), "--model", str(tiny_model_dir), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_resume_refuses_a_file_gencli_did_not_write_and_leaves_it_alone(tiny_model_dir, tmp_path):
    output = tmp_path / "notes.txt"
    output.write_text("my own notes\nthat are not JSON\n")
    args = ["batch", str(write_input(tmp_path)), "--model", str(tiny_model_dir), "--output", str(output)]
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 2
    assert "line 1 is not a gencli batch record" in result.stderr
    assert output.read_text() == "my own notes\nthat are not JSON\n"


def test_output_naming_the_input_file_is_refused(tiny_model_dir, tmp_path):
    path = write_input(tmp_path)
    before = path.read_text()
    result = runner.invoke(app, ["batch", str(path), "--model", str(tiny_model_dir), "--output", str(path)])
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert path.read_text() == before


def test_a_byte_order_mark_a_deep_line_and_ids_in_error_records(tiny_model_dir, tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "first", "prompt": "Hello"}),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"id": "bad", "prompt": "Hi", "top_p": 5}),
        json.dumps({"id": "last", "prompt": "Bye"}),
    ]
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["batch", str(path), "--model", str(tiny_model_dir), "-n", "2"])
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["id"] for record in records] == ["first", None, "bad", "last"]
    assert "error" not in records[0] and "error" not in records[3]
    assert "nested too deeply" in records[1]["error"] and records[1]["line"] == 2
    assert "'top_p' must be a number" in records[2]["error"]


def test_cli_mode_and_top_logprobs(tiny_model_dir, tmp_path):
    source = write_input(tmp_path, count=3)
    outputs = {}
    for mode in ("generate", "scratch"):
        argv = ["batch", str(source), "--model", str(tiny_model_dir), "-n", "3", "--mode", mode]
        result = runner.invoke(app, [*argv, "--top-logprobs", "2"])
        assert result.exit_code == 0, result.output
        outputs[mode] = [json.loads(line) for line in result.stdout.splitlines()]
    for generated, scratch in zip(outputs["generate"], outputs["scratch"], strict=True):
        assert generated["token_ids"] == scratch["token_ids"]
        assert [step["token"] for step in scratch["logprobs"]] == scratch["token_ids"]
        assert all(len(step["top"]) == 2 for step in scratch["logprobs"])
        for ours, theirs in zip(generated["logprobs"], scratch["logprobs"], strict=True):
            assert ours["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)
