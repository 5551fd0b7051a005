"""`gencli tokenize` and `gencli detokenize`: how text becomes token ids, and back. They load the
tokenizer alone, never the model's weights."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gencli.cli.edge import notice, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    KEEP_ALIVE,
    MODEL,
    SOURCES,
    JsonOption,
    PromptArgument,
    PromptFileOption,
    command_line_layers,
    read_prompt,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import Settings, check_prompt, resolve


def _tokenizer(settings: Settings) -> tuple[Any, str]:
    """The tokenizer of the model the settings name, and that model's name (the demo model's when
    it stands in)."""
    from gencli.tokens import model_tokenizer

    tokenizer, name, fallback = model_tokenizer(settings.model, settings.fallback)
    if fallback:
        notice(fallback)
    return tokenizer, name


@with_options(MODEL, SOURCES, KEEP_ALIVE)
def tokenize(
    text: PromptArgument = None,
    file: PromptFileOption = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print only the token ids, space-separated.")] = False,
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Show how TEXT becomes tokens: each token's id and the text it stands for (spaces as ·,
    bytes of a character split across tokens as \\xNN), then the count."""
    through_warm_process(flags)
    settings = resolve(command_line_layers(flags)).settings
    text = read_prompt(text, file)
    check_prompt(text)
    with startup_status("loading the tokenizer"):
        tokenizer, name = _tokenizer(settings)
        from gencli.render.console import print_json, stdout_console
        from gencli.render.tokens import print_tokens
        from gencli.tokens import tokenize as split

    pieces = split(tokenizer, text)
    if ids:
        typer.echo(" ".join(str(piece.id) for piece in pieces))
    elif as_json:
        print_json({"model": name, "count": len(pieces), "tokens": [piece.to_dict() for piece in pieces]})
    else:
        print_tokens(pieces, stdout_console())


@with_options(MODEL, SOURCES, KEEP_ALIVE)
def detokenize(
    token_ids: Annotated[
        list[int], typer.Argument(help="Token ids, as tokenize --ids prints them.", metavar="IDS...")
    ],
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Turn token ids back into text."""
    through_warm_process(flags)
    settings = resolve(command_line_layers(flags)).settings
    with startup_status("loading the tokenizer"):
        tokenizer, name = _tokenizer(settings)
        from gencli.render.console import print_json
        from gencli.render.text import TextWriter

    outside = [token for token in token_ids if not 0 <= token < len(tokenizer)]
    if outside:
        size = len(tokenizer)
        raise GencliError(
            f"token id {outside[0]} is not in {name}'s vocabulary of {size} tokens (0 to {size - 1})"
        )
    text = tokenizer.decode(token_ids)
    if as_json:
        print_json({"model": name, "ids": token_ids, "text": text})
    else:
        TextWriter().write(text)
        typer.echo("")
