"""`gencli perplexity`: how well the model predicts a text, as perplexity and bits per byte."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import EXIT_INTERRUPTED, load, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    DTYPE,
    KEEP_ALIVE,
    MODEL,
    SOURCES,
    JsonOption,
    command_line_layers,
    read_stdin,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import resolve


@with_options(MODEL, DTYPE, SOURCES, KEEP_ALIVE)
def perplexity(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A UTF-8 text file; '-' reads stdin.", dir_okay=False, allow_dash=True
        ),
    ],
    context: Annotated[
        int | None,
        typer.Option(help="Tokens per window.  [default: the model's context]", show_default=False, min=2),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            help="Tokens the window moves by, less than --context; every token then sees at least "
            "context - stride tokens before it.  [default: half the context]",
            show_default=False,
            min=1,
        ),
    ] = None,
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Perplexity, bits per token and bits per byte of FILE under the model, with a sliding window
    (Hugging Face's perplexity guide; llama.cpp's llama-perplexity). Lower is better. Bits per byte
    does not depend on the tokenizer. Compare weights with --dtype and --quantize:

        gencli perplexity book.txt --model demo --quantize int8
    """
    through_warm_process(flags)
    try:
        text = read_stdin() if str(file) == "-" else file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise GencliError(f"cannot read {file}: {problem}; check the path") from None
    settings = resolve(command_line_layers(flags)).settings
    with startup_status("starting") as step:
        loaded = load(settings, step)
        from gencli.perplexity import measure_perplexity, prepare
        from gencli.render.console import print_json, stdout_console
        from gencli.render.perplexity import print_perplexity
        from gencli.render.progress import progress

    job = prepare(loaded, text, context, stride)
    with progress(len(job.ids) - 1, "tokens scored") as bar:
        report = measure_perplexity(loaded, job, on_window=bar)
    if as_json:
        print_json(report.to_dict())
    else:
        print_perplexity(report, stdout_console())
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
