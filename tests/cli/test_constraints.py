"""Structured output from the command line: --choice, --regex, --json-schema (a file or inline),
--json-object, --grammar; what they print, what the stats line and --json say, and the errors."""

import json
import re
import sys

import jsonschema

from tests.cli.test_generate import assert_one_line_error, gencli


def test_choice_prints_exactly_one_of_the_choices(tiny_model_dir):
    result = gencli("Is it?", "-m", tiny_model_dir, "--choice", "yes", "--choice", "no way")
    assert result.exit_code == 0 and result.stdout in ("yes\n", "no way\n")
    assert result.stderr.rstrip().endswith("· shaped by choice: complete")


def test_regex_and_json_schema_inline_or_from_a_file(tiny_model_dir, tmp_path):
    answer = gencli("Date:", "-m", tiny_model_dir, "--regex", "[0-9]{4}-[0-9]{2}", "--json", "-q")
    record = json.loads(answer.stdout)
    assert re.fullmatch("[0-9]{4}-[0-9]{2}", record["text"])
    assert record["constraint"] == {"kind": "regex", "complete": True} and record["finish_reason"] == "eos"
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    for given in (str(tmp_path / "schema.json"), json.dumps(schema)):
        shaped = gencli("Reply:", "-m", tiny_model_dir, "--json-schema", given, "-n", 20)
        assert shaped.exit_code == 0, shaped.stderr
        jsonschema.validate(json.loads(shaped.stdout), schema)


def test_grammar_from_a_file_and_an_incomplete_answer_says_so(tiny_model_dir, tmp_path):
    (tmp_path / "greeting.lark").write_text('start: ("hello" | "hi") " " /[a-z]{1,5}/')
    result = gencli("Say:", "-m", tiny_model_dir, "--grammar", tmp_path / "greeting.lark", "-n", 1)
    assert result.exit_code == 0 and result.stdout.strip() in ("hello", "hi", "h", "he")
    assert result.stderr.rstrip().endswith("· shaped by grammar: INCOMPLETE (length)")


def test_what_cannot_shape_an_answer_is_one_line_exit_2(tiny_model_dir):
    assert_one_line_error(
        gencli("x", "-m", tiny_model_dir, "--regex", "[0-9"),
        "regex cannot shape an answer",
        "unclosed character class; fix the regex",
    )
    assert_one_line_error(
        gencli("x", "-m", tiny_model_dir, "--json-schema", "{not json"),
        "--json-schema must be a JSON schema",
    )
    assert_one_line_error(
        gencli("x", "-m", tiny_model_dir, "--choice", "a", "--json-object"),
        "choice and json_object each shape the answer; give one of them",
    )


def test_without_the_extra_a_shape_says_how_to_install_it(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # an import of it now fails
    assert_one_line_error(
        gencli("x", "-m", tiny_model_dir, "--json-object"), "pip install 'gencli[structured]'"
    )
