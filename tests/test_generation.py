import pytest
import torch

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


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(max_new_tokens=6),
        DecodingOptions(max_new_tokens=6, sample=True, seed=4, top_k=30, repetition_penalty=1.2),
    ],
    ids=["greedy", "sampled"],
)
def test_top_logprobs_agree_across_modes_and_change_no_token(tiny, options):
    from gencli.settings import MODES

    results = {mode: generate_text(tiny, "Hello world", mode, options, top_logprobs=3) for mode in MODES}
    reference = results["generate"]
    assert reference.token_ids == generate_text(tiny, "Hello world", "generate", options).token_ids
    for result in results.values():
        assert result.token_ids == reference.token_ids
        for ours, theirs in zip(result.logprobs, reference.logprobs, strict=True):
            assert ours["token"] == theirs["token"] and ours["logprob"] == pytest.approx(
                theirs["logprob"], abs=1e-4
            )
            assert [t["token"] for t in ours["top"]] == [t["token"] for t in theirs["top"]] and len(
                ours["top"]
            ) == 3
    # the chosen token's log-probability is the log-softmax of what it was chosen from
    assert all(step["logprob"] <= 0 for step in reference.logprobs)


def test_plain_greedy_logprobs_are_the_models_own(tiny):
    result = generate_text(tiny, "Hello world", "kv-cache", DecodingOptions(max_new_tokens=3), top_logprobs=1)
    sequence = result.prompt_token_ids + result.token_ids
    with torch.inference_mode():
        logits = tiny.model(torch.tensor([sequence])).logits[0].float()
    for step, token in enumerate(result.token_ids):
        expected = torch.log_softmax(logits[len(result.prompt_token_ids) - 1 + step], dim=-1)[token]
        assert result.logprobs[step]["logprob"] == pytest.approx(float(expected), abs=1e-4)
        assert result.logprobs[step]["top"][0]["token"] == token  # greedy: the top one was chosen
