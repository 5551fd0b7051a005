"""`gencli attention`: one head's attention weights as a heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli.edge import load, startup_status
from gencli.cli.keep_alive import through_warm_process
from gencli.cli.options import (
    KEEP_ALIVE,
    MODEL,
    SOURCES,
    HeadOption,
    JsonOption,
    LayerOption,
    PromptArgument,
    PromptFileOption,
    TokenIdsOption,
    inspection_inputs,
    with_options,
)


@with_options(MODEL, SOURCES, KEEP_ALIVE)
def attention(
    prompt: PromptArgument = None,
    file: PromptFileOption = None,
    layer: LayerOption = 0,
    head: HeadOption = 0,
    png: Annotated[
        Path | None,
        typer.Option(help="Also write the heatmap as a PNG image (needs matplotlib).", dir_okay=False),
    ] = None,
    as_json: JsonOption = False,
    token_ids: TokenIdsOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Draw one head's attention weights as a heatmap: rows are tokens, columns what they attend to.

    The weights come from the from-scratch attention (verified equal to Hugging Face's). Long
    prompts show their last tokens, as many as fit the terminal; --png draws them all. --json
    prints the token ids and labels and every row's weights over the keys up to it (6 decimals).
    """
    through_warm_process(flags)
    settings, text = inspection_inputs(prompt, file, flags, token_ids)
    with startup_status("starting") as step:
        loaded = load(settings, step)
        from gencli.render.attention import print_attention_heatmap, save_attention_png
        from gencli.render.console import print_json, stderr_console, stdout_console
        from gencli.scratch.probe import attention_map

    amap = attention_map(loaded, text, layer, head)
    if as_json:
        print_json(amap.to_dict())
    else:
        print_attention_heatmap(amap, stdout_console())
    if png is not None:
        save_attention_png(amap, str(png))
        stderr_console().print(f"wrote {png}")
