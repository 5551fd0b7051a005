"""Save a draft model for `--speculate draft` made of a GPT-2's first layers (self-speculation,
as LayerSkip's early exit): the same embeddings, the first N blocks, the final layer norm and the
head. It shares the tokenizer by construction; on random weights, where no smaller sibling
exists, it is the draft whose proposals say something about the model.

    python scripts/layer_draft.py MODEL_FOLDER DRAFT_FOLDER --layers 3
    python scripts/layer_draft.py --random-gpt2 MODEL_FOLDER   # a random GPT-2 124M to try it on
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from gencli.tokens import BUNDLED_TOKENIZER


def save_random_gpt2(folder: Path, seed: int = 0) -> None:
    """GPT-2 124M's shapes with random weights, and the GPT-2 tokenizer."""
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)).save_pretrained(folder)


def save_layer_draft(model_folder: Path, draft_folder: Path, layers: int) -> None:
    model = GPT2LMHeadModel.from_pretrained(model_folder)
    if not 0 < layers < model.config.n_layer:
        raise SystemExit(f"--layers must be in [1, {model.config.n_layer - 1}], got {layers}")
    model.transformer.h = model.transformer.h[:layers]
    model.config.n_layer = layers
    model.save_pretrained(draft_folder)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
    ):
        if (model_folder / name).exists():
            shutil.copy(model_folder / name, draft_folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("draft", type=Path, nargs="?")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--random-gpt2", action="store_true", help="save a random GPT-2 124M in MODEL")
    arguments = parser.parse_args()
    if arguments.random_gpt2:
        save_random_gpt2(arguments.model)
    if arguments.draft is not None:
        save_layer_draft(arguments.model, arguments.draft, arguments.layers)


if __name__ == "__main__":
    main()
