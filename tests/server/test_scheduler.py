"""Continuous batching: requests that join a running batch at different steps, each with its own
settings, give the tokens they give alone."""

import asyncio

import pytest

from gencli.generation import generate_text
from gencli.server.jobs import Job, ParsedRequest
from gencli.server.scheduler import MAX_BATCH, Batch, run_batches
from gencli.settings import DecodingOptions

REQUESTS = [
    ("It is a truth universally acknowledged", DecodingOptions(max_new_tokens=9)),
    ("Call me Ishmael.", DecodingOptions(max_new_tokens=5, repetition_penalty=1.3)),
    ("Hi", DecodingOptions(max_new_tokens=12, sample=True, temperature=0.9, seed=7)),
    ("The meaning of life is", DecodingOptions(max_new_tokens=3, no_repeat_ngram_size=2)),
    ("Once upon a time there was a", DecodingOptions(max_new_tokens=10, sample=True, top_k=20, seed=3)),
    ([464, 3290, 318], DecodingOptions(max_new_tokens=6)),
]


def run(tiny, mode, requests, joins_at, cancel_at=None):
    """Run the requests through the scheduler, request i handed over at step joins_at[i]."""
    loop = asyncio.new_event_loop()
    jobs = [Job(ParsedRequest(prompt, mode, options), loop) for prompt, options in requests]
    state = {"boundary": 0, "admitted": False}
    results = {}

    def take_next(wanted_mode):
        """At most one job a step boundary: the first waiting one whose step has come."""
        if state["admitted"]:
            state["admitted"] = False
            return None
        state["boundary"] += 1
        if cancel_at is not None and state["boundary"] == cancel_at[1]:
            jobs[cancel_at[0]].cancelled.set()
        ready = [job for i, job in enumerate(jobs) if joins_at[i] <= state["boundary"] and job not in taken]
        if not ready:
            return None
        taken.append(ready[0])
        state["admitted"] = True
        return ready[0]

    def finish(job, result, problem):
        assert problem is None, problem
        results[jobs.index(job)] = result

    taken = [jobs[0]]
    while len(results) < len(jobs):  # as the worker does: a new batch when one drains
        waiting = [job for job in jobs if job not in taken]
        first = waiting[0] if len(results) else jobs[0]
        if first not in taken:
            taken.append(first)
        run_batches(tiny, first, take_next, lambda mode, ids: None, finish)
    loop.close()
    return [results[i] for i in range(len(jobs))]


@pytest.mark.parametrize("mode", ["kv-cache", "scratch"])
def test_rows_that_join_at_different_steps_give_their_tokens_alone(tiny, mode, monkeypatch):
    decoding_when_joined = []
    original = Batch.join

    def join(self, prefilled):
        decoding_when_joined.append(len(self.rows))
        original(self, prefilled)

    monkeypatch.setattr(Batch, "join", join)
    results = run(tiny, mode, REQUESTS, joins_at=[0, 1, 2, 2, 4, 6])
    assert max(decoding_when_joined) >= 2  # rows joined a batch that was already decoding
    for (prompt, options), result in zip(REQUESTS, results, strict=True):
        alone = generate_text(tiny, prompt, mode, options)
        assert result.token_ids == alone.token_ids, prompt
        assert result.finish_reason == alone.finish_reason and result.seed == alone.seed


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(tiny):
    results = run(tiny, "kv-cache", REQUESTS[:3], joins_at=[0, 0, 0], cancel_at=(0, 3))
    assert results[0].finish_reason == "interrupted" and len(results[0].token_ids) < 9
    for (prompt, options), result in zip(REQUESTS[1:3], results[1:], strict=True):
        assert result.token_ids == generate_text(tiny, prompt, "kv-cache", options).token_ids


def test_no_more_rows_than_the_batch_holds(tiny):
    requests = [(f"Prompt {i}", DecodingOptions(max_new_tokens=2)) for i in range(MAX_BATCH + 2)]
    results = run(tiny, "kv-cache", requests, joins_at=[0] * len(requests))
    assert all(len(result.token_ids) == 2 for result in results)


def test_rows_with_prompt_lookup_verify_together_and_give_their_solo_tokens(tiny, monkeypatch):
    # A pass verifies the rows together when each has a proposal: prompts the tiny model repeats.
    speculating = DecodingOptions(max_new_tokens=14, speculate="ngram", speculative_tokens=3)
    repeating = "one two three four one two three four one two"
    requests = [
        (repeating, speculating),
        (repeating, speculating.model_copy(update={"max_new_tokens": 9, "speculative_tokens": 5})),
        (repeating + " three", speculating.model_copy(update={"speculative_tokens": 2})),
        ("It is a truth universally", speculating),
    ]
    passes = []
    original = Batch._verify

    def verify(self, logits, proposals):
        kept = original(self, logits, proposals)
        passes.append((len(self.rows), proposals[0].length, kept))
        return kept

    monkeypatch.setattr(Batch, "_verify", verify)
    results = run(tiny, "kv-cache", requests, joins_at=[0, 0, 1, 9])
    assert any(rows > 1 for rows, _, _ in passes)  # rows verified in one pass
    assert any(kept < length + 1 for _, length, kept in passes)  # a refusal rolled the batch back
    for (prompt, options), result in zip(requests, results, strict=True):
        alone = generate_text(tiny, prompt, "kv-cache", options.model_copy(update={"speculate": "none"}))
        assert result.token_ids == alone.token_ids, prompt
        assert result.speculation["method"] == "ngram"
