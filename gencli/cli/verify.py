"""`gencli verify`: the from-scratch attention and GPT-2 against Hugging Face's, layer by layer."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gencli.cli.edge import load, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    KEEP_ALIVE,
    MODEL,
    SOURCES,
    ArchOption,
    JsonOption,
    command_line_layers,
    with_options,
)
from gencli.settings import check_prompt, resolve


@with_options(MODEL, SOURCES, KEEP_ALIVE)
def verify(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="Prompts to check with; several make the padded batch.", show_default=False),
    ] = None,
    arch: ArchOption = None,
    as_json: JsonOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Prove the from-scratch attention and GPT-2 equal Hugging Face's, layer by layer, in float32.

    (a) one causal sequence; (b) a left-padded batch with its attention mask (padded positions
    skipped); (c) incremental decoding with a cache; (d) end-to-end logits and 32 greedy tokens.
    Exits 1 if any check fails.
    """
    through_warm_process(flags)
    settings = resolve(command_line_layers(flags)).settings.model_copy(update={"dtype": "float32"})
    for prompt in prompts or []:
        check_prompt(prompt)
    with startup_status("starting") as step:
        loaded = load(settings, step, arch)
        from gencli.render.console import print_json, stdout_console
        from gencli.render.verify import print_verify_report
        from gencli.scratch.verify import verify as verify_model

    report = verify_model(loaded, prompts)
    if as_json:
        print_json(report.to_dict())
    else:
        print_verify_report(report, stdout_console())
    raise typer.Exit(0 if report.passed else 1)
