"""The hand-written loops must process logits exactly as `model.generate` does."""

import pytest
import torch
from transformers import GenerationConfig

from gencli.generation import generate_text
from gencli.sampling import (
    FrequencyPresencePenalty,
    build_logits_processors,
    end_token_ids,
    generate_kwargs,
    processors_generate_lacks,
)
from gencli.settings import MODES, DecodingOptions
from tests.engines.test_agreement import first_new_token_index

OPTION_SETS = [
    DecodingOptions(),
    DecodingOptions(repetition_penalty=1.3),
    DecodingOptions(sample=True),
    DecodingOptions(sample=True, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.2),
    DecodingOptions(sample=True, top_p=0.5),
    DecodingOptions(sample=True, temperature=0.0, top_k=5),
    DecodingOptions(repetition_penalty=1.2, no_repeat_ngram_size=3),
    DecodingOptions(sample=True, no_repeat_ngram_size=2, top_p=0.9, repetition_penalty=1.1),
    DecodingOptions(sample=True, temperature=0.8, top_k=20, min_p=0.05),
    DecodingOptions(sample=True, typical_p=0.9, epsilon_cutoff=3e-4),
    DecodingOptions(sample=True, eta_cutoff=1e-3, top_p=0.95),
    DecodingOptions(min_new_tokens=5, suppress_tokens=(13, 198), repetition_penalty=1.2),
    DecodingOptions(min_p=0.2, typical_p=0.5),  # greedy: the warpers stay out
    # OpenAI's and vLLM's fields: generate builds the bias, takes the penalties from gencli.
    DecodingOptions(logit_bias={13: -100.0, 11: 2.5}, frequency_penalty=0.5, presence_penalty=-0.3),
    DecodingOptions(sample=True, top_k=8, presence_penalty=1.0, repetition_penalty=1.1, logit_bias={7: 1.0}),
    DecodingOptions(min_new_tokens=3, stop_token_ids=(13, 198)),
]
EOS = 50256
PROMPT_LENGTH = 4


def describe(processors):
    return [
        (type(p).__name__, {k: v for k, v in vars(p).items() if isinstance(v, int | float)})
        for p in processors
    ]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_processors_match_what_generate_builds(tiny, options):
    # generate_kwargs must fully determine generate's list: HF fills unset values (top_k=50!).
    config = GenerationConfig(**generate_kwargs(options))
    config.update(**tiny.model.generation_config.to_dict(), defaults_only=True)
    config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    config._eos_token_tensor = torch.tensor(end_token_ids(EOS, options))
    built_by_generate = tiny.model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=PROMPT_LENGTH,
        logits_processor=processors_generate_lacks(options, PROMPT_LENGTH),
    )
    ours = build_logits_processors(options, PROMPT_LENGTH, EOS)
    assert describe(ours) == describe(built_by_generate)


def test_greedy_ignores_sampling_warpers():
    options = DecodingOptions(temperature=0.5, top_k=3, min_p=0.1, repetition_penalty=1.5)
    processors = build_logits_processors(options, PROMPT_LENGTH, EOS)
    assert [type(p).__name__ for p in processors] == ["RepetitionPenaltyLogitsProcessor"]


def test_min_new_tokens_needs_an_eos_to_hold_back():
    processors = build_logits_processors(DecodingOptions(min_new_tokens=3), PROMPT_LENGTH, None)
    assert list(processors) == []


def test_the_ngram_rule_skips_left_padding():
    """Padding with EOS (0 here) must not ban what the prompt alone may choose: alone, the row's
    last two tokens (0, 0) have not been seen before; padded, the padding's (0, 0, 7) bans 7."""
    from transformers import NoRepeatNGramLogitsProcessor

    from gencli.sampling import NoRepeatNGramAfterPadding

    row, padded = torch.tensor([[7, 9, 0, 0]]), torch.tensor([[0, 0, 7, 9, 0, 0], [3, 4, 5, 3, 4, 5]])
    scores = torch.zeros(2, 12)
    alone = NoRepeatNGramLogitsProcessor(3)(row, scores[:1])
    assert alone.isinf().sum() == 0
    assert NoRepeatNGramLogitsProcessor(3)(padded, scores)[0, 7] == -float("inf")  # the bug
    fixed = NoRepeatNGramAfterPadding(3, torch.tensor([2, 0]))(padded, scores)
    assert torch.equal(fixed[0], alone[0])
    # an unpadded row keeps Hugging Face's rule: after (4, 5), 3 was seen, so 3 is banned
    assert torch.equal(fixed[1], NoRepeatNGramLogitsProcessor(3)(padded[1:], scores[1:])[0])
    assert fixed[1, 3] == -float("inf")


# --- OpenAI's and vLLM's sampling fields: each mode against a reference written out here ---------


