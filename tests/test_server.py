"""`gencli serve` over HTTP: the OpenAI client, gencli's own endpoint, prefix reuse, load, faults."""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gencli.generation import generate_text
from gencli.server.worker import PrefixPool
from gencli.settings import DecodingOptions, resolve
from gencli.stop_strings import without_stop
from gencli.tokens import token_bytes
from tests.conftest import stop_server

openai = pytest.importorskip("openai")

# The `served` fixture gives the server -n 8 and nothing else. gencli's own route takes the CLI's
# settings; OpenAI's take OpenAI's defaults for the rest: sampling at temperature 1, no penalties.
SERVER_DEFAULTS = resolve().settings.decoding.model_copy(update={"max_new_tokens": 8})
GREEDY = DecodingOptions(max_new_tokens=8)  # temperature 0 on OpenAI's routes: the argmax, nothing else


def local(tiny, prompt, **changes):
    """What an OpenAI route gives for `prompt`, greedy unless `changes` say otherwise."""
    return generate_text(tiny, prompt, "kv-cache", GREEDY.model_copy(update=changes))


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=served.api_key, max_retries=0)


def headers(served, key=None):
    return {"Authorization": f"Bearer {key or served.api_key}"}


def test_completions_with_the_openai_client_equal_local_generate(tiny, client):
    completion = client.completions.create(
        model=tiny.name, prompt="It is a truth universally", max_tokens=8, temperature=0
    )
    expected = local(tiny, "It is a truth universally")
    choice = completion.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert completion.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert completion.usage.completion_tokens == 8
    assert completion.model == tiny.name and completion.object == "text_completion"


