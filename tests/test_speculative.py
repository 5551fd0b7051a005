"""Speculative decoding: the same tokens as without it in every mode, the model's distribution
when sampling, and a cache rolled back to exactly what a run without the proposal holds."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LogitsProcessorList, StoppingCriteriaList
from transformers.cache_utils import DynamicCache
from transformers.generation.stopping_criteria import MaxLengthCriteria

from gencli.cache import crop_cache
from gencli.engines import ENGINES, DecodeRequest
from gencli.errors import GencliError
from gencli.generation import PromptCacheFile, generate_batch, generate_text
from gencli.loading import LoadedModel, load_model
from gencli.prefix import CachedPrefix
from gencli.settings import MODES, DecodingOptions
from gencli.speculative import (
    DraftProposer,
    PromptLookup,
    Proposal,
    SpeculationStats,
    Speculator,
    continuation,
    judge,
    unbanned_length,
)
from gencli.tokens import BUNDLED_TOKENIZER
from gencli.transformers_compat import cache_argument
from tests.conftest import save_tiny_model

# Prompts that repeat themselves, so prompt lookup finds proposals from the first step on.
PROMPTS = ["one two three four one two three four one two", "The cat sat on the mat. The cat sat on the"]
OPTIONS = {
    "greedy": {},
    "penalties": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
}


@pytest.fixture(scope="module")
def other_shape(tmp_path_factory) -> LoadedModel:
    """A random small GPT-2 of another shape than `tiny` (3 layers, 2 heads of 16)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("model"), seed=1, n_layer=3, n_head=2, n_embd=32)
    return load_model(str(folder), device="cpu")


