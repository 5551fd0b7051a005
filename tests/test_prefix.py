"""Prefix reuse across runs: one cache kept between prompts gives exactly the fresh output."""

import pytest

from gencli.generation import generate_text
from gencli.prefix import CachedPrefix, common_prefix_length, reusable_length
from gencli.settings import DecodingOptions

OPTIONS = DecodingOptions(max_new_tokens=10)
FIRST = "It is a truth universally acknowledged, that a single man"
SECOND = "It is a truth universally acknowledged, that a rich woman"


def test_lengths():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert reusable_length([1, 2, 3], [1, 2, 3]) == 2  # the last prompt token always runs
    assert reusable_length([], [7]) == 0


@pytest.mark.parametrize("mode", ["generate", "kv-cache", "scratch"])
def test_one_cache_across_prompts_gives_the_fresh_output(tiny, mode):
    prefix = CachedPrefix(tiny.engine(mode).new_cache(tiny.context_length))
    first = generate_text(tiny, FIRST, mode, OPTIONS, prefix=prefix)
    assert prefix.token_ids == (first.prompt_token_ids + first.token_ids)[:-1]

    continued = FIRST + first.text + " and then"
    again = generate_text(tiny, continued, mode, OPTIONS, prefix=prefix)
    assert again.token_ids == generate_text(tiny, continued, mode, OPTIONS).token_ids
    assert again.prompt_cache_tokens == common_prefix_length(
        first.prompt_token_ids + first.token_ids, again.prompt_token_ids
    )

    # going back: a prompt that parts early crops the cache, with no recompute of what stays
    other = generate_text(tiny, SECOND, mode, OPTIONS, prefix=prefix)
    assert other.token_ids == generate_text(tiny, SECOND, mode, OPTIONS).token_ids
    assert other.prompt_cache_tokens == common_prefix_length(
        tiny.tokenizer.encode(FIRST), tiny.tokenizer.encode(SECOND)
    )
