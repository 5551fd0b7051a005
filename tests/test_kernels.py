"""One-row kernels chosen by measuring: each candidate computes x · W + b, a wrong one is never
chosen, the choice is cached per machine and not trusted when damaged or foreign, and a forced
kernel gives the same tokens."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gencli import kernels
from gencli.generation import generate_text
from gencli.kernels import KERNELS, Kernel, KernelError, choose, machine, measure
from gencli.loading import load_model
from gencli.settings import Settings

SHAPE = (256, 1024, "float32")  # 1 MiB: above MEASURED_FROM, quick to stream


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "float16", "int8"])
def test_every_candidate_computes_the_product_within_its_kinds_tolerance(kind):
    runnable = kernels.candidates(kind)
    assert runnable and all(kind in kernel.serves for kernel in runnable)
    assert "compiled" not in {kernel.name for kernel in runnable}  # measured only where forced
    table = measure(64, 48, kind, runnable)
    measured = {row.kernel for row in table}
    # oneDNN's packing of reduced precision needs AVX-512 or AVX-NE-CONVERT: it may refuse this CPU.
    assert measured == {kernel.name for kernel in runnable} - ({"onednn-packed"} - measured)
    assert kind != "float32" or "onednn-packed" in measured
    assert all(row.within_tolerance and row.gb_s > 0 for row in table), table
    assert [row.ms for row in table] == sorted(row.ms for row in table)


def test_a_weight_beyond_float16s_range_is_stored_in_float32_not_as_infinity():
    weight = torch.full((8, 16), 0.5, dtype=torch.bfloat16)
    weight[3, 5] = 1e6  # a bfloat16 value float16 cannot hold
    prepared = KERNELS["linear-float16"].prepare(weight, None, "out_in")
    assert prepared[0].dtype == torch.float32 and torch.equal(prepared[0], weight.float())
    x = torch.ones(1, 16, dtype=torch.bfloat16)
    out = KERNELS["linear-float16"].run(x, prepared)
    assert out.dtype == torch.bfloat16 and out[0, 3].item() == pytest.approx(1e6 + 7.5, rel=1e-2)


def _broken(x: torch.Tensor, prepared: tuple) -> torch.Tensor:
    return torch.zeros(1, prepared[0].shape[0], dtype=x.dtype)  # instant, and wrong


@pytest.fixture
def broken_kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    kernel = Kernel("broken", frozenset({"float32"}), "out_in", None, _broken)
    monkeypatch.setitem(KERNELS, "broken", kernel)
    return kernel


def test_the_fastest_kernel_within_tolerance_is_chosen_and_a_wrong_one_never(broken_kernel, tmp_path):
    choice = choose([SHAPE], path=tmp_path / "kernels.json")["256x1024 float32"]
    assert choice.source == "measured"
    broken = next(row for row in choice.table if row.kernel == "broken")
    assert not broken.within_tolerance and broken.error == pytest.approx(1.0)
    fit = [row for row in choice.table if row.within_tolerance]
    assert choice.kernel == fit[0].kernel != "broken"
    assert fit[0].ms == min(row.ms for row in fit)


def test_the_choice_is_cached_and_read_back_without_measuring(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    told = []
    first = choose([SHAPE, (1024, 256, "float32")], path=path, on_measure=lambda: told.append(1))
    first = first["256x1024 float32"]
    assert told == [1]  # once, before the first of the two measurements
    entry = next(e for e in json.loads(path.read_text())["entries"] if e["weight"] == "256x1024 float32")
    assert entry["machine"] == machine() and entry["weight"] == "256x1024 float32"
    assert entry["kernel"] == first.kernel and len(entry["table"]) == len(first.table)
    monkeypatch.setattr(kernels, "measure", lambda *args: pytest.fail("measured again"))
    again = choose([SHAPE], path=path, on_measure=lambda: told.append(2))["256x1024 float32"]
    assert told == [1]
    assert (again.kernel, again.source, again.table) == (first.kernel, "cached", first.table)


def _entry(**changes) -> dict:
    entry = {"machine": machine(), "weight": "256x1024 float32", "kernel": "linear", "table": []}
    return {**entry, **changes}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"format": 1, "entries": "none"}),
        json.dumps({"format": 1, "entries": [_entry(kernel="no-such-kernel")]}),
        json.dumps({"format": 1, "entries": [_entry(kernel="int8pack")]}),  # cannot run float32
        json.dumps({"format": 1, "entries": [_entry(table=[{"kernel": "linear"}])]}),
    ],
    ids=["not-json", "a-list", "entries-not-a-list", "unknown-kernel", "wrong-kind", "damaged-table"],
)
def test_a_damaged_cache_is_measured_again_and_rewritten(tmp_path, content):
    path = tmp_path / "kernels.json"
    path.write_text(content)
    choice = choose([SHAPE], path=path)["256x1024 float32"]
    assert choice.source == "measured" and choice.kernel in KERNELS
    entries = json.loads(path.read_text())["entries"]
    assert [entry["kernel"] for entry in entries if entry.get("machine") == machine()][-1] == choice.kernel


@pytest.mark.parametrize(
    "other",
    [{"threads": 64}, {"cpu": "Another CPU"}, {"isa": ["avx512f"]}, {"torch": "1.0.0"}],
    ids=["threads", "cpu", "isa", "torch"],
)
def test_another_machines_entry_is_not_trusted_and_kept(tmp_path, other):
    path = tmp_path / "kernels.json"
    foreign = _entry(machine={**machine(), **other}, kernel="onednn-packed")
    path.write_text(json.dumps({"format": 1, "entries": [foreign]}))
    choice = choose([SHAPE], path=path)["256x1024 float32"]
    assert choice.source == "measured"
    entries = json.loads(path.read_text())["entries"]
    assert entries[0] == foreign and entries[1]["machine"] == machine()


def test_small_weights_take_the_default_unmeasured(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "measure", lambda *args: pytest.fail("measured"))
    choices = choose([(64, 192, "float32"), (64, 192, "int8")], path=tmp_path / "kernels.json")
    assert [(c.kernel, c.source) for c in choices.values()] == [
        ("bmm-split", "default"),
        ("int8pack", "default"),
    ]
    assert not (tmp_path / "kernels.json").exists()


def test_a_forced_kernel_runs_every_weight_it_can_and_refuses_what_it_cannot(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "measure", lambda *args: pytest.fail("measured"))
    path = tmp_path / "kernels.json"
    choices = choose([SHAPE, (64, 192, "float32")], forced="linear", path=path)
    assert {(c.kernel, c.source) for c in choices.values()} == {("linear", "forced")}
    mixed = choose([(64, 192, "int8"), SHAPE], forced="int8pack", path=path)
    assert [(c.kernel, c.source) for c in mixed.values()] == [
        ("int8pack", "forced"),
        ("bmm-split", "default"),
    ]
    with pytest.raises(KernelError, match="'int8pack' runs int8 weights and this model's are float32"):
        choose([SHAPE], forced="int8pack", path=path)
    monkeypatch.setitem(KERNELS, "linear", dataclasses.replace(KERNELS["linear"], needs=lambda: False))
    with pytest.raises(KernelError, match="'linear' cannot run on this machine"):
        choose([SHAPE], forced="linear", path=path)
    assert not path.exists()  # nothing measured, nothing written


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_a_forced_kernel_gives_the_same_tokens_in_every_mode(tiny_model_dir, quantize):
    """Whatever kernel runs the one-row products, the modes agree token for token with the
    default's run (the kernels differ in the order of their additions only)."""
    settings = Settings(max_new_tokens=12, repetition_penalty=1.0, no_repeat_ngram_size=0)
    kind = "int8" if quantize == "int8" else "float32"
    runs = {}
    for kernel in ["auto", *(k.name for k in kernels.candidates(kind))]:
        loaded = load_model(str(tiny_model_dir), device="cpu", quantize=quantize, kernels=kernel)
        for mode in ("kv-cache", "scratch", "greedy"):
            runs[kernel, mode] = tuple(generate_text(loaded, "The history of", mode, settings).token_ids)
    assert len(set(runs.values())) == 1, runs


def test_a_forced_kernel_is_what_the_projections_run(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", kernels="onednn-packed")
    assert {choice.kernel for choice in loaded.kernels.values()} == {"onednn-packed"}
    engine = loaded.engine("kv-cache")
    assert engine.lm_head.kernel is KERNELS["onednn-packed"]
    assert all(block.mlp.c_fc.kernel is KERNELS["onednn-packed"] for block in engine.transformer.h)
    assert loaded.kernels_ran("kv-cache") == "onednn-packed" and loaded.kernels_ran("generate") == "PyTorch's"


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.cache_path() == Path(tmp_path, "gencli", "kernels.json")
