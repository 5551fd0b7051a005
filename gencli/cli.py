"""The `gencli` command: parse arguments, call the core, render. No model logic lives here.

torch and transformers are imported inside the commands, so `gencli --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from gencli.config import Device, Dtype, Mode, Settings, check_prompt, resolve_settings
from gencli.errors import GencliError

EXIT_INTERRUPTED = 130
_DEFAULTS = Settings().as_flat_dict()


def _with_default(text: str, key: str) -> str:
    """Help text that shows the built-in default; flags default to None so a config file can win."""
    value = _DEFAULTS[key]
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{text}  [default: {shown}]"


ModelOption = Annotated[
    str | None,
    typer.Option(
        help=_with_default("Hugging Face hub id or local model folder.", "model"), show_default=False
    ),
]
DeviceOption = Annotated[
    Device | None, typer.Option(help=_with_default("Where to run.", "device"), show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _error(message: str) -> None:
    sys.stderr.write(f"gencli: error: {message}\n")
    sys.stderr.flush()


class GencliGroup(typer.core.TyperGroup):
    """Turns every user mistake into one line on stderr and an exit code, never a traceback."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except GencliError as error:
            _error(str(error))
            code = error.exit_code
        except typer.TyperException as error:
            message = error.format_message().replace("Value error, ", "")
            if message:  # empty when a bare `gencli` has just printed the help
                hint = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
                _error(message + hint)
            code = error.exit_code
        except typer.Abort:
            code = EXIT_INTERRUPTED
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=GencliGroup,
    help="Generate text with GPT-2 and see how generation works inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _read_prompt(prompt: str | None) -> str:
    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin is None or sys.stdin.isatty():
        raise GencliError("no prompt given; pass PROMPT as an argument or pipe text on stdin")
    # A trailing newline from `echo` or a file is not part of the prompt.
    return sys.stdin.read().removesuffix("\n")