def test_streamed_completion_ends_with_done_and_usage(tiny, client):
    stream = client.completions.create(
        model=tiny.name,
        prompt="Call me Ishmael.",
        max_tokens=8,
        temperature=0.8,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == local(tiny, "Call me Ishmael.", sample=True, temperature=0.8, seed=3).text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_token_id_prompts(tiny, client):
    ids = tiny.tokenizer.encode("Hello world")
    completion = client.completions.create(model=tiny.name, prompt=ids, max_tokens=4, temperature=0)
    assert completion.choices[0].text == local(tiny, ids, max_new_tokens=4).text


def test_prefix_reuse_is_reported_and_changes_nothing(tiny, client):
    context = "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    first = client.completions.create(model=tiny.name, prompt=context + "must be", temperature=0)
    second = client.completions.create(model=tiny.name, prompt=context + "may be", temperature=0)
    shared = len(tiny.tokenizer.encode(context.rstrip()))
    assert second.usage.prompt_tokens_details.cached_tokens >= shared - 1
    assert second.choices[0].text == local(tiny, context + "may be").text
    assert first.choices[0].text == local(tiny, context + "must be").text


def test_gencli_endpoint_returns_the_generate_json_record(tiny, served):
    body = {"prompt": "Hello world", "max_new_tokens": 5, "mode": "scratch", "inspect_cache": True}
    record = httpx.post(served.url + "/v1/generate", json=body, headers=headers(served), timeout=60).json()
    expected = generate_text(
        tiny, "Hello world", "scratch", SERVER_DEFAULTS.model_copy(update={"max_new_tokens": 5})
    )
    assert record["token_ids"] == expected.token_ids and record["mode"] == "scratch"
    assert set(record) == set(expected.to_dict()) | {"cache", "cache_snapshots"}
    assert record["cache"][0]["positions"] == len(expected.prompt_token_ids) + 4


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", {"model": "gpt-4", "prompt": "Hi"}, 404, "this server runs"),
        ("/v1/completions", {"prompt": "Hi", "n": 0}, 400, "'n' must be an integer, 1 or more"),
        ("/v1/completions", {"prompt": ["a"] * 9, "n": 2}, 400, "prompts x n must be at most 16, got 9 x 2"),
        ("/v1/completions", {"prompt": "Hi", "best_of": 3}, 400, "'best_of'"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, 400, "'max_tokens' = 0 generates nothing"),
        ("/v1/completions", {"prompt": "Hi", "echo": True, "stream": True}, 400, "'echo' with 'stream'"),
        (
            "/v1/completions",
            {"prompt": "Hi", "logprobs": 99},
            400,
            "'logprobs' must be an integer from 0 to 20",
        ),
        ("/v1/completions", {"prompt": "Hi", "colour": "red"}, 400, "unknown field(s): colour"),
        ("/v1/completions", {"prompt": "Hi", "top_p": 2}, 400, "'top_p' must be a number in (0, 1]"),
        (
            "/v1/completions",
            {"prompt": "Hi", "max_tokens": 5000},
            400,
            "context of 1024 tokens; use max_tokens",
        ),
        ("/v1/completions", {"prompt": [["a"]]}, 400, "'prompt' must be a string, a list of token ids"),
        ("/v1/chat/completions", {"messages": []}, 400, "'messages' must be a non-empty list"),
        ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0] must"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "must be text"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            400,
            "needs",
        ),
        ("/v1/completions", {"prompt": [99999999]}, 400, "token ids must be in"),
        ("/v1/generate", {"prompt": "Hi", "max_new_tokens": 0}, 400, "'max_new_tokens' must be an integer"),
        ("/v1/generate", {"prompt": "Hi", "model": "demo"}, 404, "this server runs"),
        ("/v1/generate", {"prompt": "Hi", "colour": "red"}, 400, "unknown field(s): colour"),
        ("/v1/generate", {"prompt": ""}, 400, "the prompt is empty"),
        ("/v1/generate", {"prompt": "Hi", "max_new_tokens": 5000}, 400, "; use max_new_tokens"),
    ],
)
def test_bad_requests_get_openai_style_errors(served, path, body, status, fragment):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(served.url + path, headers=headers(served), timeout=60, **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and {"message", "type", "param", "code"} <= set(error)


def test_request_bodies_have_a_limit(served):
    response = httpx.post(
        served.url + "/v1/completions", headers=headers(served), json={"prompt": "x" * 2_000_000}, timeout=60
    )
    assert response.status_code == 413


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_missing_or_wrong_key_is_refused_but_health_is_open(served, key):
    sent = {} if key is None else headers(served, key)
    for path in ("/v1/models",):
        assert httpx.get(served.url + path, headers=sent).status_code == 401
    response = httpx.post(served.url + "/v1/completions", headers=sent, json={"prompt": "Hi"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(served.url + "/health").json()["status"] == "ok"
    assert served.get("/v1/models")["data"][0]["owned_by"] == "gencli"


def test_eight_concurrent_clients_lose_nothing_and_mix_nothing(tiny, served):
    prompts = [
        f"Client {client} asks question number {request} about"
        for client in range(8)
        for request in range(10)
    ]

    def ask(prompt):
        response = httpx.post(
            served.url + "/v1/completions",
            headers=headers(served),
            json={"prompt": prompt, "max_tokens": 6, "temperature": 0},
            timeout=120,
        )
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, prompts))
    assert [status for status, _ in answers] == [200] * 80
    for prompt, (_, body) in zip(prompts, answers, strict=True):
        assert body["choices"][0]["text"] == local(tiny, prompt, max_new_tokens=6).text


def test_a_client_that_leaves_mid_stream_frees_the_server(served):
    slow = {"prompt": "Once", "mode": "greedy", "max_new_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", served.url + "/v1/generate", json=slow, headers=headers(served), timeout=60
    ) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # without the cancel, 1,000 no-cache steps would hold the worker for many seconds
    started = time.monotonic()
    quick = httpx.post(
        served.url + "/v1/generate", json={"prompt": "Hi"}, headers=headers(served), timeout=60
    )
    assert quick.status_code == 200
    assert time.monotonic() - started < 5


def test_a_full_queue_answers_503_with_retry_after(served):
    # One request runs and 8 wait (--max-queue 8): of 11 long ones, at least two are turned away.
    slow = {"prompt": "Once", "mode": "greedy", "max_new_tokens": 600, "ignore_eos": True, "stream": True}
    answers, release = [], threading.Event()

    def send():
        with httpx.stream(
            "POST", served.url + "/v1/generate", json=slow, headers=headers(served), timeout=60
        ) as r:
            answers.append((r.status_code, r.headers.get("retry-after")))
            if r.status_code == 200:
                release.wait(30)  # leaving closes the stream, which cancels the job

    threads = [threading.Thread(target=send) for _ in range(11)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(answers) < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    refused = [retry for status, retry in answers if status == 503]
    assert len(refused) >= 2 and set(refused) == {"1"}
    assert len(answers) == 11 and {status for status, _ in answers} == {200, 503}
    quick = httpx.post(
        served.url + "/v1/generate", json={"prompt": "Hi"}, headers=headers(served), timeout=60
    )
    assert quick.status_code == 200


def test_prefix_pool_takes_the_longest_shared_prefix_then_the_least_recent():
    made = []
    pool = PrefixPool(lambda: made.append(1) or object(), entries=2)
    a = pool.take([1, 2, 3])
    a.token_ids = [1, 2, 3]
    b = pool.take([7, 8])
    b.token_ids = [7, 8]
    assert pool.take([1, 2, 9]) is a  # shares two tokens
    assert pool.take([5]) is b  # nothing shared, pool full: the least recently used
    assert len(made) == 2


def test_sigterm_stops_the_server_cleanly(tiny_model_dir, spare_server):
    server = spare_server
    assert stop_server(server) == 0
    time.sleep(0.2)  # the reader thread takes the last lines
    stderr = server.stderr()
    assert f"serving {tiny_model_dir} (kv-cache) at {server.url}/v1" in stderr and "Traceback" not in stderr


def test_generate_dot_server_prints_what_a_local_run_prints(tiny_model_dir, served):
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "gencli",
        "generate",
        "It is a truth",
        "-n",
        "8",
        "--mode",
        "kv-cache",
        "--no-log",
    ]
    env = {"GENCLI_SERVER": served.url, "GENCLI_API_KEY": served.api_key, "PATH": "/usr/bin:/bin"}
    remote = subprocess.run(
        [*base, "--json", "-q"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    from typer.testing import CliRunner

    from gencli.cli import app

    # The local run in this process (torch is imported already); the remote ones as a user runs them.
    local_run = CliRunner().invoke(app, [*base[3:], "--json", "-q", "--model", str(tiny_model_dir)])
    assert remote.returncode == 0, remote.stderr
    remote_record, local_record = json.loads(remote.stdout), json.loads(local_run.stdout)
    assert remote_record["token_ids"] == local_record["token_ids"] and set(remote_record) == set(local_record)
    streamed = subprocess.run(base, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert streamed.stdout == local_record["text"] + "\n"
    assert "kv-cache · 4 prompt tokens" in streamed.stderr


def test_generate_dot_server_imports_neither_torch_nor_transformers(served):
    import subprocess
    import sys

    code = (
        "import sys\nfrom gencli.cli import main\n"
        f"sys.argv = ['gencli', 'generate', 'Hi', '--server', {served.url!r}, "
        f"'--api-key', {served.api_key!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert done.stderr.strip().splitlines()[-1] == "False False", done.stderr
    assert done.stdout.strip()


def test_an_unreachable_server_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from gencli.cli import app
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["generate", "Hi", "--server", url])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"gencli: error: cannot reach a gencli server at {url}")
    assert len(result.stderr.splitlines()) == 1


def test_a_refused_request_is_the_servers_message(served):
    from typer.testing import CliRunner

    from gencli.cli import app

    result = CliRunner().invoke(
        app, ["generate", "Hi", "--server", served.url, "--api-key", served.api_key, "-n", "5000"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("gencli: error: the server refused the request: ")
    assert "exceeds the model's context" in result.stderr


def test_a_model_named_with_server_must_be_the_served_one(served, tiny_model_dir):
    from typer.testing import CliRunner

    from gencli.cli import app

    argv = [
        "generate",
        "Hi",
        "-n",
        "2",
        "-q",
        "--no-log",
        "--server",
        served.url,
        "--api-key",
        served.api_key,
    ]
    same = CliRunner().invoke(app, [*argv, "-m", str(tiny_model_dir)])
    assert same.exit_code == 0 and same.stdout, same.stderr
    alias = CliRunner().invoke(app, argv, env={"GENCLI_MODEL": "gpt2"})  # a --served-model-name
    assert alias.exit_code == 0 and alias.stdout, alias.stderr
    other = CliRunner().invoke(app, argv, env={"GENCLI_MODEL": "gpt-4"})
    assert other.exit_code == 2 and other.stdout == ""
    assert other.stderr == (
        f"gencli: error: the server refused the request: this server runs '{tiny_model_dir}', 'gpt2', "
        "not 'gpt-4'\n"
    )


def test_completion_logprobs_match_local_generate(tiny, client):
    completion = client.completions.create(
        model=tiny.name, prompt="Hello world", max_tokens=5, logprobs=2, temperature=0
    )
    expected = generate_text(
        tiny, "Hello world", "kv-cache", GREEDY.model_copy(update={"max_new_tokens": 5}), top_logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs.token_logprobs == pytest.approx([step["logprob"] for step in expected.logprobs], abs=1e-4)
    assert logprobs.tokens == [step["text"] for step in expected.logprobs]
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


# --- what the ecosystem's clients send: chat, scoring, OpenAI's stop semantics, n, aliases ---


def chat_document(*turns):
    """gencli chat's dialogue template over user (str) and assistant (tuple) turns."""
    return "".join(f"\nUser: {turn}\nAssistant:" if isinstance(turn, str) else turn[0] for turn in turns)


def test_chat_completions_plain_and_streamed_equal_local_generate(tiny, client):
    messages = [{"role": "user", "content": "Good morning."}]
    reply = client.chat.completions.create(model=tiny.name, messages=messages, max_tokens=8, temperature=0)
    expected = local(tiny, chat_document("Good morning."), stop=("\nUser:",))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and reply.object == "chat.completion"
    assert choice.message.content == expected.text.removesuffix("\nUser:")
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    chunks = list(
        client.chat.completions.create(
            model=tiny.name, messages=messages, max_tokens=8, stream=True, temperature=0
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_a_chat_turn_with_history_and_a_system_message_is_the_chat_document(tiny, client):
    messages = [
        {"role": "system", "content": "A letter."},
        {"role": "user", "content": "Dear Sir,"},
        {"role": "assistant", "content": " I write"},
        {"role": "user", "content": [{"type": "text", "text": "Go on."}]},
    ]
    reply = client.chat.completions.create(
        model=tiny.name, messages=messages, max_tokens=6, logprobs=True, top_logprobs=2, temperature=0
    )
    expected = local(
        tiny,
        "A letter." + chat_document("Dear Sir,", (" I write",), "Go on."),
        stop=("\nUser:",),
        max_new_tokens=6,
    )
    assert reply.choices[0].message.content == expected.text
    content = reply.choices[0].logprobs.content
    assert [entry.token for entry in content] == [tiny.tokenizer.decode([t]) for t in expected.token_ids]
    assert [entry.bytes for entry in content] == [
        list(token_bytes(tiny.tokenizer, t)) for t in expected.token_ids
    ]
    assert all(len(entry.top_logprobs) == 2 for entry in content)


def test_a_stop_string_is_left_out_of_the_text_streamed_or_not(tiny, client):
    plain = local(tiny, "It is a truth universally", max_new_tokens=8)
    stop = plain.text[3:5]  # two characters the model does write
    completion = client.completions.create(
        model=tiny.name, prompt="It is a truth universally", stop=[stop], temperature=0
    )
    text = completion.choices[0].text
    assert completion.choices[0].finish_reason == "stop"
    assert stop not in text and plain.text.startswith(text)
    streamed = client.completions.create(
        model=tiny.name, prompt="It is a truth universally", stop=[stop], stream=True, temperature=0
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == text


def test_echo_scoring_shaped_like_lm_eval_equals_the_models_own_log_softmax(tiny, served):
    import torch

    ids = tiny.tokenizer.encode("The cat sat on the mat because it was tired")
    body = {"prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234}
    body["model"] = tiny.name
    response = httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60)
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    with torch.inference_mode():
        expected = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    scored = logprobs["token_logprobs"][1 : len(ids)]
    wanted = [float(expected[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert scored == pytest.approx(wanted, abs=1e-4)
    for position in range(1, len(ids)):  # the most likely token, as lm-eval reads is_greedy
        ((_, best_logprob),) = logprobs["top_logprobs"][position].items()
        assert best_logprob == pytest.approx(float(expected[position - 1].max()), abs=1e-4)
    prompt_text = tiny.tokenizer.decode(ids)
    assert choice["text"].startswith(prompt_text) and len(logprobs["tokens"]) == len(ids) + 1
    assert logprobs["text_offset"][:3] == [
        0,
        len(logprobs["tokens"][0]),
        len(logprobs["tokens"][0] + logprobs["tokens"][1]),
    ]


def test_max_tokens_zero_with_echo_scores_the_prompt_alone(tiny, client):
    completion = client.completions.create(
        model=tiny.name, prompt="Call me Ishmael.", max_tokens=0, echo=True, logprobs=0
    )
    choice = completion.choices[0]
    assert choice.text == "Call me Ishmael." and completion.usage.completion_tokens == 0
    assert len(choice.logprobs.token_logprobs) == len(tiny.tokenizer.encode("Call me Ishmael."))


def test_n_and_a_list_of_prompts_give_one_choice_each_in_index_order(tiny, client):
    """Greedy choices repeat; without a temperature, OpenAI's default samples (at 1), choice j with
    the seed + j."""
    prompts = ["It is a truth", "Call me Ishmael."]
    completion = client.completions.create(model=tiny.name, prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in completion.choices]
    assert texts == [local(tiny, prompt, max_new_tokens=4).text for prompt in prompts for _ in range(2)]
    assert completion.usage.completion_tokens == 16
    sampled = client.completions.create(model=tiny.name, prompt="Hello", n=2, max_tokens=6, seed=5)
    first, second = (choice.text for choice in sampled.choices)
    assert first == local(tiny, "Hello", max_new_tokens=6, sample=True, temperature=1.0, seed=5).text
    assert second == local(tiny, "Hello", max_new_tokens=6, sample=True, temperature=1.0, seed=6).text


def test_logprobs_with_stream_equal_the_plain_ones(tiny, client):
    plain = client.completions.create(
        model=tiny.name, prompt="Hello world", max_tokens=5, logprobs=2, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=tiny.name, prompt="Hello world", max_tokens=5, logprobs=2, stream=True, temperature=0
        )
    )
    streamed = [chunk.choices[0].logprobs for chunk in chunks if chunk.choices and chunk.choices[0].logprobs]
    tokens = [token for logprobs in streamed for token in logprobs.tokens]
    values = [value for logprobs in streamed for value in logprobs.token_logprobs]
    assert tokens == plain.choices[0].logprobs.tokens
    assert values == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-6)


def test_served_model_names_are_aliases(tiny, client):
    assert [model.id for model in client.models.list().data] == [tiny.name, "gpt2"]
    completion = client.completions.create(model="gpt2", prompt="Hello", max_tokens=2)
    assert completion.model == "gpt2"
    with pytest.raises(openai.NotFoundError, match="this server runs"):
        client.completions.create(model="gpt-4", prompt="Hello", max_tokens=2)


def test_ignore_eos_is_accepted_as_vllm_names_it(tiny, client):
    completion = client.completions.create(
        model=tiny.name, prompt="Hello", max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert completion.usage.completion_tokens == 6 and completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        ("GET", "/v1/nothing", 404, "there is no /v1/nothing"),
        ("GET", "/v1/completions", 405, "does not take GET"),
    ],
)
def test_unknown_routes_and_methods_are_openai_error_objects(served, method, path, status, fragment):
    response = httpx.request(method, served.url + path, headers=headers(served), timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and {"message", "type", "param", "code"} <= set(error)


# --- OpenAI's defaults, every sampling field, the Responses API, a chunk per token --------------


def test_temperature_zero_alone_is_generate_with_no_penalties(tiny, tiny_model_dir, served):
    from typer.testing import CliRunner

    from gencli.cli import app

    body = {"prompt": "It is a truth universally acknowledged", "temperature": 0}
    answer = httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60).json()
    argv = ["generate", body["prompt"], "-m", str(tiny_model_dir), "-n", "8", "--json", "--no-log"]
    plain = CliRunner().invoke(app, [*argv, "--repetition-penalty", "1", "--no-repeat-ngram-size", "0"])
    preset = CliRunner().invoke(app, argv)
    assert answer["choices"][0]["text"] == json.loads(plain.stdout)["text"]
    assert answer["choices"][0]["text"] != json.loads(preset.stdout)["text"]  # the CLI's preset differs


def test_without_a_temperature_openai_routes_sample_and_the_cli_preset_stays_with_generate(tiny, client):
    first, second = client.completions.create(model=tiny.name, prompt="Hello", n=2, max_tokens=8).choices
    assert first.text != second.text  # OpenAI's default: temperature 1, each choice its own seed
    seeded = client.completions.create(model=tiny.name, prompt="Hello", max_tokens=8, seed=9)
    assert seeded.choices[0].text == local(tiny, "Hello", sample=True, seed=9).text


def test_every_sampling_field_equals_its_definition_in_a_server_batch(tiny, served):
    """Requests that each set one field, sent at once so that they decode together, each against
    the plain definition of its field (tests.test_sampling.reference_run)."""
    import torch

    from tests.test_sampling import (
        PROMPT,
        biased,
        min_p_only,
        penalised,
        reference_run,
        top_k_only,
        unchanged,
    )

    free = reference_run(tiny, PROMPT, 12, unchanged)
    stop = next(token for token in free[3:] if token not in free[:3])

    def never_stop(logits, generated):  # min_tokens 12 holds the stop token back for all 12
        return logits.index_fill(0, torch.tensor([stop]), -float("inf"))

    cases = [  # (fields, the field's own formula, seed, tokens that end the run)
        ({"frequency_penalty": 1.5}, penalised(1.5, 0), None, ()),
        ({"presence_penalty": 2.0}, penalised(0, 2.0), None, ()),
        ({"frequency_penalty": -0.8, "presence_penalty": 0.6}, penalised(-0.8, 0.6), None, ()),
        ({"logit_bias": {"13": 8, "11": -100}}, biased({13: 8.0, 11: -100.0}), None, ()),
        ({"top_k": 3}, top_k_only(3), 11, ()),
        ({"min_p": 0.2}, min_p_only(0.2), 12, ()),
        ({"stop_token_ids": [stop]}, unchanged, None, (stop,)),
        ({"min_tokens": 12, "stop_token_ids": [stop]}, never_stop, None, ()),
    ]

    def ask(fields, seed):
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0 if seed is None else 1, **fields}
        body |= {} if seed is None else {"seed": seed}
        return httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60)

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:  # decoded together, a row each
        answers = list(pool.map(lambda case: ask(case[0], case[2]), cases))
    for (fields, transform, seed, end), answer in zip(cases, answers, strict=True):
        expected = reference_run(tiny, PROMPT, 12, transform, seed, end)
        choice = answer.json()["choices"][0]
        assert choice["text"] == tiny.tokenizer.decode(expected), fields
        assert choice["finish_reason"] == ("stop" if end else "length"), fields


def test_responses_plain_and_streamed_give_the_chat_reply(tiny, client):
    reply = client.responses.create(
        model=tiny.name, input="Good morning.", instructions="A letter.", max_output_tokens=8, temperature=0
    )
    expected = local(tiny, "A letter." + chat_document("Good morning."), stop=("\nUser:",))
    assert reply.output_text == expected.text.removesuffix("\nUser:") and reply.object == "response"
    assert reply.status == ("incomplete" if expected.finish_reason == "length" else "completed")
    assert reply.usage.input_tokens == len(expected.prompt_token_ids) and reply.usage.output_tokens == 8
    events = list(
        client.responses.create(
            model=tiny.name,
            input=[
                {"role": "developer", "content": "A letter."},
                {"role": "user", "content": "Good morning."},
            ],
            max_output_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == reply.output_text == events[-1].response.output_text
    assert len(deltas) >= 6  # a delta per token, not per word
    with client.responses.stream(model=tiny.name, input="Good morning.", max_output_tokens=4) as stream:
        assert len(stream.get_final_response().output_text) > 0


@pytest.mark.parametrize(
    ("fields", "fragment", "param"),
    [
        ({"store": True}, "this server keeps no responses", "store"),
        (
            {"previous_response_id": "resp_1"},
            "send the conversation so far as 'input'",
            "previous_response_id",
        ),
        ({"tools": [{"type": "function", "name": "f"}]}, "do not call tools", "tools"),
        ({"input": [{"type": "function_call"}]}, "input[0] must be a message", "input[0]"),
        ({"max_output_tokens": 5000}, "use max_output_tokens", "max_output_tokens"),
    ],
)
def test_the_responses_api_refuses_what_a_stateless_server_cannot_do(served, fields, fragment, param):
    body = {"input": "Hi", **fields}
    answer = httpx.post(served.url + "/v1/responses", json=body, headers=headers(served), timeout=60)
    assert answer.status_code == 400
    assert fragment in answer.json()["error"]["message"] and answer.json()["error"]["param"] == param


def test_a_model_is_retrieved_by_name(tiny, client):
    assert client.models.retrieve("gpt2").id == "gpt2"
    assert client.models.retrieve(tiny.name).created > 1_600_000_000  # the checkpoint's time, not 0
    with pytest.raises(openai.NotFoundError, match="this server runs"):
        client.models.retrieve("gpt-4")


def test_the_developer_role_is_the_system_role(tiny, client):
    def reply(role):
        messages = [{"role": role, "content": "A letter."}, {"role": "user", "content": "Dear Sir,"}]
        return client.chat.completions.create(model=tiny.name, messages=messages, temperature=0)

    assert reply("developer").choices[0].message.content == reply("system").choices[0].message.content


def test_streamed_chunks_are_one_token_each_with_its_own_logprobs(tiny, client):
    expected = local(tiny, "It is a truth", max_new_tokens=12, top_logprobs=1)
    chunks = list(
        client.completions.create(
            model=tiny.name, prompt="It is a truth", max_tokens=12, temperature=0, logprobs=1, stream=True
        )
    )
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices and chunk.choices[0].text]
    assert texts == [tiny.tokenizer.decode([token]) for token in expected.token_ids]
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert [choice.logprobs.tokens for choice in choices if choice.text] == [[text] for text in texts]
    offsets = [offset for choice in choices for offset in choice.logprobs.text_offset]
    assert offsets == [len("".join(texts[:index])) for index in range(len(texts))]
    chat = list(
        client.chat.completions.create(
            model=tiny.name,
            messages=[{"role": "user", "content": "It is a truth"}],
            max_tokens=8,
            temperature=0,
            logprobs=True,
            stream=True,
        )
    )
    for chunk in chat[1:]:  # each chunk's text is what its tokens' bytes make
        (choice,) = chunk.choices
        entries = choice.logprobs.content if choice.logprobs else []
        made = bytes(byte for entry in entries for byte in entry.bytes).decode()
        assert made == (choice.delta.content or "")
    assert sum(len(chunk.choices[0].logprobs.content or []) for chunk in chat[1:]) == 8


def test_vllm_output_fields_keep_the_stop_string_and_the_special_tokens(tiny, client):
    plain = local(tiny, "It is a truth universally", max_new_tokens=8)
    stop = plain.text[3:5]
    kept = client.completions.create(
        model=tiny.name,
        prompt="It is a truth universally",
        stop=[stop],
        temperature=0,
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].finish_reason == "stop" and kept.choices[0].text == without_stop(
        plain.text, (stop,), keep=True
    )
    shown = client.completions.create(
        model=tiny.name,
        prompt=[*tiny.tokenizer.encode("It is a truth universally"), 50256],
        max_tokens=4,
        temperature=0,
        extra_body={"skip_special_tokens": False, "logit_bias": {"50256": 100}, "ignore_eos": True},
    )
    assert shown.choices[0].text == "<|endoftext|>" * 4


def test_a_prompt_that_fills_the_context_is_the_prompts_fault(tiny, served):
    long_prompt = [464] * 1024
    for body, param in (
        ({"prompt": long_prompt, "max_tokens": 1}, "prompt"),
        ({"prompt": long_prompt[:1000], "max_tokens": 100}, "max_tokens"),
    ):
        answer = httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param


def test_each_request_leaves_an_access_line_on_stderr(served):
    wanted = '"POST /v1/completions" 200 · 2 prompt + 3 completion tokens · '

    def lines():
        return [line for line in served.log if wanted in line]

    before = len(lines())
    body = {"prompt": "Access line", "max_tokens": 3}
    httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60)
    deadline = time.monotonic() + 5  # written once the answer has gone out
    while time.monotonic() < deadline and len(lines()) == before:
        time.sleep(0.02)
    assert len(lines()) == before + 1
    assert lines()[-1].startswith("gencli: 127.0.0.1:") and lines()[-1].rstrip().endswith(" s")


def test_a_storm_of_clients_waits_its_turn_and_every_answer_is_whole(demo_server):
    """40 clients at once, each sending 3 requests in turn (a completion, a streamed chat and a
    streamed response), against `gencli serve -m demo` with no flags: none is turned away."""

    def events(response):
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]

    def session(number):
        answers = []
        with httpx.Client(base_url=demo_server.url, timeout=120) as http:
            completion = http.post("/v1/completions", json={"prompt": f"Letter {number}:", "max_tokens": 8})
            body = completion.json()
            whole = body["choices"][0]["finish_reason"] == "stop" or body["usage"]["completion_tokens"] == 8
            answers.append((completion.status_code, whole))
            chat = {"messages": [{"role": "user", "content": f"Question {number}?"}], "max_tokens": 8}
            with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as streamed:
                chunks = events(streamed)
                answers.append((streamed.status_code, chunks[-1]["choices"][0]["finish_reason"] is not None))
            reply = {"input": f"Answer {number}.", "max_output_tokens": 8, "stream": True}
            with http.stream("POST", "/v1/responses", json=reply) as streamed:
                typed = events(streamed)
                answers.append((streamed.status_code, typed[-1]["type"] == "response.completed"))
        return answers

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = [answer for answers in pool.map(session, range(40)) for answer in answers]
    assert [status for status, _ in answers] == [200] * 120
    assert all(whole for _, whole in answers)


# --- Structured output: response_format, structured_outputs, text.format -----------------------


def test_openai_parse_returns_the_parsed_object(tiny, client):
    from typing import Literal

    from pydantic import BaseModel

    class Verdict(BaseModel):
        answer: Literal["yes", "no"]
        sure: bool

    reply = client.chat.completions.parse(
        model=tiny.name,
        messages=[{"role": "user", "content": "Is it?"}],
        response_format=Verdict,
        max_tokens=40,  # the served fixture's default is 8 tokens
    )
    assert isinstance(reply.choices[0].message.parsed, Verdict)
    response = client.responses.parse(
        model=tiny.name, input="Is it?", text_format=Verdict, max_output_tokens=40
    )
    assert isinstance(response.output_parsed, Verdict)


def test_json_object_and_structured_outputs_on_completions(tiny, client):
    shaped = client.chat.completions.create(
        model=tiny.name,
        messages=[{"role": "user", "content": "Data?"}],
        response_format={"type": "json_object"},
        max_tokens=40,
        temperature=0,
        logit_bias={"92": 8},  # a random model rarely closes a free object: make `}` likely
    )
    assert isinstance(json.loads(shaped.choices[0].message.content), dict)
    chosen = client.completions.create(
        model=tiny.name, prompt="Pick:", extra_body={"structured_outputs": {"choice": ["red", "blue"]}}
    )
    assert chosen.choices[0].text in ("red", "blue") and chosen.choices[0].finish_reason == "stop"
    matched = client.completions.create(
        model=tiny.name, prompt="Code:", extra_body={"structured_outputs": {"regex": "[A-Z]{2}[0-9]{3}"}}
    )
    assert re.fullmatch("[A-Z]{2}[0-9]{3}", matched.choices[0].text)


def test_batched_requests_each_keep_their_own_shape(tiny, served):
    shapes = [
        {"structured_outputs": {"choice": ["alpha", "beta", "gamma"]}},
        {"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": ["x", "y"]}}}},
        {},
    ]
    settings = [
        {"choice": ("alpha", "beta", "gamma")},
        {"regex": "[0-9]{3}-[a-z]{2}"},
        {"json_schema": '{"enum": ["x", "y"]}'},
        {},
    ]

    def ask(shape):
        body = {"prompt": "It is a truth", "max_tokens": 12, "temperature": 0, **shape}
        return httpx.post(served.url + "/v1/completions", json=body, headers=headers(served), timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:  # decoded together
        answers = list(pool.map(ask, shapes))
    for shape, setting, answer in zip(shapes, settings, answers, strict=True):
        alone = local(tiny, "It is a truth", max_new_tokens=12, **setting)
        assert answer.json()["choices"][0]["text"] == alone.text, shape


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"structured_outputs": {"regex": "[0-9"}}, "structured_outputs", "unclosed character class"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty list of strings"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "with one of"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}},
            "response_format",
            "json_schema cannot shape",
        ),
        (
            {"response_format": {"type": "xml"}},
            "response_format",
            "'type' of text, json_object or json_schema",
        ),
    ],
)
def test_what_cannot_shape_an_answer_is_a_400_naming_the_field(served, body, param, fragment):
    answer = httpx.post(
        served.url + "/v1/completions", json={"prompt": "Hi", **body}, headers=headers(served), timeout=60
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


def test_requests_with_prompt_lookup_keep_their_solo_tokens_and_may_not_name_a_draft(tiny, served):
    prompts = ["one two three four one two three four one", "a b a b a b a b", "It is a truth universally"]
    body = {"max_tokens": 12, "temperature": 0, "speculate": "ngram", "no_repeat_ngram_size": 0}

    def complete(prompt):
        reply = httpx.post(
            served.url + "/v1/completions",
            json={"prompt": prompt, **body},
            headers=headers(served),
            timeout=60,
        )
        return reply.json()["choices"][0]["text"]

    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(complete, prompts))
    assert texts == [local(tiny, prompt, max_new_tokens=12).text for prompt in prompts]
    record = httpx.post(
        served.url + "/v1/generate",
        json={
            "prompt": prompts[1],
            "speculate": "ngram",
            "max_new_tokens": 12,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
        },
        headers=headers(served),
    ).json()
    assert record["token_ids"] == local(tiny, prompts[1], max_new_tokens=12).token_ids
    speculation = record["speculation"]
    assert speculation["method"] == "ngram"
    assert speculation["passes"] + speculation["accepted"] == 11  # every token after the prefill's
    refused = httpx.post(
        served.url + "/v1/completions",
        json={"prompt": "Hi", "speculate": "draft", "draft_model": "demo"},
        headers=headers(served),
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "draft_model"
    assert "gencli serve --draft-model MODEL" in refused.json()["error"]["message"]
    no_draft = httpx.post(
        served.url + "/v1/generate", json={"prompt": "Hi", "speculate": "draft"}, headers=headers(served)
    )
    assert no_draft.status_code == 400 and "speculate draft needs a draft model" in no_draft.text
