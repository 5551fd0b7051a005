"""`gencli explain` through the CLI runner."""

import json

from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()

WORKED_SCORES_TO_OUTPUT = """\
scores = Q·Kᵀ: row i, column j = token i's query · token j's key  [3, 3]
  token 0        2         4         4
  token 1        4        16        12
  token 2        4        12        10

weights = softmax of each row of the scores  [3, 3]
  token 0   0.0634    0.4683    0.4683
  token 1   0.0000    0.9820    0.0180
  token 2   0.0003    0.8805    0.1192

output = weights·V: each row a weighted sum of the values  [3, 3]
  token 0   1.9366    6.6831    1.5951
  token 1   2.0000    7.9640    0.0540
  token 2   1.9997    7.7599    0.3584
"""

WORKED_CAUSAL = """\
weights, causal  [3, 3]
  token 0   1.0000    0.0000    0.0000
  token 1   0.0000    1.0000    0.0000
  token 2   0.0003    0.8805    0.1192
"""


def test_worked_example_tables():
    result = runner.invoke(app, ["explain", "--worked-example"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "Self-attention by hand: 3 tokens of 4 dimensions, d_k = 3, scores not scaled\n"
    )
    assert WORKED_SCORES_TO_OUTPUT in result.stdout
    assert WORKED_CAUSAL in result.stdout
    assert "Q = x·W_q: the queries  [3, 3]\n  token 0        1         0         2\n" in result.stdout


def test_worked_example_json_and_no_prompt():
    data = json.loads(runner.invoke(app, ["explain", "--worked-example", "--json"]).stdout)
    assert data["scores"] == [[2.0, 4.0, 4.0], [4.0, 16.0, 12.0], [4.0, 12.0, 10.0]]
    result = runner.invoke(app, ["explain", "--worked-example", "some prompt"])
    assert result.exit_code == 2
    assert result.stderr == "gencli: error: --worked-example uses its own 3 tokens: leave out the prompt\n"


def test_explain_walks_one_head(tiny_model_dir):
    result = runner.invoke(
        app, ["explain", "It is a truth", "--model", str(tiny_model_dir), "-l", "1", "-H", "2", "-p", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("layer 1, head 2, the query at position 2 (·a) of 4 tokens")
    for step in (
        "1. The input row",
        "2. Head 2's projections: columns 32:48",
        "3. Scores",
        "4. The head's output",
    ):
        assert any(line.startswith(step) for line in lines), step
    assert "      3 ·truth  masked: position 3 comes after the query" in lines
    assert "   keys and values of positions 0-1 come from the cache, [1, 4, 2, 16] each" in lines
    assert lines[-1].startswith(
        "check against Hugging Face's layer 1 attention at position 2: max abs error "
    )
    assert lines[-1].endswith("PASS")


def test_explain_json_weights_sum_to_one(tiny_model_dir):
    result = runner.invoke(app, ["explain", "It is a truth", "--model", str(tiny_model_dir), "--json"])
    data = json.loads(result.stdout)
    assert data["position"] == 3 and data["tokens"] == ["It", " is", " a", " truth"]
    assert abs(sum(data["steps"]["weights"]) - 1) < 1e-6
    assert data["check"]["passed"] is True
    assert data["cache"]["cached_shape"] == [1, 4, 3, 16]


def test_explain_refuses_a_position_past_the_prompt(tiny_model_dir):
    result = runner.invoke(app, ["explain", "Hi there", "--model", str(tiny_model_dir), "-p", "5"])
    assert result.exit_code == 2
    assert (
        result.stderr == "gencli: error: there is no position 5: the prompt (2 tokens) has positions 0 to 1\n"
    )
