"""`gencli explain`: one attention head worked step by step on the model's real weights, or on the
tutorials' 3-token example."""

from __future__ import annotations

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
from gencli.errors import GencliError


@with_options(MODEL, SOURCES, KEEP_ALIVE)
def explain(
    prompt: PromptArgument = None,
    file: PromptFileOption = None,
    layer: LayerOption = 0,
    head: HeadOption = 0,
    position: Annotated[
        int, typer.Option("--position", "-p", help="The query's token position, from 0; -1 is the last.")
    ] = -1,
    dims: Annotated[int, typer.Option("--dims", min=1, help="How many values of each vector to print.")] = 6,
    worked_example: Annotated[
        bool,
        typer.Option(
            "--worked-example",
            help="Work the tutorials' 3-token example instead (x of 3 by 4, W_q, W_k, W_v of 4 by 3, "
            "no scaling); no model is loaded.",
        ),
    ] = False,
    as_json: JsonOption = False,
    token_ids: TokenIdsOption = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Walk one attention head through softmax(q·Kᵀ/√d_k)·V for one token of PROMPT: the input row,
    q, k and v, the scores, the causal mask, the softmax weights, the weighted sum, the output
    projection, and what the KV cache holds. Every number comes from the from-scratch model and
    the result is checked against Hugging Face's layer.

    Example: gencli explain "The cat sat on the mat" --layer 2 --head 1
    """
    through_warm_process(flags)
    from gencli.render.console import print_json, stdout_console
    from gencli.render.explain import print_explanation, print_worked_example

    if worked_example:
        if prompt is not None or file is not None:
            raise GencliError("--worked-example uses its own 3 tokens: leave out the prompt")
        from gencli.scratch.explain import worked_example as work

        example = work()
        if as_json:
            print_json(example.to_dict())
        else:
            print_worked_example(example, stdout_console())
        return

    settings, text = inspection_inputs(prompt, file, flags, token_ids)
    with startup_status("starting") as step:
        loaded = load(settings, step)
        from gencli.scratch.explain import explain as walk

    explained = walk(loaded, text, layer, head, position)
    if as_json:
        print_json(explained.to_dict())
    else:
        print_explanation(explained, stdout_console(), dims)
