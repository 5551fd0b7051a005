"""`gencli batch --ray`: the same records as the local run, on a local Ray instance shared by the
tests of this module."""

import builtins
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gencli.batch import BatchJob, run_batch
from gencli.cli import app
from gencli.settings import DecodingOptions

ray = pytest.importorskip("ray")

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def jsonl(records):
    return [json.dumps(record) for record in records]


def without_logprobs(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "logprobs"}


def logprob_values(record: dict) -> list[float]:
    return [
        value
        for step in record.get("logprobs", [])
        for value in (step["logprob"], *(alternative["logprob"] for alternative in step["top"]))
    ]


def test_resume_through_the_cli(tiny, tiny_model_dir, tmp_path, ray_instance):
    lines = jsonl({"id": str(i), "prompt": f"P {i}"} for i in range(5))
    lines[3] = "{not json"
    lines.insert(4, json.dumps({"id": "1", "prompt": "a duplicate id"}))
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    complete = "".join(
        json.dumps(record, ensure_ascii=False) + "\n"
        for record in run_batch(tiny, lines, BatchJob("generate", DecodingOptions(max_new_tokens=3)))
    )
    output = tmp_path / "out.jsonl"
    output.write_text("".join(complete.splitlines(keepends=True)[:2]))
    argv = ["batch", str(source), "--model", str(tiny_model_dir), "-n", "3", "--output", str(output)]
    plain = ["-o", "repetition_penalty", "1", "-o", "no_repeat_ngram_size", "0"]  # as DecodingOptions()
    result = runner.invoke(app, [*argv, "--ray", "--resume", *plain])
    assert result.exit_code == 1, result.output  # two lines failed
    assert result.stderr.endswith("gencli: 2 line(s) failed; their error records say why\n")
    assert output.read_text() == complete
    records = [json.loads(line) for line in complete.splitlines()]
    assert [record.get("id") for record in records] == ["0", "1", "2", None, "1", "4"]
    assert "not valid JSON" in records[3]["error"] and "duplicate id '1'" in records[4]["error"]


def ray_workers() -> list[int]:
    """The pids of this machine's Ray Data actors (their process title names the map worker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"MapWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_worker_is_replaced_and_the_records_equal_the_local_run(tiny, tiny_model_dir, ray_instance):
    from gencli.ray_batch import run_batch_on_ray

    count = 16
    lines = jsonl({"id": str(i), "prompt": "Prompt " * (i % 4 + 1) + str(i)} for i in range(count))
    job = BatchJob("kv-cache", DecodingOptions(max_new_tokens=12), batch_size=2, top_logprobs=1)
    records = []

    def run():
        records.extend(run_batch_on_ray(lines, job, ("tiny", tiny_model_dir), "cpu", "auto", workers=1))

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while len(records) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = ray_workers()
    assert victims, "no Ray worker to kill"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    written_before_the_kill = len(records)
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert 2 <= written_before_the_kill < count  # killed mid-job; a new worker finished it
    assert [r["id"] for r in records] == [str(i) for i in range(count)]
    # A worker decodes on one thread, this process on two: the one-row products add in another
    # order, so log-probabilities agree to rounding (1e-4, as between the modes); the rest exactly.
    local = list(run_batch(tiny, lines, job))
    assert [without_logprobs(record) for record in records] == [without_logprobs(record) for record in local]
    for ray_record, local_record in zip(records, local, strict=True):
        assert logprob_values(ray_record) == pytest.approx(logprob_values(local_record), abs=1e-4)


def test_without_the_extra_the_message_says_how_to_install_it(tiny_model_dir, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "Hi"}\n')
    result = runner.invoke(app, ["batch", str(source), "--model", str(tiny_model_dir), "--ray"])
    assert result.exit_code == 2
    assert (
        result.stderr == "gencli: error: --ray needs Ray Data, an optional extra: pip install 'gencli[ray]'\n"
    )
