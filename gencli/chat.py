"""A chat session: one loaded model and one KV cache, kept across turns.

GPT-2 is a base model, not a chat model, so a session is one growing document. Each entry the
user makes is appended through a template (`"\\nUser: {text}\\nAssistant:"`), the model
continues the document, and its reply is appended too. Every turn is exactly a one-shot
generation on the whole transcript so far; the cache only saves work: a turn prefills just the
tokens that the cache does not already hold (`gencli.prefix`).

This module knows nothing of terminals: every method returns data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli import prompt_cache
from gencli.errors import GencliError
from gencli.generation import GenerationInterrupted, GenerationResult, generate_text
from gencli.loading import LoadedModel
from gencli.prefix import CachedPrefix, common_prefix_length
from gencli.settings import DecodingOptions, check_prompt
from gencli.stop_strings import without_stop

DIALOGUE_TEMPLATE = "\nUser: {text}\nAssistant:"
RAW_TEMPLATE = "{text}"
_SESSION_KEY = "gencli_chat_session"


@dataclass(frozen=True)
class ChatTemplate:
    """How an entry joins the transcript. The part before `{text}` names the user, so when the
    model writes it, the reply is over: it is the template's stop string."""

    text: str = DIALOGUE_TEMPLATE

    def __post_init__(self) -> None:
        if self.text.count("{text}") != 1:
            raise GencliError(f"a chat template needs '{{text}}' exactly once, got {self.text!r}")

    def entry(self, text: str) -> str:
        return self.text.replace("{text}", text)

    @property
    def stop(self) -> tuple[str, ...]:
        speaker = self.text.split("{text}")[0].rstrip(" ")
        return (speaker,) if speaker.strip() else ()


