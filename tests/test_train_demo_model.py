"""scripts/train_demo_model.py, at toy size: it writes a model folder gencli loads as float32."""

import json
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch

from gencli.loading import load_model

SCRIPT = Path(__file__).parent.parent / "scripts" / "train_demo_model.py"
TOY = ["--vocab-size", "300", "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--context", "64"]
TOY += ["--batch-size", "2", "--steps", "3", "--warmup", "1"]
WORDS = "the a of and to in was it her she said that with for as had not be on at by all very".split()  # noqa: SIM905


def write_corpus(path: Path, paragraphs: int) -> Path:
    """Prose-like paragraphs separated by blank lines, as books.txt has them (60 kB for 120)."""
    rng = random.Random(0)
    path.write_text(
        "\n\n".join(
            " ".join(rng.choice(WORDS) for _ in range(80)).capitalize() + "." for _ in range(paragraphs)
        )
    )
    return path


def train(corpus: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the script as `python scripts/train_demo_model.py ...` would, in this process (torch is
    imported already: seconds less than a subprocess); its exit status."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(corpus), "--out", str(out), *TOY])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exit:
        return exit.code
    return 0


def test_a_toy_run_writes_a_loadable_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    assert train(write_corpus(tmp_path / "corpus.txt", paragraphs=120), out, monkeypatch) == 0
    facts = json.loads((out / "training.json").read_text())
    assert facts["arguments"]["steps"] == 3 and facts["held_out_bits_per_byte"] > 0
    printed = capsys.readouterr()
    assert "loss nan" not in printed.out + printed.err
    loaded = load_model(str(out), device="cpu")
    assert loaded.dtype == torch.float32  # stored in float16, named float32 for --dtype auto
    assert len(loaded.tokenizer) == 300


def test_a_corpus_too_short_to_hold_anything_out_is_one_line(tmp_path, monkeypatch, capsys):
    assert train(write_corpus(tmp_path / "corpus.txt", paragraphs=49), tmp_path / "model", monkeypatch) == 2
    assert capsys.readouterr().err == (
        f"train_demo_model.py: error: {tmp_path / 'corpus.txt'} has 49 paragraphs (text between blank "
        "lines); every 50th is held out for evaluation, so it needs at least 50\n"
    )
    assert not (tmp_path / "model").exists()
