"""`gencli compare`: every mode on one prompt, and where they part."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gencli.cli.edge import EXIT_INTERRUPTED, load_with_settings, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    DECODING,
    DTYPE,
    KEEP_ALIVE,
    MODEL,
    SOURCES,
    ArchOption,
    JsonOption,
    ModesOption,
    PromptArgument,
    PromptFileOption,
    chosen_modes,
    command_line_layers,
    load_other_weights,
    read_prompt,
    with_options,
)
from gencli.errors import GencliError
from gencli.settings import check_prompt


@with_options(DECODING, MODEL, DTYPE, SOURCES, KEEP_ALIVE)
def compare(
    prompt: PromptArgument = None,
    file: PromptFileOption = None,
    modes: ModesOption = None,
    arch: ArchOption = None,
    against: Annotated[
        str | None,
        typer.Option(
            help="Also run the modes with the weights stored otherwise (int8, bfloat16, bfloat16+int8) "
            "and show where they part from --dtype's.",
            metavar="WEIGHTS",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Run every mode on PROMPT with the same options and check they choose the same tokens.

    Shows the completions and time per mode. Where modes disagree, shows the first differing
    position, the two competing tokens and their logit margin there: a margin near 0 is a
    near-tie that float rounding can flip, a large one is a bug. Exits 1 when modes disagree.
    """
    through_warm_process(flags)
    layers = command_line_layers(flags)
    text = read_prompt(prompt, file)
    check_prompt(text)
    chosen = chosen_modes(modes)
    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step, arch)
        other = None
        if against is not None:
            other = load_other_weights(resolved.settings, against, "--against", step, arch)
            if other.weights == loaded.weights:
                raise GencliError(f"--against {against} is what --dtype runs already; pick other weights")
        from gencli.compare import compare_modes
        from gencli.render.compare import print_comparison
        from gencli.render.console import print_json, stdout_console

    comparison = compare_modes(loaded, text, resolved.settings.decoding, chosen, other)
    if as_json:
        print_json(comparison.to_dict())
    else:
        print_comparison(comparison, loaded.tokenizer, stdout_console())
    raise typer.Exit(EXIT_INTERRUPTED if comparison.interrupted else 0 if comparison.agree else 1)
