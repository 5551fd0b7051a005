"""The hand-written loops must process logits exactly as `model.generate` does."""

import pytest
from transformers import GenerationConfig

from gencli.config import DecodingOptions
from gencli.sampling import build_logits_processors, generate_kwargs

OPTION_SETS = [
    DecodingOptions(),
    DecodingOptions(repetition_penalty=1.3),
    DecodingOptions(sample=True),
    DecodingOptions(sample=True, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.2),
    DecodingOptions(sample=True, top_p=0.5),
    DecodingOptions(sample=True, temperature=0.0, top_k=5),
    DecodingOptions(repetition_penalty=1.2, no_repeat_ngram_size=3),
    DecodingOptions(sample=True, no_repeat_ngram_size=2, top_p=0.9, repetition_penalty=1.1),
]


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
    built_by_generate = tiny.model._get_logits_processor(generation_config=config, input_ids_seq_length=4)
    assert describe(build_logits_processors(options)) == describe(built_by_generate)


def test_greedy_ignores_sampling_warpers():
    processors = build_logits_processors(DecodingOptions(temperature=0.5, top_k=3, repetition_penalty=1.5))
    assert [type(p).__name__ for p in processors] == ["RepetitionPenaltyLogitsProcessor"]
