"""`gencli generate`: continue a prompt, streaming the text to stdout and timings to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gencli.cli.edge import (
    EXIT_INTERRUPTED,
    end_of_start_up,
    load_with_settings,
    notice,
    since_start,
    startup_status,
)
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    DECODING,
    DTYPE,
    KEEP_ALIVE,
    LOG,
    MODE,
    MODEL,
    SOURCES,
    ClientApiKeyOption,
    JsonOption,
    PromptArgument,
    PromptFileOption,
    QuietOption,
    TopLogprobsOption,
    command_line_layers,
    read_prompt,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import CACHED_MODES, DECODING_KEYS, DecodingOptions, Layer, check_prompt, resolve

if TYPE_CHECKING:
    from gencli.render.text import TextWriter
    from gencli.results import GenerationResult


@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES, LOG, KEEP_ALIVE)
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
    top_logprobs: TopLogprobsOption = None,
    show_probs: Annotated[
        bool,
        typer.Option(
            "--show-probs",
            help="Colour each new token by its probability as it streams (green likely, red unlikely) "
            "and show the alternatives at the end; implies --top-logprobs 5.",
        ),
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="GENCLI_SERVER",
            help="Run on a gencli serve at this URL (or GENCLI_SERVER): no start-up, the same output.",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    api_key: ClientApiKeyOption = None,
    flags: dict[str, Any] | None = None,
) -> None:
    """Continue PROMPT with GPT-2, streaming the text to stdout and timings to stderr.

    Every mode produces the same tokens for the same options and --seed, greedy or sampled:
    the hand-written loops use Hugging Face's logits processors and the same sampling call
    as model.generate. With --sample, a run without --seed picks a random seed (shown in --json).
    """
    through_warm_process(flags, stays_here=server is not None)
    layers = command_line_layers(flags)
    text = read_prompt(prompt, file)
    check_prompt(text)
    if prompt_cache_ro and prompt_cache is None:
        raise GencliError("--prompt-cache-ro needs --prompt-cache FILE")
    if prompt_cache is not None and prompt_cache.exists() and not prompt_cache.is_file():
        raise GencliError(
            f"--prompt-cache {prompt_cache} is not a regular file; gencli will not read or replace it"
        )
    if prompt_cache is not None and not prompt_cache_ro and not prompt_cache.parent.is_dir():
        raise GencliError(
            f"--prompt-cache {prompt_cache}: the folder {prompt_cache.parent} does not exist; create it "
            "or choose another path"
        )
    inspection = "steps" if inspect_cache_steps else "ends" if inspect_cache else None
    if show_probs and top_logprobs is None:
        top_logprobs = 5
    if show_probs and server:
        raise GencliError("--show-probs is for local runs; with --server use --top-logprobs N")
    if server:
        if prompt_cache is not None:
            raise GencliError("--prompt-cache is for local runs; a server keeps its own prefix caches")
        generate_remote(server, api_key, layers, text, inspection, top_logprobs, as_json, quiet)
        return

    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step)
        from gencli.generation import GenerationInterrupted, PromptCacheFile, generate_text
        from gencli.render.text import ProbabilityWriter, TextWriter

    settings = resolved.settings
    cache_file = PromptCacheFile(prompt_cache, prompt_cache_ro) if prompt_cache else None
    coloured = show_probs and not as_json
    writer = (
        None
        if as_json
        else ProbabilityWriter(loaded.tokenizer, settings.skip_special_tokens)
        if coloured
        else TextWriter()
    )
    exit_code = 0
    try:
        result = generate_text(
            loaded,
            text,
            settings.mode,
            settings.decoding,
            None if coloured else writer,
            inspection,
            cache_file,
            notice,
            top_logprobs=top_logprobs,
            on_logprob=writer.token if coloured else None,
        )
    except GenerationInterrupted as interrupted:
        result, exit_code = interrupted.result, EXIT_INTERRUPTED
    report(result, writer, inspection, as_json, quiet, settings.log, settings.decoding)
    if exit_code:
        raise typer.Exit(exit_code)


def report(
    result: GenerationResult,
    writer: TextWriter | None,
    inspection: str | None,
    as_json: bool,
    quiet: bool,
    log: bool,
    decoding: DecodingOptions,
) -> None:
    """Everything after the text, for a local run and a server's alike."""
    from gencli.render.cache import print_cache_report
    from gencli.render.console import print_json, stderr_console
    from gencli.render.stats import print_logprobs, print_stats

    result.timings.total_s = since_start()
    if as_json:
        print_json(result.to_dict())
    else:
        writer.finish()
    console = stderr_console()
    if inspection and not as_json:
        print_cache_report(
            result.mode,
            result.mode in CACHED_MODES,
            result.cache_snapshots or [],
            inspection == "steps",
            console,
        )
    if result.logprobs is not None and not as_json and not quiet:
        print_logprobs(result.logprobs, console)
    if not quiet:
        print_stats(result, console)
    if log:
        log_run(result, decoding.model_dump(mode="json"))


def generate_remote(
    server: str,
    api_key: str | None,
    layers: list[Layer],
    text: str,
    inspection: str | None,
    top_logprobs: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """The run on a gencli serve: the settings the user gave go with the prompt (the server's
    own fill the rest), and the record that comes back is reported as a local one would be. A
    model the user named goes too: the server refuses one it does not run."""
    from gencli.client import generate_remote as post
    from gencli.render.text import TextWriter
    from gencli.results import GenerationResult

    end_of_start_up()  # nothing to load here: Ctrl-C from now on keeps the text the server sent

    resolved = resolve(layers)
    payload: dict[str, Any] = {
        key: value
        for key, value in resolved.settings.model_dump(mode="json").items()
        if (key in DECODING_KEYS or key in ("mode", "model")) and resolved.origins[key] != "default"
    }
    payload.update(prompt=text, inspect_cache=inspection or False)
    if top_logprobs is not None:
        payload["top_logprobs"] = top_logprobs
    writer = None if as_json else TextWriter()
    try:
        record = post(server, payload, api_key, writer)
    except KeyboardInterrupt:  # closing the connection cancels the run on the server
        if writer is not None:
            writer.finish()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    result = GenerationResult.from_dict(record)
    result.timings.load_s = None  # this command loaded nothing; the server did, long before
    report(result, writer, inspection, as_json, quiet, resolved.settings.log, resolved.settings.decoding)


def log_run(result: GenerationResult, decoding: dict[str, Any]) -> None:
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
