"""The explore page in Chromium: it loads cleanly, streams what /v1/completions returns, and its
heatmap, alternatives, KV cache and explain panels show the CLI's numbers."""

import json

import httpx
import pytest
from playwright.sync_api import Page, expect
from typer.testing import CliRunner

from gencli.cli import app
from gencli.generation import generate_text
from gencli.settings import resolve

runner = CliRunner()
PROMPT = "The cat sat on the mat"
NEW_TOKENS = 6


@pytest.fixture
def explore(page: Page, served) -> Page:
    """The page, with the server's API key in its session (as the page asks for it on a 401)."""
    page.add_init_script(f"sessionStorage.setItem('gencli-api-key', {json.dumps(served.api_key)})")
    page.goto(served.url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page


def generate(page: Page, prompt: str = PROMPT, tokens: int = NEW_TOKENS) -> None:
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(tokens))
    page.fill("#temperature", "0")
    page.press("#prompt", "Enter")  # Enter generates
    expect(page.locator("#status")).to_contain_text(f"{tokens} tokens (length)")
    expect(page.locator("#heatmap svg, #heatmap canvas")).to_be_visible()


def cli_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_page_loads_and_generates_without_console_errors(page: Page, served):
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.add_init_script(f"sessionStorage.setItem('gencli-api-key', {json.dumps(served.api_key)})")
    page.goto(served.url + "/?prompt=Once+upon")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#prompt")).to_have_value("Once upon")
    generate(page)
    page.click("#compare")
    expect(page.locator("#verdict")).to_have_text("All 4 modes agree, token for token.")
    assert problems == []


def test_the_page_streams_the_text_completions_returns(explore: Page, served):
    generate(explore)
    completion = httpx.post(
        served.url + "/v1/completions",
        # The page runs /v1/generate, with the CLI's preset; OpenAI's routes take it when asked.
        json={
            "prompt": PROMPT,
            "max_tokens": NEW_TOKENS,
            "temperature": 0,
            "repetition_penalty": 1.2,
            "no_repeat_ngram_size": 3,
        },
        headers={"Authorization": f"Bearer {served.api_key}"},
        timeout=60,
    ).json()
    assert explore.inner_text("#output") == completion["choices"][0]["text"]
    assert explore.locator(".token:not(.prompt)").count() == NEW_TOKENS


def test_the_heatmap_shows_the_clis_attention(explore: Page, tiny_model_dir):
    generate(explore)
    explore.select_option("#layer", "1")
    explore.select_option("#head", "2")
    expect(explore.locator("#heatmap svg")).to_have_attribute(
        "aria-label", "layer 1 head 2: attention of 12 tokens"
    )
    ids = explore.evaluate("window.explore.ids")
    count = len(ids)
    cells = explore.eval_on_selector_all(
        "#heatmap rect.cell", "rects => rects.map(r => [+r.dataset.query, +r.dataset.key, +r.dataset.weight])"
    )
    assert len(cells) == count * count
    sequence = " ".join(map(str, ids))
    args = ["--layer", "1", "--head", "2", "--token-ids"]
    expected = cli_json("attention", sequence, "--model", str(tiny_model_dir), *args)
    for query, key, weight in cells:
        wanted = expected["weights"][query][key] if key <= query else 0.0
        assert weight == pytest.approx(wanted, abs=1e-4)
    explore.hover(f"#heatmap rect.cell[data-query='{count - 1}'][data-key='0']")
    expect(explore.locator("#cell-info")).to_contain_text(f"query {count - 1}")


def test_every_head_is_a_small_map(explore: Page):
    generate(explore)
    explore.select_option("#head", "all")
    expect(explore.locator("#heatmap figure")).to_have_count(4)
    explore.click("#heatmap figure >> nth=3")
    expect(explore.locator("#head")).to_have_value("3")


def test_a_tokens_hover_shows_its_alternatives(explore: Page):
    generate(explore)
    explore.hover(".token:not(.prompt) >> nth=2")
    tooltip = explore.locator("#alternatives")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("chosen with p = ")
    expect(tooltip.locator("tr.alternative")).to_have_count(5)
    explore.focus(".token:not(.prompt) >> nth=2")
    explore.keyboard.press("Tab")  # the next token takes focus, and shows its own
    expect(tooltip).to_contain_text("token 9:")


def test_the_cache_grows_by_one_position_a_token(explore: Page):
    generate(explore)
    history = explore.evaluate("window.explore.cacheHistory")
    prompt_length = explore.evaluate("window.explore.promptLength")
    assert history == list(range(prompt_length, prompt_length + NEW_TOKENS))
    final = prompt_length + NEW_TOKENS - 1
    expect(explore.locator("#cache tbody tr")).to_have_count(2)
    expect(explore.locator("#cache tbody tr >> nth=0")).to_contain_text(f"[1, 4, {final}, 16]")
    expect(explore.locator("#cache-summary")).to_contain_text(f"{final} positions held")


def test_the_explain_panel_ends_on_the_clis_vector(explore: Page, tiny_model_dir):
    generate(explore)
    explore.select_option("#layer", "1")
    explore.select_option("#head", "3")
    explore.click(".token >> nth=4")
    final = explore.locator("#explain-final")
    expect(final).to_have_count(1)
    shown = json.loads(final.text_content())
    sequence = " ".join(map(str, explore.evaluate("window.explore.ids")))
    args = ["--layer", "1", "--head", "3", "--position", "4", "--token-ids"]
    expected = cli_json("explain", sequence, "--model", str(tiny_model_dir), *args)
    assert shown == pytest.approx(expected["steps"]["head_output"], abs=1e-5)
    expect(explore.locator("#explain")).to_contain_text("checked against Hugging Face: equal")