def chat_prompt(
    tokenizer: Any, messages: list[dict[str, str]], template: ChatTemplate | None = None
) -> tuple[str, tuple[str, ...]]:
    """The document a model continues for `messages` ({role, content}, the last one the user's),
    and the stop strings that end its reply. A checkpoint whose tokenizer has a chat template
    renders through it (its end-of-turn token ends the reply). Any other takes the dialogue
    template of `gencli chat`: a system message as it is, each user message as the template's
    entry, each assistant message as the reply after it: the transcript a chat session builds
    from the same turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ()
    template = template or ChatTemplate()
    document = "".join(
        template.entry(message["content"]) if message["role"] == "user" else message["content"]
        for message in messages
    )
    return document, template.stop


@dataclass(frozen=True)
class Turn:
    entry: str  # what the user's line added to the transcript
    reply: str  # the model's reply, as it stays in the transcript (without the stop string)


@dataclass
class TurnResult:
    """One turn: the generation itself, what stays of the reply, and what the cache saved."""

    number: int
    result: GenerationResult
    reply: str
    dropped_turns: int  # oldest turns dropped so that this one fits the context
    cache_positions: int  # positions the cache holds after the turn

    @property
    def cached_tokens(self) -> int:
        return self.result.prompt_cache_tokens

    @property
    def prefilled_tokens(self) -> int:
        return len(self.result.prompt_token_ids) - self.result.prompt_cache_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn": self.number,
            "text": self.reply,
            "token_ids": self.result.token_ids,
            "finish_reason": self.result.finish_reason,
            "cache": {
                "reused": self.cached_tokens,
                "prefilled": self.prefilled_tokens,
                "positions": self.cache_positions,
            },
            "dropped_turns": self.dropped_turns,
            "seed": self.result.seed,
            "timings": self.result.timings.to_dict(),
        }


class ChatInterrupted(Exception):
    """Ctrl-C during a reply: the partial reply was kept as the turn; carries it."""

    def __init__(self, turn: TurnResult):
        super().__init__("interrupted")
        self.turn = turn


class ChatSession:
    def __init__(
        self, loaded: LoadedModel, mode: str, options: DecodingOptions, template: ChatTemplate | None = None
    ):
        engine = loaded.engine(mode)
        if not engine.uses_cache:
            raise GencliError(
                f"{mode} mode keeps no KV cache, so a session could not reuse anything across turns; "
                "use --mode kv-cache, scratch or generate"
            )
        self.loaded = loaded
        self.mode = mode
        self.options = options
        self.template = template or ChatTemplate()
        # Allocated once for the whole context: every turn writes into the same cache.
        self.prefix = CachedPrefix(engine.new_cache(loaded.context_length))
        self.turns: list[Turn] = []
        # The number of the newest turn: turns dropped to fit the context still count, undone
        # ones do not.
        self.last_turn_number = 0

    @property
    def transcript(self) -> str:
        return "".join(turn.entry + turn.reply for turn in self.turns)

    @property
    def decoding(self) -> DecodingOptions:
        """The session's options, with the template's stop string added to the user's."""
        stops = tuple(dict.fromkeys(self.template.stop + self.options.stop))
        return self.options.model_copy(update={"stop": stops})

    def transcript_tokens(self) -> int:
        return len(self._encode(self.transcript))

    def _encode(self, text: str) -> list[int]:
        return self.loaded.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _fit(self, entry: str) -> tuple[str, int]:
        """The prompt for this entry, dropping the oldest whole turns until it and the reply fit
        the context; (prompt, turns dropped)."""
        room = self.loaded.context_length - self.options.max_new_tokens
        for dropped in range(len(self.turns) + 1):
            prompt = "".join(turn.entry + turn.reply for turn in self.turns[dropped:]) + entry
            if len(self._encode(prompt)) <= room:
                return prompt, dropped
        raise GencliError(
            f"this entry is {len(self._encode(entry))} tokens; with {self.options.max_new_tokens} new "
            f"tokens it cannot fit the model's context of {self.loaded.context_length}; shorten it "
            "or lower max_new_tokens (/set max_new_tokens N)"
        )

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> TurnResult:
        """Append the user's `text`, generate the reply, keep both. Raises ChatInterrupted (the
        partial reply kept) on Ctrl-C."""
        check_prompt(text)
        entry = self.template.entry(text)
        prompt, dropped = self._fit(entry)
        self.turns = self.turns[dropped:]
        interrupted = False
        try:
            result = generate_text(self.loaded, prompt, self.mode, self.decoding, on_text, prefix=self.prefix)
        except GenerationInterrupted as stopped:
            result, interrupted = stopped.result, True
        reply = self._without_stop(result)
        self.turns.append(Turn(entry, reply))
        self.last_turn_number += 1
        turn = TurnResult(self.last_turn_number, result, reply, dropped, len(self.prefix.token_ids))
        if interrupted:
            raise ChatInterrupted(turn)
        return turn

    def _without_stop(self, result: GenerationResult) -> str:
        """The reply as it stays: a stop string that ended it is the next speaker's tag, which
        the next entry writes itself."""
        return (
            without_stop(result.text, self.decoding.stop) if result.finish_reason == "stop" else result.text
        )

    def undo(self) -> Turn | None:
        """Drop the last turn: the cache is cropped back to the transcript before it, with no
        recompute. Returns the turn dropped, or None when there is none."""
        if not self.turns:
            return None
        dropped = self.turns.pop()
        self.last_turn_number -= 1
        self._crop_to_transcript()
        return dropped

    def reset(self) -> None:
        self.turns = []
        self.last_turn_number = 0
        self.prefix.keep(0)

    def _crop_to_transcript(self) -> None:
        self.prefix.keep(common_prefix_length(self.prefix.token_ids, self._encode(self.transcript)))

    def save(self, path: Path) -> int:
        """Write the transcript and the cache (the prompt-cache file format, with the turns in its
        metadata), atomically. Returns the cache positions written."""
        turns = json.dumps([[turn.entry, turn.reply] for turn in self.turns], ensure_ascii=False)
        extra = {_SESSION_KEY: turns, "gencli_chat_template": self.template.text}
        prompt_cache.save(path, self.loaded, self.prefix.token_ids, self.prefix.cache, extra)
        return len(self.prefix.token_ids)

    def load(self, path: Path) -> int:
        """Replace the session with one saved by `save`: its turns and its cache. A file for
        another model, dtype or device type, or a damaged one, is refused (GencliError) and the
        session stays as it was. Returns the cache positions restored."""
        if not path.is_file():
            raise GencliError(f"{path} does not exist; check the path")
        try:
            stored = prompt_cache.load(path, self.loaded)
        except prompt_cache.PromptCacheRefused as refusal:
            raise GencliError(f"session file {path} {refusal}: not loaded") from None
        try:
            turns = [Turn(str(entry), str(reply)) for entry, reply in json.loads(stored.extra[_SESSION_KEY])]
        except (KeyError, ValueError, TypeError):
            raise GencliError(f"{path} is a prompt cache, not a chat session saved with /save") from None
        if len(stored.token_ids) > self.loaded.context_length:
            raise GencliError(f"session file {path} holds more positions than the model's context")
        self.prefix.keep(0)
        prompt_cache.restore(stored, len(stored.token_ids), self.prefix.cache)
        self.prefix.token_ids = list(stored.token_ids)
        self.turns = turns
        self.last_turn_number = len(turns)
        self.template = ChatTemplate(stored.extra.get("gencli_chat_template", self.template.text))
        return len(stored.token_ids)
