"""scripts/train_demo_model.py, at toy size: it writes a model folder gencli loads as float32."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from gencli.loading import load_model

SCRIPT = Path(__file__).parent.parent / "scripts" / "train_demo_model.py"
CORPUS = Path(__file__).parent.parent.parent / "shared" / "corpus" / "books.txt"


def test_a_toy_run_writes_a_loadable_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS.read_bytes()[:60_000] if CORPUS.exists() else b"It is a truth. " * 4000)
    out = tmp_path / "model"
    toy = ["--vocab-size", "300", "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--context", "64"]
    toy += ["--batch-size", "2", "--steps", "3", "--warmup", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(corpus), "--out", str(out), *toy],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads((out / "training.json").read_text())
    assert facts["arguments"]["steps"] == 3 and facts["held_out_bits_per_byte"] > 0
    assert "loss nan" not in done.stdout + done.stderr
    loaded = load_model(str(out), device="cpu")
    assert loaded.dtype == torch.float32  # stored in float16, named float32 for --dtype auto
    assert len(loaded.tokenizer) == 300