def reference_run(loaded, prompt, steps, transform, seed=None, end=()):
    """The plain definition: the whole sequence through the model at every step, the field's own
    formula on the raw logits (`transform(logits, generated)`), then argmax, or with a seed a draw
    from the global stream as `generate` draws; stops after a token of `end`."""
    ids = loaded.tokenizer.encode(prompt)
    generated = []
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        for _ in range(steps):
            logits = loaded.model(torch.tensor([ids + generated])).logits[0, -1].float()
            scores = transform(logits, generated)
            if seed is None:
                token = int(scores.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(scores[None], dim=-1), 1)[0, 0])
            generated.append(token)
            if token in end:
                break
    return generated


def penalised(frequency, presence):
    def transform(logits, generated):
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.numel())
        return logits - counts * frequency - (counts > 0) * presence

    return transform


def biased(bias):
    def transform(logits, generated):
        shifted = logits.clone()
        for token, value in bias.items():
            shifted[token] += value
        return shifted

    return transform


def top_k_only(k):
    def transform(logits, generated):
        return logits.masked_fill(logits < logits.topk(k).values[-1], -float("inf"))

    return transform


def min_p_only(min_p):
    def transform(logits, generated):
        probs = torch.softmax(logits, dim=-1)
        return logits.masked_fill(probs < min_p * probs.max(), -float("inf"))

    return transform


def unchanged(logits, generated):
    return logits


PROMPT = "It is a truth universally acknowledged"
PLAIN = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "max_new_tokens": 16}


def test_frequency_presence_penalty_counts_generated_tokens_only():
    scores = torch.zeros(2, 6)
    input_ids = torch.tensor([[5, 5, 1, 1, 1, 2], [5, 0, 3, 3, 4, 3]])  # 2 prompt positions
    penalised_scores = FrequencyPresencePenalty(0.5, 0.25, prompt_length=2)(input_ids, scores)
    assert penalised_scores.tolist() == [
        [0, -1.75, -0.75, 0, 0, 0],
        [0, 0, 0, -1.75, -0.75, 0],
    ]
    with pytest.raises(ValueError, match=r"frequency_penalty must be in \[-2, 2\]"):
        FrequencyPresencePenalty(2.5, 0, 0)


@pytest.mark.parametrize(
    ("fields", "transform", "seed"),
    [
        ({"frequency_penalty": 1.5, "presence_penalty": 0.0}, penalised(1.5, 0.0), None),
        ({"frequency_penalty": 0.0, "presence_penalty": 2.0}, penalised(0.0, 2.0), None),
        ({"frequency_penalty": -0.8, "presence_penalty": 0.6}, penalised(-0.8, 0.6), None),
        ({"logit_bias": {13: 8.0, 11: -100.0}}, biased({13: 8.0, 11: -100.0}), None),
        ({"sample": True, "top_k": 3}, top_k_only(3), 11),
        ({"sample": True, "min_p": 0.2}, min_p_only(0.2), 12),
        ({"sample": True, "frequency_penalty": 2.0, "logit_bias": {262: 9.0}}, None, 13),
    ],
    ids=["frequency", "presence", "both-negative", "logit_bias", "top_k", "min_p", "sampled-penalty+bias"],
)
def test_each_field_equals_its_definition_in_every_mode(tiny, fields, transform, seed):
    if transform is None:
        frequency, bias = penalised(2.0, 0.0), biased({262: 9.0})
        transform = lambda logits, generated: frequency(bias(logits, generated), generated)  # noqa: E731
    options = DecodingOptions(**PLAIN, seed=seed, **fields)
    expected = reference_run(tiny, PROMPT, 16, transform, seed)
    unconstrained = reference_run(tiny, PROMPT, 16, unchanged, seed)
    assert expected != unconstrained  # the field changes something here
    for mode in MODES:
        assert generate_text(tiny, PROMPT, mode, options).token_ids == expected, mode


def test_stop_token_ids_end_the_run_in_every_mode(tiny):
    free = reference_run(tiny, PROMPT, 16, unchanged)
    stop = free[first_new_token_index(free, 3)]
    options = DecodingOptions(**PLAIN, stop_token_ids=(stop, 50000))
    for mode in MODES:
        result = generate_text(tiny, PROMPT, mode, options)
        assert result.token_ids == free[: free.index(stop) + 1], mode
        assert result.finish_reason == "stop"


def test_min_new_tokens_holds_back_eos_and_stop_token_ids_in_every_mode(tiny, eos_as):
    free = reference_run(tiny, PROMPT, 16, unchanged)
    eos, stop = free[first_new_token_index(free, 1)], free[first_new_token_index(free, 4)]
    loaded = eos_as(eos)
    held_until = free.index(stop) + 2

    def held(logits, generated):
        return (
            logits if len(generated) >= held_until else logits.index_fill(0, torch.tensor([eos, stop]), -1e9)
        )

    expected = reference_run(loaded, PROMPT, 16, held, end=(eos, stop))
    options = DecodingOptions(**PLAIN, min_new_tokens=held_until, stop_token_ids=(stop,))
    for mode in MODES:
        assert generate_text(loaded, PROMPT, mode, options).token_ids == expected, mode
    assert len(expected) > held_until - 1 and not {eos, stop} & set(expected[: held_until - 1])
