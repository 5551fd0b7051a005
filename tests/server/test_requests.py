"""What OpenAI's routes make of a request: defaults under what the user set, every field mapped
onto gencli's settings, the Responses API's input, and refusals that name the field."""

import pytest

from gencli.server.errors import ApiError
from gencli.server.requests import (
    chat_request,
    completion_request,
    fills_context,
    openai_defaults,
    responses_request,
)
from gencli.settings import Layer, resolve


def template(messages):
    return "|".join(f"{m['role']}:{m['content']}" for m in messages), ("\nUser:",)


def test_openai_defaults_fill_only_what_nobody_set(tmp_path):
    plain = openai_defaults(resolve())
    assert plain.samples and plain.temperature == 1 and plain.top_p == 1
    assert plain.repetition_penalty == 1 and plain.no_repeat_ngram_size == 0 and plain.max_new_tokens == 16
    assert fills_context(resolve())
    flags = Layer({"repetition_penalty": 1.2, "max_new_tokens": 40, "sample": False}, lambda key: "--flag")
    given = openai_defaults(resolve([flags]))
    assert (given.repetition_penalty, given.max_new_tokens, given.samples) == (1.2, 40, False)
    assert given.no_repeat_ngram_size == 0 and not fills_context(resolve([flags]))
    (tmp_path / "generation_config.json").write_text('{"do_sample": false, "top_k": 7}')
    checkpoint = openai_defaults(resolve(checkpoint_folder=tmp_path))
    assert not checkpoint.samples and checkpoint.top_k == 7


def test_every_field_sets_its_setting():
    body = {
        "prompt": "Hi",
        "temperature": 0,
        "presence_penalty": 0.5,
        "frequency_penalty": -1,
        "logit_bias": {"13": -100, "198": 2},
        "top_k": -1,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 3,
        "stop_token_ids": [13],
        "skip_special_tokens": False,
        "no_repeat_ngram_size": 2,
        "include_stop_str_in_output": True,
    }
    (parsed,) = completion_request(body, openai_defaults(resolve()), "kv-cache", 50257)
    options = parsed.options
    assert not options.samples and options.presence_penalty == 0.5 and options.frequency_penalty == -1
    assert options.logit_bias == {13: -100.0, 198: 2.0} and options.top_k == 0 and options.min_p == 0.1
    assert options.repetition_penalty == 1.1 and options.min_new_tokens == 3
    assert options.stop_token_ids == (13,) and not options.skip_special_tokens
    assert options.no_repeat_ngram_size == 2 and parsed.include_stop


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"frequency_penalty": 3}, "frequency_penalty", "must be a number in [-2, 2]"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "must be a map of token ids"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "must be a map of token ids"),
        ({"min_tokens": -1}, "min_tokens", "'min_tokens' must be an integer"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "'max_completion_tokens' must be"),
    ],
)
def test_a_bad_value_names_the_field_as_the_request_wrote_it(body, param, fragment):
    chat = {"messages": [{"role": "user", "content": "Hi"}], **body}
    with pytest.raises(ApiError) as refused:
        chat_request(chat, openai_defaults(resolve()), "kv-cache", True, template)
    assert refused.value.param == param and fragment in refused.value.message


def test_a_chat_without_a_length_fills_the_context_unless_the_server_has_one():
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (free,) = chat_request({"messages": messages}, openai_defaults(resolve()), "kv-cache", True, template)
    assert free.fills_context and free.prompt == "system:Be brief.|user:Hi"
    (capped,) = chat_request(
        {"messages": messages, "max_tokens": 5}, openai_defaults(resolve()), "kv-cache", True, template
    )
    assert not capped.fills_context and capped.options.max_new_tokens == 5


def test_responses_input_and_instructions_become_the_chat_document():
    body = {
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"role": "user", "content": "And?"},
        ],
        "instructions": "Be brief.",
        "max_output_tokens": 7,
        "temperature": 0.5,
        "store": False,
        "tools": [],
    }
    parsed = responses_request(body, openai_defaults(resolve()), "kv-cache", True, template)
    assert parsed.prompt == "system:Be brief.|user:Hi|assistant:Hello|user:And?"
    assert parsed.options.max_new_tokens == 7 and parsed.options.temperature == 0.5
    assert parsed.options.stop == ("\nUser:",) and not parsed.fills_context
