import pytest

from gencli.errors import GencliError
from gencli.generation import ContextOverflowError, GenerationInterrupted, generate_text
from gencli.settings import DecodingOptions


@pytest.mark.parametrize("mode", ["generate", "greedy", "kv-cache", "scratch"])
def test_result_fields_and_timings(tiny, mode):
    result = generate_text(tiny, "Hello world", mode, DecodingOptions(max_new_tokens=6))
    assert result.prompt_token_ids == [15496, 995]
    assert len(result.token_ids) == 6
    assert result.text == tiny.tokenizer.decode(result.token_ids)
    timings = result.timings
    assert 0 < timings.prefill_s <= timings.ttft_s
    assert timings.decode_s > 0 and timings.tokens_per_s == pytest.approx(5 / timings.decode_s)
    assert result.seed is None  # greedy decoding uses no randomness


def test_text_streams_in_order(tiny):
    pieces = []
    result = generate_text(tiny, "Hello world", "greedy", DecodingOptions(max_new_tokens=12), pieces.append)
    assert "".join(pieces) == result.text


def test_sampling_without_seed_reports_the_seed_it_used(tiny):
    options = DecodingOptions(max_new_tokens=6, sample=True)
    first = generate_text(tiny, "Hello", "kv-cache", options)
    assert first.seed is not None
    replay = generate_text(tiny, "Hello", "greedy", DecodingOptions(**{**vars(options), "seed": first.seed}))
    assert replay.token_ids == first.token_ids


def test_prompt_plus_new_tokens_beyond_context(tiny):
    with pytest.raises(ContextOverflowError) as caught:
        generate_text(tiny, "Hello world", "kv-cache", DecodingOptions(max_new_tokens=1023))
    overflow = caught.value
    assert (overflow.prompt_tokens, overflow.max_new_tokens, overflow.context) == (2, 1023, 1024)
    assert str(overflow).endswith("context of 1024 tokens; use max_new_tokens 1022 or less")
    assert str(overflow.worded("--max-new-tokens")).endswith("use --max-new-tokens 1022 or less")


def test_empty_prompt(tiny):
    with pytest.raises(GencliError, match="prompt is empty"):
        generate_text(tiny, "  \n", "kv-cache", DecodingOptions())


@pytest.mark.parametrize("mode", ["generate", "greedy", "kv-cache"])
def test_interruption_keeps_what_was_generated(tiny, mode):
    pieces = []

    def interrupt_after_some_text(text):
        pieces.append(text)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    with pytest.raises(GenerationInterrupted) as caught:
        generate_text(tiny, "Hello", mode, DecodingOptions(max_new_tokens=50), interrupt_after_some_text)
    partial = caught.value.result
    assert partial.finish_reason == "interrupted"
    assert 3 <= len(partial.token_ids) < 50
    full = generate_text(tiny, "Hello", mode, DecodingOptions(max_new_tokens=50))
    assert full.token_ids[: len(partial.token_ids)] == partial.token_ids
    # whatever was held back waiting for a word boundary was flushed on interruption
    assert "".join(pieces) == partial.text
