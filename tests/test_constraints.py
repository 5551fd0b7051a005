"""Structured output: every shape, in every mode, gives the same tokens and an answer that fits,
and what cannot shape an answer is refused by name."""

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gencli.constraints import ConstraintError, GrammarConstraint, compile_constraint
from gencli.generation import generate_text
from gencli.settings import MODES, DecodingOptions

PROMPT = "The answer:"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 2},
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog"]}, "vaccinated": {"type": "boolean"}},
            "required": ["kind", "vaccinated"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
LARK = 'start: greeting " " name\ngreeting: "hello" | "hi"\nname: /[a-z]{1,5}/'
DATE = "[0-9]{4}-[0-9]{2}-[0-9]{2}"


def validates(text, schema):
    jsonschema.validate(json.loads(text), schema)
    return True


def run_everywhere(loaded, options, prompt=PROMPT):
    results = {mode: generate_text(loaded, prompt, mode, options) for mode in MODES}
    reference = results["generate"]
    for mode, result in results.items():
        assert result.token_ids == reference.token_ids, f"{mode} diverges from generate"
    return reference


@pytest.mark.parametrize(
    ("fields", "fits"),
    [
        ({"choice": ("yes", "no", "maybe not")}, lambda text: text in ("yes", "no", "maybe not")),
        (
            {"regex": "[0-9]{4}-[0-9]{2}-[0-9]{2}"},
            lambda text: re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", text),
        ),
        ({"json_object": True}, lambda text: isinstance(json.loads(text), dict)),
        (
            {"json_schema": json.dumps(SCHEMA)},
            lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None,
        ),
        ({"grammar": LARK}, lambda text: re.fullmatch("(hello|hi) [a-z]{1,5}", text)),
    ],
    ids=["choice", "regex", "json_object", "json_schema", "grammar"],
)
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_each_shape_in_every_mode_gives_an_answer_that_fits(tiny, fields, fits, sample):
    options = DecodingOptions(max_new_tokens=96, sample=sample, seed=5, **fields)
    if "json_object" in fields:  # a random model rarely closes a free object: make `}` likely
        options = options.model_copy(update={"logit_bias": {92: 8.0}})
    result = run_everywhere(tiny, options)
    assert result.finish_reason == "eos" and result.constraint == {
        "kind": next(iter(fields)),
        "complete": True,
    }
    assert fits(result.text), result.text


def test_an_answer_cut_by_the_length_is_reported_incomplete(tiny):
    result = run_everywhere(tiny, DecodingOptions(max_new_tokens=4, json_schema=json.dumps(SCHEMA)))
    assert result.finish_reason == "length" and result.constraint == {
        "kind": "json_schema",
        "complete": False,
    }
    assert len(result.token_ids) == 4


def test_top_logprobs_show_the_shaped_distribution(tiny):
    options = DecodingOptions(max_new_tokens=8, choice=("yes", "no"))
    result = generate_text(tiny, PROMPT, "kv-cache", options, top_logprobs=20)
    first = result.logprobs[0]
    assert {other["text"] for other in first["top"]} <= {"yes", "no", "y", "n", "ye"}
    assert sum(2.718281828 ** other["logprob"] for other in first["top"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize(
    ("fields", "key", "fragment"),
    [
        ({"regex": "[0-9"}, "regex", "unclosed character class"),
        (
            {"json_schema": '{"type": "object", "properties": {"a": {"$ref": "#/nope"}}}'},
            "json_schema",
            "nope",
        ),
        ({"grammar": "start: missing_rule"}, "grammar", "missing_rule"),
        ({"choice": ("a",), "regex": "b"}, "regex", "choice and regex each shape the answer; give one"),
        ({"regex": "a", "ignore_eos": True}, "regex", "drop ignore_eos"),
        ({"json_object": True, "min_new_tokens": 3}, "json_object", "drop min_new_tokens"),
    ],
)
def test_what_cannot_shape_an_answer_is_refused_by_name(tiny, fields, key, fragment):
    with pytest.raises(ConstraintError) as refused:
        compile_constraint(DecodingOptions(**fields), tiny.tokenizer, 50257, 50256)
    assert refused.value.key == key and fragment in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_finished_row_may_only_end():
    """A batch row whose answer is complete keeps getting padding (EOS): it may only end, never
    all tokens ruled out (sampling would fail on a row of -inf)."""
    import torch
    from transformers import AutoTokenizer

    from gencli.constraints import ll_tokenizer
    from gencli.tokens import BUNDLED_TOKENIZER

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    options = DecodingOptions(choice=("yes",))
    compiled = compile_constraint(options, tokenizer, 50257, 50256)
    constraint = GrammarConstraint(compiled.grammar, ll_tokenizer(tokenizer, 50257, 50256), 1, 50256)
    done = torch.tensor([[464, *tokenizer.encode("yes"), 50256, 50256]])
    scores = constraint(done, torch.zeros(1, 50257))
    assert torch.isfinite(scores).sum() == 1 and torch.isfinite(scores[0, 50256])


# --- Shapes made up by hypothesis, on the demo model ----------------------------------------------

atoms = st.sampled_from(["[a-c]", "[0-9]", "x", "yz", "(a|bb)", "[A-Z]"])
regexes = st.lists(st.tuples(atoms, st.sampled_from(["", "?", "{1,3}", "{2}"])), min_size=1, max_size=4).map(
    lambda parts: "".join(atom + quantifier for atom, quantifier in parts)
)
leaves = st.one_of(
    st.just({"type": "boolean"}),
    st.integers(0, 50).map(lambda top: {"type": "integer", "minimum": 0, "maximum": top}),
    st.integers(1, 6).map(lambda longest: {"type": "string", "maxLength": longest}),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True).map(
        lambda values: {"enum": values}
    ),
)
schemas = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["k", "v", "w"]), inner, min_size=1, max_size=3).map(
            lambda properties: {
                "type": "object",
                "properties": properties,
                "required": sorted(properties),
                "additionalProperties": False,
            }
        ),
        inner.map(lambda items: {"type": "array", "items": items, "maxItems": 2}),
    ),
    max_leaves=4,
).filter(lambda schema: schema.get("type") == "object")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regex=regexes, schema=schemas)
def test_any_shape_gives_an_answer_that_fits_or_says_it_ran_out(demo, regex, schema):
    for fields, fits in (
        ({"regex": regex}, lambda text: re.fullmatch(regex, text)),
        (
            {"json_schema": json.dumps(schema)},
            lambda text: jsonschema.validate(json.loads(text), schema) is None,
        ),
    ):
        result = run_everywhere(demo, DecodingOptions(max_new_tokens=24, **fields))
        if result.finish_reason == "eos":
            assert result.constraint["complete"] and fits(result.text), (fields, result.text)
        else:
            assert result.finish_reason == "length" and not result.constraint["complete"]
            assert len(result.token_ids) == 24
