"""How a streamed choice is cut into chunks: a token each once its characters are whole, each with
its own log-probabilities, stop strings held back."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import torch

from gencli.generation import TextCallbackStreamer, logprob_record
from gencli.server.app import choice_pieces
from gencli.server.jobs import Job, ParsedRequest
from gencli.settings import DecodingOptions


def stream(tiny, token_ids, options, finish_reason="length"):
    """The chunks `choice_pieces` makes of `token_ids`, fed to a job as the worker feeds one: each
    token's log-probability record, then its text; then a result that ended for `finish_reason`."""

    async def run():
        loop = asyncio.get_running_loop()
        job = Job(ParsedRequest("unused", "kv-cache", options, top_logprobs=0), loop)
        streamer = TextCallbackStreamer(tiny.tokenizer, job.send)
        for token in token_ids:
            job.send_step("logprob", logprob_record(tiny.tokenizer, torch.zeros(50257), token, 0))
            streamer.put(torch.tensor([token]))
        streamer.end()
        job.finish(SimpleNamespace(finish_reason=finish_reason))
        return [(text, [step["token"] for step in steps]) async for text, steps, _ in choice_pieces(job)]

    with ThreadPoolExecutor(1) as thread:  # a thread of its own: the browser tests leave a loop running
        return thread.submit(asyncio.run, run()).result()


def test_a_character_split_across_tokens_waits_for_its_last_token(tiny):
    ids = tiny.tokenizer.encode(" a😀b日本")
    assert len(ids) > 6  # the emoji and each CJK character take several tokens
    pieces = stream(tiny, ids, DecodingOptions())
    assert "".join(text for text, _ in pieces) == " a😀b日本"
    assert all("\ufffd" not in text for text, _ in pieces)
    assert [token for _, tokens in pieces for token in tokens] == ids  # every token's record, once
    whole = [tokens for text, tokens in pieces if text == "😀"]
    assert len(whole) == 1 and len(whole[0]) > 1  # the emoji's chunk carries all of its tokens


def test_a_stop_string_holds_its_tokens_back_with_their_logprobs(tiny):
    ids = tiny.tokenizer.encode("one\nUser: two")
    pieces = stream(tiny, ids, DecodingOptions(stop=("\nUser:",)), "stop")
    assert "".join(text for text, _ in pieces) == "one"
    assert [token for _, tokens in pieces for token in tokens] == ids