@pytest.fixture(params=["tiny", "other_shape"])
def model(request) -> LoadedModel:
    """Random small GPT-2s of two shapes; a random model's greedy text soon repeats itself."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    """A smaller random GPT-2 with the same tokenizer: it proposes what the model mostly refuses."""
    return save_tiny_model(tmp_path_factory.mktemp("draft"), seed=5, n_layer=1, n_embd=32, n_head=2)


def options(**values) -> DecodingOptions:
    return DecodingOptions(max_new_tokens=20, **values)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra", list(OPTIONS))
def test_prompt_lookup_gives_the_tokens_of_a_run_without_it(model, mode, extra):
    proposed = 0
    for prompt, counts in zip(PROMPTS, ((1, 8), (3,)), strict=True):
        plain = generate_text(model, prompt, mode, options(**OPTIONS[extra]))
        for tokens in counts:
            run = generate_text(
                model, prompt, mode, options(**OPTIONS[extra], speculate="ngram", speculative_tokens=tokens)
            )
            assert run.token_ids == plain.token_ids, (prompt, tokens)
            assert run.finish_reason == plain.finish_reason
            proposed += run.speculation["proposed"]
    if extra == "greedy":  # the random models repeat themselves: proposals were verified
        assert proposed > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra", list(OPTIONS))
def test_a_draft_model_gives_the_tokens_of_a_run_without_it(other_shape, draft_dir, mode, extra):
    model = other_shape
    plain = generate_text(model, PROMPTS[1], mode, options(**OPTIONS[extra]))
    # A draft whose proposals are mostly refused, then the model as its own draft (all accepted).
    for draft, tokens in ((draft_dir, 3), (model.folder, 8)):
        settings = options(
            **OPTIONS[extra], speculate="draft", draft_model=str(draft), speculative_tokens=tokens
        )
        run = generate_text(model, PROMPTS[1], mode, settings)
        assert run.token_ids == plain.token_ids, (draft, tokens)
    assert run.speculation["acceptance_rate"] == 1.0  # every proposal is the model's own choice
    # 19 tokens after the prefill's, 9 a pass; Hugging Face verifies its first proposal with the
    # prompt, in the prefill: its passes after it give 20 - 9 tokens.
    assert run.speculation["passes"] == (2 if mode == "generate" else 3)


def test_a_speculative_run_counts_its_passes_and_shows_them_in_the_cache_steps(model):
    settings = options(speculate="draft", draft_model=str(model.folder), speculative_tokens=4)
    run = generate_text(model, PROMPTS[0], "kv-cache", settings, inspect_cache="steps")
    prompt = len(run.prompt_token_ids)
    assert (
        run.speculation
        == {
            "method": "draft",
            "speculative_tokens": 4,
            "passes": 4,
            "proposed": 15,  # the last pass proposes 3: with its own token they end the 20 asked for
            "accepted": 15,
            "acceptance_rate": 1.0,
            "tokens_per_pass": 19 / 4,
            "passes_saved": 15,
            "steps": [
                {
                    "proposed": run.token_ids[1:5],
                    "accepted": 4,
                    "tokens": 5,
                    "written": prompt + 5,
                    "kept": prompt + 5,
                },
                {
                    "proposed": run.token_ids[6:10],
                    "accepted": 4,
                    "tokens": 5,
                    "written": prompt + 10,
                    "kept": prompt + 10,
                },
                {
                    "proposed": run.token_ids[11:15],
                    "accepted": 4,
                    "tokens": 5,
                    "written": prompt + 15,
                    "kept": prompt + 15,
                },
                {
                    "proposed": run.token_ids[16:19],
                    "accepted": 3,
                    "tokens": 4,
                    "written": prompt + 19,
                    "kept": prompt + 19,
                },
            ],
        }
    )
    events = [(s.new_tokens, s.seq_len, s.event) for s in run.cache_snapshots]
    assert events[:3] == [
        (1, prompt, None),
        (1, prompt + 5, "verify 4 proposed: +5"),
        (6, prompt + 5, f"4 of 4 accepted: all kept: {prompt + 5}"),
    ]


def test_a_refused_proposal_is_rolled_back(model, draft_dir):
    run = generate_text(
        model,
        PROMPTS[1],
        "scratch",
        options(speculate="draft", draft_model=str(draft_dir)),
        inspect_cache="steps",
    )
    refused = [step for step in run.speculation["steps"] if step["accepted"] < len(step["proposed"])]
    assert refused
    for step in refused:
        assert step["written"] - step["kept"] == len(step["proposed"]) - step["accepted"]
    rolled_back = [s for s in run.cache_snapshots if s.event and "rolled back to" in s.event]
    assert rolled_back and all(s.seq_len == int(s.event.rsplit(" ", 1)[1]) for s in rolled_back)


@pytest.mark.parametrize("speculate", ["ngram", "draft"])
def test_seeded_sampling_gives_the_same_tokens_in_the_hand_written_modes(other_shape, draft_dir, speculate):
    model = other_shape
    settings = options(
        sample=True, seed=3, temperature=0.5, top_k=50, speculate=speculate, draft_model=str(draft_dir)
    )
    runs = {
        mode: generate_text(model, PROMPTS[0], mode, settings) for mode in ("kv-cache", "scratch", "greedy")
    }
    assert runs["scratch"].token_ids == runs["kv-cache"].token_ids == runs["greedy"].token_ids
    assert runs["kv-cache"].speculation["proposed"] > 0  # the acceptance rule had proposals to judge


@pytest.mark.parametrize("cache_mode", ["kv-cache", "scratch"])
def test_rolling_back_leaves_the_keys_and_values_of_a_run_without_the_proposal(tiny, cache_mode):
    # In float64, so that the one-row and the five-row products agree far below the tolerance.
    engine = ENGINES[cache_mode](copy.deepcopy(tiny.model).double())
    prompt = torch.tensor([tiny.tokenizer.encode("It is a truth universally")])
    newest, proposal = torch.tensor([[262]]), torch.tensor([[11, 290, 13, 198]])
    length = prompt.shape[1] + 1
    with torch.inference_mode():
        speculated = engine.new_cache(32)
        engine.run(speculated, prompt, None)
        engine.run(speculated, torch.cat([prompt, newest, proposal], 1), None, count=5)
        assert speculated.get_seq_length() == length + 4
        engine.roll_back(speculated, length)  # the whole proposal refused
        plain = engine.new_cache(32)
        engine.run(plain, prompt, None)
        engine.run(plain, torch.cat([prompt, newest], 1), None)
        assert speculated.get_seq_length() == plain.get_seq_length() == length
        for ours, theirs in zip(speculated.layers, plain.layers, strict=True):  # layer by layer
            # [batch, heads, positions, head_dim]
            torch.testing.assert_close(
                ours.keys[:, :, :length], theirs.keys[:, :, :length], atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                ours.values[:, :, :length], theirs.values[:, :, :length], atol=1e-6, rtol=0
            )
        # And the next step sees nothing of the refused tokens.
        after = torch.cat([prompt, newest, torch.tensor([[464]])], 1)
        torch.testing.assert_close(
            engine.run(speculated, after, None), engine.run(plain, after, None), atol=1e-6, rtol=0
        )


def test_hugging_face_dynamic_cache_is_cropped_on_its_own(tiny):
    model = copy.deepcopy(tiny.model).double()  # a 6-row and a 3-row product agree to 1e-15
    prompt = torch.tensor([tiny.tokenizer.encode("It is a truth universally acknowledged")])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(prompt, **cache_argument(cache), use_cache=True)
        crop_cache(cache, 3)
        fresh = DynamicCache(config=model.config)
        model(prompt[:, :3], **cache_argument(fresh), use_cache=True)
    assert cache.get_seq_length() == 3
    for ours, theirs in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-6, rtol=0)


def test_batch_rows_with_different_acceptance_each_give_their_solo_tokens(other_shape, draft_dir):
    model = other_shape
    prompts = [PROMPTS[0], "Hello world! The meaning of life is", PROMPTS[1]]
    for speculation in ({"speculate": "ngram"}, {"speculate": "draft", "draft_model": str(draft_dir)}):
        batched = generate_batch(model, prompts, "kv-cache", options(**speculation, speculative_tokens=5))
        for prompt, result in zip(prompts, batched, strict=True):
            assert result.token_ids == generate_text(model, prompt, "kv-cache", options()).token_ids


def test_generate_mode_speculates_one_prompt_at_a_time(tiny):
    with pytest.raises(GencliError, match="use --mode kv-cache to speculate over a batch"):
        generate_batch(tiny, ["a b a b", "c d"], "generate", options(speculate="ngram"))


def test_a_draft_with_another_tokenizer_or_larger_than_the_model_is_refused(tiny, tiny_model_dir, tmp_path):
    with pytest.raises(GencliError, match="has another tokenizer than"):
        generate_text(tiny, "Hello", "kv-cache", options(speculate="draft", draft_model="demo"))
    larger = save_tiny_model(tmp_path / "larger", n_layer=4)
    with pytest.raises(GencliError, match=r"is larger than .*a draft must be the smaller model"):
        generate_text(tiny, "Hello", "kv-cache", options(speculate="draft", draft_model=str(larger)))
    with pytest.raises(GencliError, match="speculate draft needs a draft model"):
        generate_text(tiny, "Hello", "kv-cache", options(speculate="draft"))


def test_prompt_lookup_continues_the_latest_occurrence_of_the_longest_match():
    assert continuation([1, 2, 3, 9, 1, 2, 3, 7, 8, 2, 3], 2) == [7, 8]  # "2 3" last seen before 7
    assert continuation([5, 6, 7, 5, 6], 4) == [7, 5, 6]
    assert continuation([1, 2, 3], 4) == []
    assert continuation([4, 1, 2, 4], 2) == [1, 2]  # down to one token's earlier occurrence
    # Under no_repeat_ngram_size 3 a copy is banned from its first token that repeats a 3-gram.
    assert unbanned_length([1, 2, 3, 4, 1, 2], [3, 4], 3) == 0
    assert unbanned_length([1, 2, 3, 4, 1], [2, 5], 3) == 2
    proposal = PromptLookup(3).propose(torch.tensor([[1, 2, 3, 4, 1, 2]]), None, 4, torch.tensor([True]))
    assert proposal.length == 0


def chi_square_p(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0  # nothing outside the model's support
    return float(chisquare(counts[keep], expected[keep] * counts.sum() / expected[keep].sum()).pvalue)


@pytest.mark.parametrize("drawn", [False, True])
def test_the_acceptance_rule_samples_the_models_distribution(drawn):
    """20,000 rows judge the same proposal: the tokens they end with follow p, whatever q was."""
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 20_000, 6
    scores = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -3.0]).expand(rows, vocab)
    q = torch.tensor([0.05, 0.5, 0.3, 0.05, 0.05, 0.05])
    proposed = torch.multinomial(q, rows, replacement=True, generator=generator)[:, None]
    proposal = Proposal(proposed, q.expand(rows, 1, vocab) if drawn else None)
    torch.manual_seed(1)
    tokens, accepted = judge(scores, proposal, 0, sample=True)
    assert 0 < accepted.float().mean() < 1
    assert chi_square_p(tokens, torch.softmax(scores[0], -1)) > 0.01


def test_speculative_sampling_end_to_end_follows_the_model(tmp_path):
    """A 6-token vocabulary: the token each row samples in the first verification pass follows
    the model's distribution after the row's first token (a chi-square per first token)."""
    torch.manual_seed(0)
    config = {"vocab_size": 6, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    model = GPT2LMHeadModel(GPT2Config(**config, initializer_range=0.5)).eval()
    draft = GPT2LMHeadModel(GPT2Config(**config, initializer_range=0.5)).eval()
    loaded, draft_loaded = (
        LoadedModel("m", m, AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)) for m in (model, draft)
    )
    rows = 6_000
    prompt = torch.tensor([[1, 4, 2]]).expand(rows, 3)
    settings = DecodingOptions(max_new_tokens=2, sample=True, ignore_eos=True)
    engine, draft_engine = loaded.engine("kv-cache"), draft_loaded.engine("kv-cache")
    proposer = DraftProposer(draft_engine, draft_engine.new_cache(8, rows), LogitsProcessorList(), True)
    request = DecodeRequest(
        tokenizer=loaded.tokenizer,
        input_ids=prompt,
        options=settings,
        eos_token_id=None,
        stopping=StoppingCriteriaList([MaxLengthCriteria(5)]),
        streamer=None,
        cache=engine.new_cache(8, rows),
        speculator=Speculator(proposer, 3, SpeculationStats("draft", 3)),
    )
    torch.manual_seed(2)
    sequences = engine.decode(request)
    assert request.speculator.stats.passes == 1
    with torch.inference_mode():
        for first in range(6):
            chosen = sequences[sequences[:, 3] == first, 4]
            if chosen.numel() < 200:
                continue
            logits = model(torch.tensor([[1, 4, 2, first]])).logits[0, -1]
            assert chi_square_p(chosen, torch.softmax(logits, -1)) > 0.001, first


def test_the_prompt_cache_and_a_chat_prefix_work_as_without_speculation(tiny, tmp_path):
    model = tiny
    settings = options(speculate="ngram", speculative_tokens=3)
    plain = generate_text(model, PROMPTS[0], "kv-cache", options())
    stored = PromptCacheFile(tmp_path / "prompt.cache")
    first = generate_text(model, PROMPTS[0], "kv-cache", settings, prompt_cache=stored)
    again = generate_text(model, PROMPTS[0], "kv-cache", settings, prompt_cache=stored)
    assert first.token_ids == again.token_ids == plain.token_ids
    assert first.prompt_cache_tokens == 0 and again.prompt_cache_tokens == len(plain.prompt_token_ids) - 1
    # A session's cache after a speculative turn holds the same positions as after a plain one.
    engine = model.engine("kv-cache")
    speculated, alone = CachedPrefix(engine.new_cache(128)), CachedPrefix(engine.new_cache(128))
    generate_text(model, PROMPTS[0], "kv-cache", settings, prefix=speculated)
    generate_text(model, PROMPTS[0], "kv-cache", options(), prefix=alone)
    assert speculated.token_ids == alone.token_ids
    assert speculated.cache.get_seq_length() == alone.cache.get_seq_length()
    # The next turn: the transcript so far and a new token; it reuses every position held.
    follow_up = plain.prompt_token_ids + plain.token_ids + [13]
    turn = generate_text(model, follow_up, "kv-cache", settings, prefix=speculated)
    assert turn.token_ids == generate_text(model, follow_up, "kv-cache", options()).token_ids
    assert turn.prompt_cache_tokens == alone.cache.get_seq_length()
