"""The explore page's routes: the same numbers as the CLI's --json for the same tokens, errors as
OpenAI error objects, and /v1/generate's per-token events."""

import json

import httpx
import pytest
from typer.testing import CliRunner

from gencli.cli import app

runner = CliRunner()
PROMPT = "The cat sat on the mat because"


def post(served, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {served.api_key}"}
    return httpx.post(served.url + path, json=body, headers=headers, timeout=60)


def cli_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_page_and_its_files_are_served(served):
    page = httpx.get(served.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/explore/explore.js"></script>' in page.text
    assert httpx.get(served.url + "/explore/explore.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(served.url + "/explore/secret.py").status_code == 404
    health = httpx.get(served.url + "/health").json()
    assert (health["layers"], health["heads"], health["context"]) == (2, 4, 1024)


def test_tokenize_equals_the_cli_for_text_and_for_ids(served, tiny, tiny_model_dir):
    answer = post(served, "/v1/tokenize", {"prompt": PROMPT}).json()
    expected = cli_json("tokenize", PROMPT, "--model", str(tiny_model_dir))
    assert answer == expected  # the served name is the --model it was given, as the CLI's
    assert [token["id"] for token in answer["tokens"]] == tiny.tokenizer.encode(PROMPT)
    ids = [token["id"] for token in answer["tokens"]]
    assert post(served, "/v1/tokenize", {"prompt": ids}).json() == answer


def test_attention_equals_the_cli(served, tiny_model_dir):
    answer = post(served, "/v1/attention", {"prompt": PROMPT, "layer": 1, "head": 2}).json()
    expected = cli_json("attention", PROMPT, "--model", str(tiny_model_dir), "--layer", "1", "--head", "2")
    assert (answer["ids"], answer["tokens"]) == (expected["ids"], expected["tokens"])
    assert [len(row) for row in answer["weights"]] == list(range(1, len(answer["ids"]) + 1))
    for row, wanted in zip(answer["weights"], expected["weights"], strict=True):
        assert row == pytest.approx(wanted, abs=1e-4)
        assert sum(row) == pytest.approx(1, abs=1e-4)


def test_every_heads_thumbnail_averages_its_map(served):
    ids = list(range(100, 228))  # 128 tokens: each thumbnail cell averages a 2 x 2 block
    answer = post(served, "/v1/attention", {"prompt": ids, "head": 3, "thumbnails": True}).json()
    thumbnails = answer["thumbnails"]
    assert len(thumbnails) == 4 and {(len(head), len(head[0])) for head in thumbnails} == {(64, 64)}
    full = [row + [0.0] * (len(ids) - len(row)) for row in answer["weights"]]
    for i in range(64):
        for j in range(64):
            block = [full[2 * i + a][2 * j + b] for a in (0, 1) for b in (0, 1)]
            assert thumbnails[3][i][j] == pytest.approx(sum(block) / 4, abs=1e-4)


def test_explain_equals_the_cli(served, tiny_model_dir):
    body = {"prompt": PROMPT, "layer": 1, "head": 3, "position": 4}
    answer = post(served, "/v1/explain", body).json()
    args = ["--layer", "1", "--head", "3", "--position", "4"]
    expected = cli_json("explain", PROMPT, "--model", str(tiny_model_dir), *args)
    assert answer["steps"]["head_output"] == pytest.approx(expected["steps"]["head_output"], abs=1e-5)
    assert answer["attention_output"] == pytest.approx(expected["attention_output"], abs=1e-5)
    assert answer["check"]["passed"]


def test_compare_runs_every_mode(served):
    answer = post(served, "/v1/compare", {"prompt": PROMPT, "max_new_tokens": 5}).json()
    assert answer["agree"] and list(answer["results"]) == ["generate", "greedy", "kv-cache", "scratch"]
    assert {len(result["token_ids"]) for result in answer["results"].values()} == {5}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/attention", {"prompt": PROMPT, "layer": 2}, "layer"),
        ("/v1/explain", {"prompt": PROMPT, "position": 99}, "position"),
        ("/v1/attention", {"prompt": PROMPT, "head": "one"}, "'head' must be an integer"),
        ("/v1/tokenize", {"prompt": ""}, "empty"),
        ("/v1/compare", {"prompt": PROMPT, "top_k": -1}, "top_k"),
        ("/v1/explain", {"prompt": PROMPT, "colour": 1}, "unknown field(s): colour"),
    ],
)
def test_a_bad_inspection_is_a_400_naming_the_problem(served, path, body, message):
    response = post(served, path, body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_a_streamed_generation_sends_each_tokens_logprob_and_cache(served):
    body = {
        "prompt": PROMPT,
        "stream": True,
        "max_new_tokens": 4,
        "top_logprobs": 2,
        "inspect_cache": "steps",
    }
    events = []
    with httpx.stream(
        "POST", served.url + "/v1/generate", json=body, headers={"Authorization": f"Bearer {served.api_key}"}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    result = events[-1]["result"]
    logprobs = [event["logprob"] for event in events if "logprob" in event]
    positions = [event["cache"]["seq_len"] for event in events if "cache" in event]
    assert [record["token"] for record in logprobs] == result["token_ids"]
    prompt_length = len(result["prompt_token_ids"])
    assert positions == list(range(prompt_length, prompt_length + 4))
