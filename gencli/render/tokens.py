"""`gencli tokenize`: each token with its id, in alternating colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from gencli.render.words import plural

if TYPE_CHECKING:
    from gencli.tokens import TokenPiece


_TOKEN_STYLES = ("black on cyan", "black on yellow")


def print_tokens(pieces: list[TokenPiece], console: Console) -> None:
    """On a terminal, the text with each token on its own colour; then one line per token (id,
    piece) and the count."""
    from rich.text import Text

    if console.is_terminal:
        inline = Text()
        for index, piece in enumerate(pieces):
            inline.append(piece.label, style=_TOKEN_STYLES[index % 2])
        console.print(inline, soft_wrap=True)
    width = max((len(str(piece.id)) for piece in pieces), default=1)
    for index, piece in enumerate(pieces):
        line = Text(f"{piece.id:>{width}}  ")
        line.append(piece.label, style=_TOKEN_STYLES[index % 2] if console.is_terminal else "")
        console.print(line, soft_wrap=True, highlight=False)
    console.print(plural(len(pieces), "token"), highlight=False)
