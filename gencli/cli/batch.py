"""`gencli batch`: many prompts from JSONL, decoded in left-padded batches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import load_with_settings, notice, startup_status
from gencli.cli.options import DECODING, DTYPE, MODEL, SOURCES, command_line_layers, read_stdin, with_options
from gencli.errors import GencliError


@with_options(DECODING, MODEL, DTYPE, SOURCES)
def batch(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="IN.jsonl",
            help="One JSON object a line: 'prompt', an optional 'id', and optional generation options "
            "(any key of 'gencli config show' under decoding). '-' reads stdin.",
            dir_okay=False,
            allow_dash=True,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write results here instead of stdout.", dir_okay=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts decoded together, left-padded.")] = 8,
    resume: Annotated[
        bool, typer.Option(help="Skip ids that already have a result in --output, and append the rest.")
    ] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Generate for every prompt of a JSONL file, in batches; write JSONL results in input order.

    Each result: id, text, token_ids, finish_reason. A bad line gets {"id", "line", "error"} and
    the others go on; the exit status is then 1. Options given here are defaults that each line
    may override. Greedy results equal generating each prompt alone; sampled batches draw from
    one random stream, so they differ from single runs with the same seed.
    """
    layers = command_line_layers(flags)
    if batch_size < 1:
        raise GencliError(f"--batch-size must be at least 1, got {batch_size}")
    if resume and output is None:
        raise GencliError("--resume needs --output FILE, the results to resume from")
    if output is not None and str(input_path) != "-" and output.exists() and output.samefile(input_path):
        raise GencliError(
            f"--output {output} is the input file: the results would replace the prompts; pick another"
        )
    try:
        text = read_stdin() if str(input_path) == "-" else input_path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise GencliError(f"cannot read {input_path}: {problem}; check the path") from None
    lines = text.removeprefix("\ufeff").splitlines()  # a byte-order mark is not part of line 1

    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step)
        from gencli import render
        from gencli.batch import finished_ids, run_batch

    skip = finished_ids(output) if resume and output.exists() else set()
    target = open(output, "a" if resume else "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    failures = 0
    try:
        with render.progress(sum(1 for line in lines if line.strip()), "prompts") as advance:
            for record in run_batch(loaded, lines, resolved.settings.decoding, batch_size, skip, advance):
                failures += "error" in record
                target.write(render.json_line(record))
                target.flush()
    finally:
        if output:
            target.close()
    if failures:
        notice(f"{failures} line(s) failed; their error records say why")
        raise typer.Exit(1)