def _print_version(value: bool) -> None:
    if value:
        from gencli import __version__

        sys.stdout.write(f"gencli {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Generate text with GPT-2 and see how generation works inside."""


@app.command()
def generate(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="Text to continue. Omit it or pass '-' to read stdin.",
            metavar="[PROMPT]",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            "-m",
            help=_with_default(
                "generate: Hugging Face model.generate. greedy: hand-written loop that re-runs the whole "
                "sequence every step (no cache). kv-cache: hand-written loop that feeds one token plus "
                "the cache. scratch: the from-scratch GPT-2 (gencli.scratch) with its own preallocated "
                "cache.",
                "mode",
            ),
            show_default=False,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-new-tokens",
            "-n",
            help=_with_default("Most tokens to generate.", "max_new_tokens"),
            show_default=False,
        ),
    ] = None,
    sample: Annotated[
        bool | None,
        typer.Option(
            "--sample/--no-sample",
            help=_with_default("Sample instead of taking the most likely token.", "sample"),
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            "-t",
            help=_with_default("Sampling temperature; 0 means greedy.", "temperature"),
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help=_with_default("Sample among the k most likely tokens; 0 is off.", "top_k"),
            show_default=False,
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            help=_with_default(
                "Sample among the most likely tokens whose probabilities sum to p, in (0, 1]; 1 is off.",
                "top_p",
            ),
            show_default=False,
        ),
    ] = None,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(
            help=_with_default(
                "Divide the logits of tokens already in the text by this (> 0); 1 is off. "
                "Applies with and without sampling.",
                "repetition_penalty",
            ),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Random seed; the same seed gives the same tokens in every mode.",
            show_default=False,
        ),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TEXT",
            help="Stop once the text ends with this string; it is kept in the output. Repeatable.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=_with_default("Hugging Face hub id or local model folder.", "model"), show_default=False
        ),
    ] = None,
    device: Annotated[
        Device | None,
        typer.Option(help=_with_default("Where to run.", "device"), show_default=False),
    ] = None,
    dtype: Annotated[
        Dtype | None,
        typer.Option(
            help=_with_default("Weight dtype; auto is float32 on CPU, 16-bit on a GPU.", "dtype"),
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML file of defaults (see configs/). Flags override it.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
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
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print timings on stderr.")] = False,
) -> None:
    """Continue PROMPT with GPT-2, streaming the text to stdout and timings to stderr.

    Every mode produces the same tokens for the same options and --seed, greedy or sampled:
    the hand-written loops use Hugging Face's logits processors and the same sampling call
    as model.generate. With --sample, a run without --seed picks a random seed (shown in --json).
    """
    settings = resolve_settings(
        config,
        {
            "model": model,
            "mode": mode,
            "device": device,
            "dtype": dtype,
            "max_new_tokens": max_new_tokens,
            "sample": sample,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "seed": seed,
            "stop": tuple(stop) if stop else None,
        },
    )
    text = _read_prompt(prompt)
    check_prompt(text)

    from gencli import render
    from gencli.engines import ENGINES
    from gencli.generation import GenerationInterrupted, generate_text
    from gencli.loading import load_model

    console = render.stderr_console()
    loaded = load_model(settings.model, settings.device, settings.dtype)
    writer = None if as_json else render.TextWriter()
    inspection = "steps" if inspect_cache_steps else "ends" if inspect_cache else None
    exit_code = 0
    try:
        result = generate_text(loaded, text, settings.mode, settings.decoding, writer, inspection)
    except GenerationInterrupted as interrupted:
        result, exit_code = interrupted.result, EXIT_INTERRUPTED

    if as_json:
        render.print_json(result.to_dict())
    else:
        writer.finish()
    if inspection and not as_json:
        engine = ENGINES[settings.mode]
        render.print_cache_report(
            settings.mode, engine.uses_cache, result.cache_snapshots or [], inspection == "steps", console
        )
    if not quiet:
        render.print_stats(result, console)
    if exit_code:
        raise typer.Exit(exit_code)


@app.command("verify")
def verify_command(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="Prompts to check with; several make the padded batch.", show_default=False),
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove the from-scratch attention and GPT-2 equal Hugging Face's, layer by layer, in float32.

    (a) one causal sequence; (b) a left-padded batch with its attention mask (padded positions
    skipped); (c) incremental decoding with a cache; (d) end-to-end logits and 32 greedy tokens.
    Exits 1 if any check fails.
    """
    from gencli import render
    from gencli.loading import load_model
    from gencli.scratch.verify import verify

    for prompt in prompts or []:
        check_prompt(prompt)
    loaded = load_model(model or _DEFAULTS["model"], device or _DEFAULTS["device"], "float32")
    report = verify(loaded, prompts)
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.print_verify_report(report, render.stdout_console())
    raise typer.Exit(0 if report.passed else 1)


@app.command()
def attention(
    prompt: Annotated[
        str | None,
        typer.Argument(help="Text to look at. Omit it or pass '-' to read stdin.", metavar="[PROMPT]"),
    ] = None,
    layer: Annotated[int, typer.Option("--layer", "-l", help="Layer, from 0.")] = 0,
    head: Annotated[int, typer.Option("--head", "-H", help="Attention head, from 0.")] = 0,
    png: Annotated[
        Path | None,
        typer.Option(help="Also write the heatmap as a PNG image (needs matplotlib).", dir_okay=False),
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = None,
) -> None:
    """Draw one head's attention weights as a heatmap: rows are tokens, columns what they attend to.

    The weights come from the from-scratch attention (verified equal to Hugging Face's). Long
    prompts show their last tokens, as many as fit the terminal; --png draws them all.
    """
    text = _read_prompt(prompt)
    check_prompt(text)
    from gencli import render
    from gencli.loading import load_model
    from gencli.scratch.probe import attention_map

    loaded = load_model(model or _DEFAULTS["model"], device or _DEFAULTS["device"], "float32")
    amap = attention_map(loaded, text, layer, head)
    render.print_attention_heatmap(amap, render.stdout_console())
    if png is not None:
        render.save_attention_png(amap, str(png))
        render.stderr_console().print(f"wrote {png}")


def main() -> None:
    app(prog_name="gencli")
