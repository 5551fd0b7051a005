"""`gencli bench`: prefill, time to first token, decode speed, latency, memory and bandwidth per mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import EXIT_INTERRUPTED, load, startup_status
from gencli.cli.options import (
    DTYPE,
    MODEL,
    SOURCES,
    SPECULATION,
    ArchOption,
    JsonOption,
    ModesOption,
    chosen_modes,
    command_line_layers,
    load_other_weights,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import resolve


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise GencliError(f"--lengths takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise GencliError(f"--lengths must be positive integers, got {text!r}")
    return values


@with_options(MODEL, DTYPE, SPECULATION, SOURCES)
def bench(
    arch: ArchOption = None,
    modes: ModesOption = None,
    lengths: Annotated[
        str, typer.Option(help="Total lengths (prompt + new tokens) for the sweep, comma-separated.")
    ] = "64,256,512,1024",
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length of the headline run.")] = 16,
    new_tokens: Annotated[int, typer.Option(help="New tokens in the headline run.")] = 128,
    sweep_new_tokens: Annotated[int, typer.Option(help="New tokens at each sweep length.")] = 16,
    repeats: Annotated[int, typer.Option(help="Measured runs per cell; medians are reported.")] = 3,
    warmup: Annotated[int, typer.Option(help="Unmeasured runs before each cell.")] = 1,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="Also run the headline with the weights stored otherwise, from the same weights, and "
            "report each mode's decode speed-up: a dtype (bfloat16), int8 (int8 projections, "
            "activations in --dtype) or both (bfloat16+int8). Repeatable.",
            metavar="WEIGHTS",
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG of decode tokens/s against length per mode (needs matplotlib).", dir_okay=False
        ),
    ] = None,
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Measure each mode: prefill, time to first token, decode tokens/s, p50/p95 per-token latency,
    peak memory, and memory bandwidth achieved against this machine's measured read bandwidth.

    A headline run (--prompt-tokens + --new-tokens) and a sweep over --lengths, where the no-cache
    loop slows down with length and the cached loops do not. Prompts are random token ids and
    generation ignores EOS, so every run decodes exactly as many tokens as asked.

    With --speculate: each mode (--modes, kv-cache unless given) without and with speculative
    decoding on two tasks, rewriting a passage the prompt holds and free text, in alternating
    runs of --new-tokens: tokens/s, the speed-up, the acceptance rate and whether the tokens are
    the same.
    """
    settings = resolve(command_line_layers(flags)).settings
    if settings.speculate != "none":
        _bench_speculation(settings, arch, modes, new_tokens, repeats, warmup, as_json)
        return
    chosen = chosen_modes(modes)
    sweep = _int_list(lengths)
    if min(sweep) <= sweep_new_tokens:
        raise GencliError(f"every --lengths value must exceed --sweep-new-tokens ({sweep_new_tokens})")
    if min(repeats, prompt_tokens, new_tokens, sweep_new_tokens) < 1 or warmup < 0:
        raise GencliError(
            "--repeats, --prompt-tokens, --new-tokens and --sweep-new-tokens must be at least 1"
        )
    with startup_status("starting") as step:
        loaded = load(settings, step, arch)
        if max(sweep) > loaded.context_length or prompt_tokens + new_tokens > loaded.context_length:
            raise GencliError(f"lengths must fit the model's context of {loaded.context_length} tokens")
        variants = []
        for spec in compare or []:
            loaded_variant = load_other_weights(settings, spec, "--compare", step, arch)
            if loaded_variant.weights in [loaded.weights, *(other.weights for other in variants)]:
                raise GencliError(
                    f"--compare {spec} runs {loaded_variant.weights}, which this bench runs already"
                )
            variants.append(loaded_variant)
        from gencli.bench import count_runs, run_bench
        from gencli.render.bench import print_bench, save_bench_plot
        from gencli.render.console import print_json, stderr_console, stdout_console
        from gencli.render.progress import progress

    with progress(count_runs(chosen, sweep, repeats, len(variants)), "bench") as advance:
        report = run_bench(
            loaded,
            chosen,
            sweep,
            prompt_tokens,
            new_tokens,
            sweep_new_tokens,
            repeats,
            warmup,
            on_progress=advance,
            variants=tuple(variants),
        )
    if as_json:
        print_json(report.to_dict())
    else:
        print_bench(report, stdout_console())
    if plot is not None and not report.interrupted:
        save_bench_plot(report, str(plot))
        stderr_console().print(f"wrote {plot}")
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _bench_speculation(
    settings: Any,
    arch: str | None,
    modes: list[str] | None,
    new_tokens: int,
    repeats: int,
    warmup: int,
    as_json: bool,
) -> None:
    chosen = chosen_modes(modes) if modes else ("kv-cache",)
    if min(repeats, new_tokens) < 1 or warmup < 0:
        raise GencliError("--repeats and --new-tokens must be at least 1")
    with startup_status("starting") as step:
        loaded = load(settings, step, arch)
        from gencli.bench import SPECULATION_TASKS, run_speculation_bench
        from gencli.render.bench import print_speculation_bench
        from gencli.render.console import print_json, stdout_console
        from gencli.render.progress import progress
        from gencli.speculative import MissingDraftModel

        if settings.speculate == "draft":
            if settings.draft_model is None:
                raise MissingDraftModel()
            step("loading the draft model")
            loaded.draft(settings.draft_model)
    runs = len(SPECULATION_TASKS) * len(chosen) * 2 * repeats
    with progress(runs, "bench") as advance:
        report = run_speculation_bench(
            loaded, settings.decoding, chosen, new_tokens, repeats, warmup, on_progress=advance
        )
    if as_json:
        print_json(report.to_dict())
    else:
        print_speculation_bench(report, stdout_console())
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
