"""The hand-written loops must process logits exactly as `model.generate` does."""

import pytest
import torch
from transformers import GenerationConfig

from gencli.sampling import build_logits_processors, generate_kwargs
from gencli.settings import DecodingOptions

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
    config._eos_token_tensor = torch.tensor([EOS])
    built_by_generate = tiny.model._get_logits_processor(
        generation_config=config, input_ids_seq_length=PROMPT_LENGTH
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
