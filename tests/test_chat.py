"""The chat session: every turn is a one-shot generation on the transcript, with less prefill."""

import pytest

from gencli.chat import ChatSession, ChatTemplate
from gencli.errors import GencliError
from gencli.generation import generate_text
from gencli.loading import load_model
from gencli.prefix import common_prefix_length
from gencli.settings import DecodingOptions
from tests.conftest import save_tiny_model

GREEDY = DecodingOptions(max_new_tokens=12, repetition_penalty=1.2)
SAMPLED = DecodingOptions(max_new_tokens=12, sample=True, seed=7, top_k=50)
ENTRIES = ["Good morning.", "What news from London?", "And the weather?", "Goodbye then."]


def one_shot(session, turn):
    """What `gencli generate` gives on the transcript this turn continued."""
    return generate_text(session.loaded, turn.result.prompt, session.mode, session.decoding).token_ids


@pytest.mark.parametrize("mode", ["kv-cache", "scratch", "generate"])
@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_every_turn_equals_generate_on_the_whole_transcript(tiny, mode, options):
    session = ChatSession(tiny, mode, options)
    held = []
    for number, entry in enumerate(ENTRIES, start=1):
        cached_before = list(session.prefix.token_ids)
        turn = session.send(entry)
        assert turn.number == number
        assert turn.result.prompt == "".join(held) + f"\nUser: {entry}\nAssistant:"
        assert turn.result.token_ids == one_shot(session, turn)
        held.append(f"\nUser: {entry}\nAssistant:" + turn.reply)
        assert session.transcript == "".join(held)
        # only what the cache did not hold was prefilled: all of the first, little of the rest
        assert turn.cached_tokens == common_prefix_length(cached_before, turn.result.prompt_token_ids)
        assert (turn.cached_tokens == 0) == (number == 1)
        assert turn.prefilled_tokens < 16 or number == 1
        assert turn.cached_tokens + turn.prefilled_tokens == len(turn.result.prompt_token_ids)
        assert turn.cache_positions == len(turn.result.prompt_token_ids) + len(turn.result.token_ids) - 1


def test_a_seeded_sampled_session_replays_identically(tiny):
    replies = [
        [ChatSession(tiny, "kv-cache", SAMPLED).send(entry).reply for entry in ENTRIES[:1]] for _ in range(2)
    ]
    assert replies[0] == replies[1]
    first, second = (ChatSession(tiny, "kv-cache", SAMPLED) for _ in range(2))
    assert [first.send(e).result.token_ids for e in ENTRIES] == [
        second.send(e).result.token_ids for e in ENTRIES
    ]


def test_undo_crops_the_cache_and_the_next_turn_is_still_exact(tiny):
    session = ChatSession(tiny, "kv-cache", GREEDY)
    session.send(ENTRIES[0])
    before = session.transcript
    session.send(ENTRIES[1])
    dropped = session.undo()
    assert dropped.entry == "\nUser: What news from London?\nAssistant:"
    assert session.transcript == before
    encoded = tiny.tokenizer.encode(before)
    assert len(session.prefix.token_ids) <= len(encoded)
    assert session.prefix.token_ids == encoded[: len(session.prefix.token_ids)]
    turn = session.send(ENTRIES[2])
    assert turn.number == 2  # the undone turn no longer counts
    assert turn.result.token_ids == one_shot(session, turn)
    assert turn.cached_tokens >= common_prefix_length(encoded, turn.result.prompt_token_ids) - 1
    session.reset()
    assert session.turns == [] and session.prefix.token_ids == [] and session.undo() is None
    assert session.send(ENTRIES[0]).number == 1


@pytest.mark.parametrize("mode", ["kv-cache", "scratch", "generate"])
def test_save_and_load_continue_exactly(tiny, tmp_path, mode):
    original = ChatSession(tiny, mode, GREEDY)
    for entry in ENTRIES[:2]:
        original.send(entry)
    path = tmp_path / "session.safetensors"
    saved = original.save(path)
    expected = original.send(ENTRIES[2])

    restored = ChatSession(tiny, mode, GREEDY)
    assert restored.load(path) == saved
    assert [t.entry for t in restored.turns] == [t.entry for t in original.turns[:2]]
    turn = restored.send(ENTRIES[2])
    assert turn.result.token_ids == expected.result.token_ids
    assert turn.cached_tokens == expected.cached_tokens > 0


