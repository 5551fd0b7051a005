"""All modes must produce the same tokens for the same inputs: greedy and seeded sampling."""

import pytest

from gencli.generation import generate_text
from gencli.settings import MODES, DecodingOptions

PROMPTS = [
    "Hello world! The meaning of life is",
    "It is a truth universally acknowledged",
    "1, 2, 3,",
    "The",
]
OPTION_SETS = {
    "greedy": DecodingOptions(max_new_tokens=24),
    "greedy+penalty": DecodingOptions(max_new_tokens=24, repetition_penalty=1.3),
    "sample": DecodingOptions(max_new_tokens=24, sample=True, seed=0),
    "sample+warpers": DecodingOptions(
        max_new_tokens=24, sample=True, seed=1, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.2
    ),
    "sample+hot": DecodingOptions(max_new_tokens=24, sample=True, seed=2, temperature=1.5),
    "default preset": DecodingOptions(max_new_tokens=24, repetition_penalty=1.2, no_repeat_ngram_size=3),
    # Options reached through -o: each is one of Hugging Face's processors, built in generate's order.
    "sample+min_p": DecodingOptions(max_new_tokens=24, sample=True, seed=3, temperature=1.3, min_p=0.05),
    "sample+typical+cutoffs": DecodingOptions(
        max_new_tokens=24, sample=True, seed=4, typical_p=0.9, epsilon_cutoff=1e-4, eta_cutoff=1e-3
    ),
    "greedy+suppress": DecodingOptions(max_new_tokens=24, suppress_tokens=(11, 13, 198)),
}


def run_all_modes(loaded, prompt, options):
    return {mode: generate_text(loaded, prompt, mode, options) for mode in MODES}


def assert_all_equal(results):
    reference = results["generate"]
    for mode, result in results.items():
        assert result.token_ids == reference.token_ids, f"{mode} diverges from generate"
        assert result.finish_reason == reference.finish_reason
        assert result.text == reference.text


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_modes_agree(tiny, prompt, name):
    results = run_all_modes(tiny, prompt, OPTION_SETS[name])
    assert_all_equal(results)
    assert len(results["generate"].token_ids) == 24
    assert results["generate"].finish_reason == "length"


def test_different_seeds_give_different_samples(tiny):
    first = generate_text(tiny, "The", "kv-cache", DecodingOptions(max_new_tokens=8, sample=True, seed=1))
    second = generate_text(tiny, "The", "kv-cache", DecodingOptions(max_new_tokens=8, sample=True, seed=2))
    assert first.token_ids != second.token_ids


def first_new_token_index(token_ids, start):
    """Index of the first token from `start` on that did not occur before it."""
    return next(i for i in range(start, len(token_ids)) if token_ids[i] not in token_ids[:i])


@pytest.mark.parametrize("name", ["greedy", "sample+warpers"])
def test_modes_agree_when_stopping_at_eos(tiny, eos_as, name):
    options = OPTION_SETS[name]
    free_run = generate_text(tiny, PROMPTS[0], "generate", options).token_ids
    index = first_new_token_index(free_run, 5)
    loaded = eos_as(free_run[index])

    results = run_all_modes(loaded, PROMPTS[0], options)
    assert_all_equal(results)
    assert results["generate"].finish_reason == "eos"
    assert results["generate"].token_ids == free_run[: index + 1]


@pytest.mark.parametrize("name", ["greedy", "sample"])
def test_modes_agree_when_stopping_at_a_stop_string(tiny, name):
    free_run = generate_text(tiny, PROMPTS[1], "generate", OPTION_SETS[name])
    index = first_new_token_index(free_run.token_ids, 6)
    stop = tiny.tokenizer.decode([free_run.token_ids[index]]).strip()
    assert stop, "picked a whitespace-only token"
    options = DecodingOptions(**{**vars(OPTION_SETS[name]), "stop": (stop,)})

    results = run_all_modes(tiny, PROMPTS[1], options)
    assert_all_equal(results)
    result = results["generate"]
    assert result.finish_reason == "stop"
    assert stop in result.text
    assert result.token_ids == free_run.token_ids[: len(result.token_ids)]
    assert len(result.token_ids) <= index + 1


def test_ignore_eos_generates_past_the_end_token_in_every_mode(tiny, eos_as):
    options = OPTION_SETS["greedy"]
    free_run = generate_text(tiny, PROMPTS[0], "generate", options).token_ids
    loaded = eos_as(free_run[first_new_token_index(free_run, 5)])
    ignoring = DecodingOptions(**{**vars(options), "ignore_eos": True})
    results = run_all_modes(loaded, PROMPTS[0], ignoring)
    assert_all_equal(results)
    assert results["generate"].token_ids == free_run
    assert results["generate"].finish_reason == "length"


def test_min_new_tokens_holds_back_eos_in_every_mode(tiny, eos_as):
    options = OPTION_SETS["greedy"]
    free_run = generate_text(tiny, PROMPTS[0], "generate", options).token_ids
    index = first_new_token_index(free_run, 2)
    loaded = eos_as(free_run[index])
    held = DecodingOptions(**{**vars(options), "min_new_tokens": index + 3})
    results = run_all_modes(loaded, PROMPTS[0], held)
    assert_all_equal(results)
    token_ids = results["generate"].token_ids
    assert free_run[index] not in token_ids[: index + 3]  # no EOS before the minimum
    assert token_ids[:index] == free_run[:index]


def test_suppressed_tokens_never_appear(tiny):
    free_run = generate_text(tiny, PROMPTS[0], "kv-cache", OPTION_SETS["greedy"]).token_ids
    banned = tuple(sorted(set(free_run[:6])))
    options = DecodingOptions(max_new_tokens=24, suppress_tokens=banned)
    token_ids = generate_text(tiny, PROMPTS[0], "kv-cache", options).token_ids
    assert not set(token_ids) & set(banned)
