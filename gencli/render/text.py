"""Streamed text on stdout: written raw (never through rich markup), so `[brackets]` in it survive
and pipes receive exactly the model's text; coloured by probability with --show-probs."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from gencli.stop_strings import StopHoldBack


class TextWriter:
    """Writes streamed text to stdout as it arrives, and ends the output with one newline."""

    def __init__(self) -> None:
        self.last_char = "\n"

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        if not text:
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        self.last_char = text[-1]

    def finish(self) -> None:
        if self.last_char != "\n":
            self.write("\n")


class HeldBackWriter(TextWriter):
    """Streams text but holds back an ending that could be the start of a stop string, so that a
    reply ended by the next speaker's tag (`\nUser:`) never shows the tag; `finish(kept)`
    writes what remains of the reply as kept."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        super().__init__()
        self.held_back = StopHoldBack(stops)

    def __call__(self, text: str) -> None:
        self.write(self.held_back.feed(text))

    def finish(self, kept: str | None = None) -> None:
        received, shown = self.held_back.received, self.held_back.shown
        kept = received if kept is None else kept
        if len(kept) > shown and kept.startswith(received[:shown]):
            self.write(kept[shown:])
        super().finish()


class ProbabilityWriter(TextWriter):
    """Writes each new token coloured by its probability (green likely ... red unlikely). A token
    may hold part of a character: bytes wait until the character is whole, and take the colour of
    the token that completes it. Off a terminal, plain text."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        from gencli.tokens import TokenText

        super().__init__()
        self.text = TokenText(tokenizer, skip_special_tokens)
        self.console = Console(highlight=False)

    def token(self, record: dict[str, Any]) -> None:
        import math

        self.coloured(self.text.add(record["token"]), probability_style(math.exp(record["logprob"])))

    def coloured(self, text: str, style: str) -> None:
        from rich.text import Text

        if text:
            self.console.print(Text(text, style=style), end="")
            self.console.file.flush()
            self.last_char = text[-1]

    def finish(self) -> None:
        self.coloured(self.text.rest(), "red")  # bytes that never made a character
        super().finish()


def probability_style(probability: float) -> str:
    for floor, style in ((0.5, "green"), (0.2, "yellow"), (0.05, "dark_orange"), (0.0, "red")):
        if probability >= floor:
            return style
    return "red"
