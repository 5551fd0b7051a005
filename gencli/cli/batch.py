"""`gencli batch`: many prompts from JSONL, decoded in left-padded batches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import load_with_settings, notice, resolve_with_checkpoint, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    DECODING,
    DTYPE,
    KEEP_ALIVE,
    MODE,
    MODEL,
    SOURCES,
    TopLogprobsOption,
    command_line_layers,
    read_stdin,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import resolve


@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES, KEEP_ALIVE)
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
    top_logprobs: TopLogprobsOption = None,
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run the job on Ray Data: a pool of workers, each loading the model once "
            "(needs gencli[ray]). Starts a local Ray instance unless --ray-address names a cluster.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="The Ray cluster to run on: its head's host:port, or 'auto' for the one this machine "
            "belongs to (implies --ray).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Ray workers (actors), each with its own model.")] = 1,
    flags: dict[str, Any] | None = None,
) -> None:
    """Generate for every prompt of a JSONL file, in batches; write JSONL results in input order.

    Each result: id, text, token_ids, finish_reason (and logprobs with --top-logprobs). A bad line
    gets {"id", "line", "error"} and the others go on; the exit status is then 1. Options given
    here are defaults that each line may override. Every mode decodes batches with its own engine;
    greedy results equal generating each prompt alone. Sampled batches draw from one random
    stream, so they differ from single runs with the same seed. Records go to stdout (or
    --output), the progress bar to stderr.
    """
    # Ray's workers load their own models.
    through_warm_process(flags, stays_here=on_ray or ray_address is not None)
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

    on_ray = on_ray or ray_address is not None
    with startup_status("starting") as step:
        if on_ray:
            from gencli.hub import runnable_folder
            from gencli.ray_batch import import_ray, run_batch_on_ray

            step("importing Ray")
            import_ray()
            settings = resolve(layers).settings
            name, folder, fallback = runnable_folder(settings.model, settings.fallback)
            if fallback:
                notice(fallback)
            settings = resolve_with_checkpoint(layers, folder).settings
        else:
            loaded, resolved = load_with_settings(layers, step)
            settings = resolved.settings
        from gencli.batch import BatchJob, finished_ids, run_batch
        from gencli.render.console import json_line
        from gencli.render.progress import progress

    skip = finished_ids(output) if resume and output.exists() else set()
    target = open(output, "a" if resume else "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    job = BatchJob(settings.mode, settings.decoding, batch_size, top_logprobs)
    failures = 0
    try:
        with progress(sum(1 for line in lines if line.strip()), "prompts") as bar:
            if on_ray:
                model = (name, folder)
                records = run_batch_on_ray(
                    lines, job, model, settings.device, settings.dtype, workers, ray_address, skip, bar
                )
            else:
                records = run_batch(loaded, lines, job, skip, bar)
            for record in records:
                failures += "error" in record
                with bar.cleared(target):
                    target.write(json_line(record))
                    target.flush()
    finally:
        if output:
            target.close()
    if failures:
        notice(f"{failures} line(s) failed; their error records say why")
        raise typer.Exit(1)