def test_load_refuses_other_models_plain_prompt_caches_and_damage(tiny, tmp_path):
    from gencli.generation import PromptCacheFile

    session = ChatSession(tiny, "kv-cache", GREEDY)
    session.send(ENTRIES[0])
    path = tmp_path / "session.safetensors"
    session.save(path)
    other = load_model(str(save_tiny_model(tmp_path / "other", seed=1)), device="cpu")
    with pytest.raises(GencliError, match="is for another model: not loaded"):
        ChatSession(other, "kv-cache", GREEDY).load(path)
    plain = tmp_path / "plain.safetensors"
    generate_text(tiny, "Hello there", "kv-cache", GREEDY, prompt_cache=PromptCacheFile(plain))
    with pytest.raises(GencliError, match="is a prompt cache, not a chat session"):
        session.load(plain)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GencliError, match="unreadable"):
        session.load(path)
    with pytest.raises(GencliError, match="does not exist"):
        session.load(tmp_path / "missing.safetensors")
    assert len(session.turns) == 1  # a refused load leaves the session as it was


def test_the_oldest_turns_are_dropped_to_fit_the_context(tmp_path):
    small = load_model(str(save_tiny_model(tmp_path / "small", n_positions=64)), device="cpu")
    session = ChatSession(small, "kv-cache", DecodingOptions(max_new_tokens=10, ignore_eos=True))
    dropped = []
    for entry in ENTRIES * 2:
        cached_before = list(session.prefix.token_ids)
        turn = session.send(entry)
        dropped.append(turn.dropped_turns)
        assert turn.result.token_ids == one_shot(session, turn)
        assert len(turn.result.prompt_token_ids) + 10 <= 64
        if turn.dropped_turns:
            # The transcript now starts elsewhere, and positions are absolute: only the leading
            # "\nUser:" tag, at the same positions as before, is still reusable.
            assert turn.cached_tokens == common_prefix_length(cached_before, turn.result.prompt_token_ids)
            assert turn.cached_tokens <= len(small.tokenizer.encode("\nUser:"))
    assert any(dropped)


def test_an_entry_that_cannot_fit_is_refused_and_the_session_goes_on(tmp_path):
    small = load_model(str(save_tiny_model(tmp_path / "small", n_positions=32)), device="cpu")
    session = ChatSession(small, "kv-cache", DecodingOptions(max_new_tokens=8))
    session.send("Hi")
    with pytest.raises(GencliError, match="cannot fit the model's context of 32; shorten it"):
        session.send("word " * 40)
    assert len(session.turns) == 1


def test_a_stop_string_ends_the_reply_and_leaves_the_transcript(tiny):
    free = ChatSession(tiny, "kv-cache", GREEDY, ChatTemplate("{text}")).send("Hello world")
    stop = tiny.tokenizer.decode(free.result.token_ids[3:5])
    session = ChatSession(
        tiny, "kv-cache", GREEDY.model_copy(update={"stop": (stop,)}), ChatTemplate("{text}")
    )
    turn = session.send("Hello world")
    assert turn.result.finish_reason == "stop" and turn.result.text.endswith(stop)
    assert turn.reply == turn.result.text[: turn.result.text.rfind(stop)]
    assert session.transcript == "Hello world" + turn.reply


def test_templates():
    assert ChatTemplate().stop == ("\nUser:",)
    assert ChatTemplate("Q: {text}\nA:").stop == ("Q:",)
    assert ChatTemplate("{text}").stop == ()
    with pytest.raises(GencliError, match=r"needs '\{text\}' exactly once"):
        ChatTemplate("no slot")


def test_greedy_mode_has_no_cache_to_keep(tiny):
    with pytest.raises(GencliError, match="greedy mode keeps no KV cache"):
        ChatSession(tiny, "greedy", GREEDY)
