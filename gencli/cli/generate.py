"""`gencli generate`: continue a prompt, streaming the text to stdout and timings to stderr."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import EXIT_INTERRUPTED, STARTED, load_with_settings, notice, startup_status
from gencli.cli.options import (
    DECODING,
    DTYPE,
    LOG,
    MODE,
    MODEL,
    SOURCES,
    JsonOption,
    PromptArgument,
    PromptFileOption,
    QuietOption,
    command_line_layers,
    read_prompt,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import check_prompt


@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES, LOG)
def generate(
    prompt: PromptArgument = None,
    file: PromptFileOption = None,
    inspect_cache: Annotated[
        bool,
        typer.Option(
            "--inspect-cache",
            help="Show each layer's key/value cache shape [batch, heads, seq, head_dim], dtype and bytes "
            "after prefill and at the end (on stderr, or in --json).",
        ),
    ] = False,
    inspect_cache_steps: Annotated[
        bool,
        typer.Option(
            "--inspect-cache-steps", help="Like --inspect-cache, plus the cache size at every step."
        ),
    ] = False,
    prompt_cache: Annotated[
        Path | None,
        typer.Option(
            help="Reuse the model's keys/values for the prompt's longest cached prefix from this file "
            "(safetensors), and save this prompt's there. Modes: generate, kv-cache, scratch.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    prompt_cache_ro: Annotated[
        bool, typer.Option("--prompt-cache-ro", help="Read the --prompt-cache file but never write it.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Continue PROMPT with GPT-2, streaming the text to stdout and timings to stderr.

    Every mode produces the same tokens for the same options and --seed, greedy or sampled:
    the hand-written loops use Hugging Face's logits processors and the same sampling call
    as model.generate. With --sample, a run without --seed picks a random seed (shown in --json).
    """
    layers = command_line_layers(flags)
    text = read_prompt(prompt, file)
    check_prompt(text)
    if prompt_cache_ro and prompt_cache is None:
        raise GencliError("--prompt-cache-ro needs --prompt-cache FILE")

    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step)
        from gencli import render
        from gencli.generation import GenerationInterrupted, PromptCacheFile, generate_text

    settings = resolved.settings
    cache_file = PromptCacheFile(prompt_cache, prompt_cache_ro) if prompt_cache else None
    writer = None if as_json else render.TextWriter()
    inspection = "steps" if inspect_cache_steps else "ends" if inspect_cache else None
    exit_code = 0
    try:
        result = generate_text(
            loaded, text, settings.mode, settings.decoding, writer, inspection, cache_file, notice
        )
    except GenerationInterrupted as interrupted:
        result, exit_code = interrupted.result, EXIT_INTERRUPTED
    result.timings.total_s = time.perf_counter() - STARTED

    if as_json:
        render.print_json(result.to_dict())
    else:
        writer.finish()
    console = render.stderr_console()
    if inspection and not as_json:
        render.print_cache_report(
            settings.mode,
            loaded.engine(settings.mode).uses_cache,
            result.cache_snapshots or [],
            inspection == "steps",
            console,
        )
    if not quiet:
        render.print_stats(result, console)
    if settings.log:
        log_run(result, settings.decoding.model_dump(mode="json"))
    if exit_code:
        raise typer.Exit(exit_code)


def log_run(result: Any, decoding: dict[str, Any]) -> None:
    """Append the run to the history; a history that cannot be written costs a notice, not the run."""
    from gencli import history

    record = {
        "command": "generate",
        **{key: value for key, value in result.to_dict().items() if key not in ("cache", "cache_snapshots")},
        "settings": decoding,
    }
    try:
        history.append(record)
    except OSError as problem:
        notice(f"could not write the history {history.history_path()}: {problem} (--no-log turns it off)")
