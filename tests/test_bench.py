import json
import statistics

import pytest
import torch
from transformers import GPT2LMHeadModel
from typer.testing import CliRunner

from gencli.bench import PeakMemory, Rooflines
from gencli.cli import app
from gencli.threads import thread_policy

runner = CliRunner()
SMALL = ["--lengths", "24,40", "--prompt-tokens", "4", "--new-tokens", "6", "--sweep-new-tokens", "4"]


def test_bench_json_and_plot(tiny_model_dir, tmp_path):
    plot = tmp_path / "bench.png"
    args = ["bench", "--model", str(tiny_model_dir), *SMALL, "--repeats", "2", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["mode"] for row in report["headline"]] == ["generate", "greedy", "kv-cache", "scratch"]
    assert [(row["prompt_tokens"], row["new_tokens"]) for row in report["headline"]] == [(4, 6)] * 4
    assert sorted({row["total_tokens"] for row in report["sweep"]}) == [24, 40] and len(report["sweep"]) == 8
    for row in report["headline"] + report["sweep"]:
        assert row["decode_tokens_per_s"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
        assert 0 < row["prefill_s"] <= row["ttft_s"]
        assert row["bandwidth_fraction"] > 0 and row["gemv_fraction"] > 0
    assert set(report["ratios"]) == {
        "kv_cache_vs_generate",
        "kv_cache_bandwidth_fraction",
        "kv_cache_gemv_fraction",
        "cache_vs_no_cache_at_40",
    }
    # A decode step reads every weight but the position table (one row of it); the token table
    # is read whole, as the tied LM head.
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    read = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    assert report["weight_bytes"] == 4 * read
    assert len(report["gemv_bandwidth_samples"]) == 2 * 3 and report["gemv_bandwidth_bytes_per_s"] > 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    samples = report["read_bandwidth_samples"]
    assert len(samples) == 2 * 3 and report["read_bandwidth_bytes_per_s"] == statistics.median(samples)


def test_compare_runs_the_headline_again_with_the_weights_stored_otherwise(tiny_model_dir):
    args = ["bench", "--model", str(tiny_model_dir), *SMALL, "--modes", "generate", "--modes", "kv-cache"]
    compare = ["--compare", "bfloat16", "--compare", "int8"]
    result = runner.invoke(app, [*args, "--repeats", "1", *compare, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    bfloat16, int8 = report["variants"]
    assert (report["weights"], bfloat16["weights"], int8["weights"]) == (
        "float32",
        "bfloat16",
        "float32+int8",
    )
    assert bfloat16["weight_bytes"] * 2 == report["weight_bytes"]
    assert int8["weight_bytes"] < report["weight_bytes"] / 3  # int8 projections and head, float32 scales
    assert int8["read_bandwidth_bytes_per_s"] == report["read_bandwidth_bytes_per_s"]
    assert [row["mode"] for row in int8["headline"]] == ["generate", "kv-cache"] and int8["sweep"] == []
    for variant, label in ((bfloat16, "bfloat16"), (int8, "float32_int8")):
        for mode, key in (("generate", "generate"), ("kv-cache", "kv_cache")):
            ours = next(r for r in report["headline"] if r["mode"] == mode)["decode_tokens_per_s"]
            theirs = next(r for r in variant["headline"] if r["mode"] == mode)["decode_tokens_per_s"]
            assert report["ratios"][f"{key}_{label}_vs_float32"] == pytest.approx(theirs / ours)
    table = runner.invoke(app, [*args, "--repeats", "1", "--warmup", "0", "--compare", "bfloat16+int8"])
    assert (
        "Headline run, bfloat16+int8" in table.stdout and "kv cache bfloat16 int8 vs float32" in table.stdout
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("float32", "--compare float32 runs float32, which this bench runs already"),
        ("int4", "--compare takes a dtype, int8 or DTYPE+int8 (bfloat16+int8), got 'int4'"),
    ],
)
def test_compare_must_name_other_weights(tiny_model_dir, spec, message):
    result = runner.invoke(app, ["bench", "--model", str(tiny_model_dir), "--compare", spec])
    assert result.exit_code == 2 and result.stderr == f"gencli: error: {message}\n"


def test_bench_table_and_arch(tiny_model_dir):
    args = ["bench", "--arch", "gpt2", "--modes", "kv-cache", "--lengths", "12", "--prompt-tokens", "4"]
    result = runner.invoke(app, [*args, "--new-tokens", "2", "--sweep-new-tokens", "2", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "gpt2 architecture, random weights" in result.stdout and "Headline run" in result.stdout
    assert "roofline, plain read: " in result.stdout and "roofline, one-row product (GEMV): " in result.stdout
    assert "(median of 2, one before each round of runs" in result.stdout
    assert f" thread{'' if torch.get_num_threads() == 1 else 's'} ({thread_policy()})" in result.stdout
    assert "load average" in result.stdout
    assert "[transformers]" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "a,b"], "--lengths takes comma-separated integers"),
        (["--lengths", "8", "--sweep-new-tokens", "8"], "must exceed --sweep-new-tokens"),
        (["--lengths", "2000"], "context of 1024"),
        (["--arch", "llama"], "unknown architecture 'llama'"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bench_bad_options(tiny_model_dir, args, message):
    result = runner.invoke(app, ["bench", "--model", str(tiny_model_dir), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_both_rooflines_are_measured():
    rooflines = Rooflines(torch.device("cpu"), megabytes=16)
    assert rooflines.read(repeats=2) > 1e8 and rooflines.gemv(repeats=2) > 1e8


def test_peak_memory_sees_an_allocation_freed_before_the_end():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)
        del block
    assert 60 * 2**20 < memory.peak_bytes < 100 * 2**20


def test_peak_memory_starts_from_the_level_at_entry():
    earlier = torch.ones(64 * 2**20 // 4)
    del earlier
    with PeakMemory(torch.device("cpu")) as memory:
        pass
    assert memory.peak_bytes < 16 * 2**20


def test_ctrl_c_prints_the_rows_measured_so_far_and_exits_130(tiny_model_dir, monkeypatch):
    from gencli import bench

    original = bench.generate_text
    calls = {"count": 0}

    def interrupt_later(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 9:  # after the headline's warm-ups and runs for both modes
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(bench, "generate_text", interrupt_later)
    args = ["bench", "--model", str(tiny_model_dir), "--modes", "kv-cache", "--modes", "greedy"]
    result = runner.invoke(
        app, [*args, "--lengths", "32", "--new-tokens", "4", "--sweep-new-tokens", "4", "--json"]
    )
    assert result.exit_code == 130, result.output
    report = json.loads(result.stdout)
    assert report["interrupted"] is True
    assert [row["mode"] for row in report["headline"]] == ["kv-cache", "greedy"] and report["sweep"] == []


def test_bench_speculate_compares_each_task_without_and_with_it(tiny_model_dir):
    args = ["bench", "-m", str(tiny_model_dir), "--speculate", "ngram", "--new-tokens", "12"]
    result = runner.invoke(app, [*args, "--repeats", "1", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["speculation"] == {"speculate": "ngram", "draft_model": None, "speculative_tokens": 4}
    assert [(row["task"], row["mode"]) for row in report["rows"]] == [
        ("edit", "kv-cache"),
        ("free", "kv-cache"),
    ]
    for row in report["rows"]:
        assert row["same_tokens"] and row["new_tokens"] == 12
        assert row["speedup"] == pytest.approx(row["tokens_per_s_with"] / row["tokens_per_s_without"])
    table = runner.invoke(app, [*args, "--repeats", "1", "--warmup", "0", "--modes", "scratch"])
    assert table.exit_code == 0, table.output
    assert (
        "Speculative decoding (medians, greedy)" in table.stdout
        and "speculate ngram, 4 tokens a pass" in table.stdout
    )
    assert table.stdout.count(" yes ") + table.stdout.count(" yes│") >= 2