def test_stop_ends_a_generation_and_the_page_goes_on(explore: Page):
    explore.fill("#prompt", PROMPT)
    explore.fill("#max-tokens", "1000")
    explore.click("#generate")
    expect(explore.locator(".token:not(.prompt) >> nth=3")).to_be_attached()
    explore.keyboard.press("Escape")
    expect(explore.locator("#status")).to_contain_text("stopped after")
    assert explore.locator(".token:not(.prompt)").count() < 1000
    expect(explore.locator("#generate")).to_be_enabled()
    generate(explore, tokens=3)


def test_a_long_sequence_is_drawn_on_a_canvas(explore: Page):
    generate(explore, tokens=140)  # 146 tokens: a rect per cell would be 21,316 rects
    canvas = explore.locator("#heatmap canvas")
    expect(canvas).to_have_attribute("aria-label", "layer 0 head 0: attention of 146 tokens")
    assert explore.eval_on_selector("#heatmap canvas", "c => [c.width, c.height]") == [146, 146]
    height = canvas.bounding_box()["height"]
    canvas.hover(position={"x": 1, "y": height - 1})  # the last query's first key
    expect(explore.locator("#cell-info")).to_contain_text("query 145")


def test_a_shaped_answer_shows_what_the_shape_allowed(explore: Page):
    explore.fill("#prompt", "Pick one:")
    explore.fill("#max-tokens", "24")
    explore.select_option("#shape", "choice")
    explore.fill("#shape-text", "red | green | blue")
    explore.click("#generate")
    expect(explore.locator("#status")).to_contain_text("shaped by choice: complete")
    assert explore.inner_text("#output") in ("red", "green", "blue")
    first = explore.locator(".token:not(.prompt) >> nth=0")
    allowed = int(first.get_attribute("data-allowed"))
    assert 3 <= allowed < 100  # the choices' first tokens, not the vocabulary
    first.hover()
    tooltip = explore.locator("#alternatives")
    expect(tooltip).to_contain_text(f"the shape allowed {allowed} tokens")
    expect(tooltip.locator("tr.disallowed").first).to_be_visible()  # the model's own choices, ruled out


def test_newlines_are_shown_and_a_new_sequence_clears_the_old_map(explore: Page):
    generate(explore, prompt="One\nTwo")
    assert "⏎" in [explore.inner_text(f".token.prompt >> nth={n}") for n in range(3)]
    explore.hover("#heatmap rect.cell >> nth=0")
    expect(explore.locator("#cell-info")).to_contain_text("query 0")
    expect(explore.locator(".axes .axis-x")).to_contain_text("keys")
    expect(explore.locator(".axes .axis-y")).to_contain_text("queries")
    explore.fill("#max-tokens", "1000")
    explore.click("#generate")
    expect(explore.locator("#cell-info")).to_have_text("Rows are queries, columns the keys they attend to.")
    explore.keyboard.press("Escape")


def test_a_field_the_browser_refuses_says_why(explore: Page):
    generate(explore, tokens=2)
    explore.fill("#temperature", "-1")
    explore.click("#generate")
    expect(explore.locator("#status")).to_contain_text("Temperature: ")
    expect(explore.locator("#status")).to_have_class("error")


def test_speculation_marks_accepted_tokens_and_the_refused_proposals(explore: Page, tiny):
    prompt = "one two three four one two three four one two"
    explore.fill("#prompt", prompt)
    explore.fill("#max-tokens", "12")
    explore.fill("#repetition-penalty", "1")
    explore.fill("#no-repeat-ngram", "0")
    explore.select_option("#speculate", "ngram")
    explore.click("#generate")
    expect(explore.locator("#status")).to_contain_text("12 tokens (length)")
    settings = dict(max_new_tokens=12, repetition_penalty=1.0, no_repeat_ngram_size=0, speculate="ngram")
    local = generate_text(tiny, prompt, "kv-cache", resolve().settings.decoding.model_copy(update=settings))
    stats = local.speculation
    expect(explore.locator("#status")).to_contain_text(
        f"speculate ngram: {stats['accepted']} of {stats['proposed']} proposals accepted"
    )
    assert stats["accepted"] > 0 and stats["accepted"] < stats["proposed"]
    tokens = explore.locator(".token:not(.prompt)")
    marks = [tokens.nth(n).get_attribute("class") for n in range(12)]
    expected = []
    for step in stats["steps"]:  # accepted, then the model's own: marked where it refused the rest
        expected += ["accepted"] * step["accepted"]
        expected += ["refused-here" if step["accepted"] < len(step["proposed"]) else ""]
    shown = [next((m for m in ("accepted", "refused-here") if m in c.split()), "") for c in marks[1:]]
    assert shown == expected
    explore.locator(".token.accepted").first.hover()
    expect(explore.locator("#alternatives")).to_contain_text("speculation: proposed, and the model agreed")
    explore.locator(".token.refused-here").first.hover()
    expect(explore.locator("#alternatives .refused")).to_be_visible()
