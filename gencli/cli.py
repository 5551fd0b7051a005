"""The `gencli` command: parse arguments, call the core, render. No model logic lives here.

torch and transformers are imported inside the commands, so `gencli --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from gencli.config import KNOWN_KEYS, Device, Dtype, Mode, Settings, check_prompt, resolve_settings
from gencli.errors import GencliError

EXIT_INTERRUPTED = 130
_DEFAULTS = Settings().as_flat_dict()


def _with_default(text: str, key: str) -> str:
    """Help text that shows the built-in default; flags default to None so a config file can win."""
    value = _DEFAULTS[key]
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{text}  [default: {shown}]"


def _setting(python_type: Any, key: str, text: str, *declarations: str) -> Any:
    """A flag for config key `key`: None when not given, so the config file and defaults can fill it."""
    return Annotated[
        python_type | None,
        typer.Option(*declarations, help=_with_default(text, key), show_default=False),
    ]


ModelOption = _setting(str, "model", "Hugging Face hub id, local model folder, or 'demo' (bundled).")
DeviceOption = _setting(Device, "device", "Where to run.")
DtypeOption = _setting(Dtype, "dtype", "Weight dtype; auto is float32 on CPU, 16-bit on a GPU.")
FallbackOption = _setting(
    bool,
    "fallback",
    "When the hub model is neither cached nor reachable, use the bundled demo model (with a notice "
    "on stderr) instead of failing.",
    "--fallback/--no-fallback",
)
ModeOption = _setting(
    Mode,
    "mode",
    "generate: Hugging Face model.generate. greedy: hand-written loop that re-runs the whole sequence "
    "every step (no cache). kv-cache: hand-written loop that feeds one token plus the cache. "
    "scratch: the from-scratch GPT-2 (gencli.scratch) with its own preallocated cache.",
    "--mode",
    "-m",
)
MaxNewTokensOption = _setting(int, "max_new_tokens", "Most tokens to generate.", "--max-new-tokens", "-n")
SampleOption = _setting(
    bool, "sample", "Sample instead of taking the most likely token.", "--sample/--no-sample"
)
TemperatureOption = _setting(
    float, "temperature", "Sampling temperature; 0 means greedy.", "--temperature", "-t"
)
TopKOption = _setting(int, "top_k", "Sample among the k most likely tokens; 0 is off.")
TopPOption = _setting(
    float, "top_p", "Sample among the most likely tokens whose probabilities sum to p, in (0, 1]; 1 is off."
)
RepetitionPenaltyOption = _setting(
    float,
    "repetition_penalty",
    "Divide the logits of tokens already in the text by this (> 0); 1 is off. Applies with and "
    "without sampling.",
)
NoRepeatNgramOption = _setting(
    int, "no_repeat_ngram_size", "Never repeat a sequence of this many tokens; 0 is off."
)
IgnoreEosOption = _setting(
    bool, "ignore_eos", "Keep generating past the end-of-text token.", "--ignore-eos/--stop-at-eos"
)
SeedOption = Annotated[
    int | None,
    typer.Option(help="Random seed; the same seed gives the same tokens in every mode.", show_default=False),
]
StopOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="TEXT",
        help="Stop once the text ends with this string; it is kept in the output. Repeatable.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ArchOption = Annotated[
    str | None,
    typer.Option(
        help="Use this architecture with seeded random weights instead of --model: gpt2 = GPT-2 124M "
        "(speed and numerics do not depend on the weight values).",
        show_default=False,
    ),
]
PromptArgument = Annotated[
    str | None,
    typer.Argument(
        help="Text to continue. Omit it or pass '-' to read stdin.", metavar="[PROMPT]", show_default=False
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML file of defaults (see configs/). Flags override it.",
        show_default=False,
        dir_okay=False,
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Do not print timings on stderr.")]


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


def _load(
    model: str | None, device: str | None, dtype: str, fallback: bool | None, arch: str | None = None
) -> Any:
    """Load a model (options left unset take the built-in defaults), or build `arch` with random
    weights; tell when the demo model stands in."""
    from gencli.loading import load_model, random_model

    if arch is not None:
        return random_model(arch, device or _DEFAULTS["device"], dtype)

    loaded = load_model(
        model or _DEFAULTS["model"],
        device or _DEFAULTS["device"],
        dtype,
        _DEFAULTS["fallback"] if fallback is None else fallback,
    )
    if loaded.fallback_reason:
        _notice(loaded.fallback_reason)
    return loaded


def _notice(message: str) -> None:
    sys.stderr.write(f"gencli: {message}\n")


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


def _settings(arguments: dict[str, Any]) -> Settings:
    """Settings from a command's arguments (its `locals()`): those named like a config key are
    flags, None where not given, so that the config file and the defaults fill them."""
    flags = {key: arguments.get(key) for key in KNOWN_KEYS}
    flags["stop"] = tuple(arguments["stop"]) if arguments.get("stop") else None
    return resolve_settings(arguments.get("config"), flags)


@app.command()
def generate(
    prompt: PromptArgument = None,
    mode: ModeOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    sample: SampleOption = None,
    temperature: TemperatureOption = None,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    repetition_penalty: RepetitionPenaltyOption = None,
    no_repeat_ngram_size: NoRepeatNgramOption = None,
    seed: SeedOption = None,
    stop: StopOption = None,
    ignore_eos: IgnoreEosOption = None,
    model: ModelOption = None,
    fallback: FallbackOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    config: ConfigOption = None,
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
) -> None:
    """Continue PROMPT with GPT-2, streaming the text to stdout and timings to stderr.

    Every mode produces the same tokens for the same options and --seed, greedy or sampled:
    the hand-written loops use Hugging Face's logits processors and the same sampling call
    as model.generate. With --sample, a run without --seed picks a random seed (shown in --json).
    """
    settings = _settings(locals())
    text = _read_prompt(prompt)
    check_prompt(text)

    from gencli import render
    from gencli.engines import ENGINES
    from gencli.generation import GenerationInterrupted, PromptCacheFile, generate_text

    if prompt_cache_ro and prompt_cache is None:
        raise GencliError("--prompt-cache-ro needs --prompt-cache FILE")
    cache_file = PromptCacheFile(prompt_cache, prompt_cache_ro) if prompt_cache else None
    console = render.stderr_console()
    loaded = _load(settings.model, settings.device, settings.dtype, settings.fallback)
    writer = None if as_json else render.TextWriter()
    inspection = "steps" if inspect_cache_steps else "ends" if inspect_cache else None
    exit_code = 0
    try:
        result = generate_text(
            loaded, text, settings.mode, settings.decoding, writer, inspection, cache_file, _notice
        )
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


ModesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--modes", metavar="MODE", help="Modes to run (repeatable).  [default: all]", show_default=False
    ),
]


def _modes(modes: list[str] | None) -> tuple[str, ...]:
    from gencli.config import MODES

    for mode in modes or []:
        if mode not in MODES:
            raise GencliError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return tuple(dict.fromkeys(modes)) if modes else MODES


@app.command()
def compare(
    prompt: PromptArgument = None,
    modes: ModesOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    sample: SampleOption = None,
    temperature: TemperatureOption = None,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    repetition_penalty: RepetitionPenaltyOption = None,
    no_repeat_ngram_size: NoRepeatNgramOption = None,
    seed: SeedOption = None,
    stop: StopOption = None,
    ignore_eos: IgnoreEosOption = None,
    model: ModelOption = None,
    arch: ArchOption = None,
    fallback: FallbackOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run every mode on PROMPT with the same options and check they choose the same tokens.

    Shows the completions and time per mode. Where modes disagree, shows the first differing
    position, the two competing tokens and their logit margin there: a margin near 0 is a
    near-tie that float rounding can flip, a large one is a bug. Exits 1 when modes disagree.
    """
    settings = _settings(locals())
    text = _read_prompt(prompt)
    check_prompt(text)
    from gencli import render
    from gencli.compare import compare_modes

    chosen = _modes(modes)
    loaded = _load(settings.model, settings.device, settings.dtype, settings.fallback, arch)
    comparison = compare_modes(loaded, text, settings.decoding, chosen)
    if as_json:
        render.print_json(comparison.to_dict())
    else:
        render.print_comparison(comparison, loaded.tokenizer, render.stdout_console())
    raise typer.Exit(0 if comparison.agree else 1)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise GencliError(f"--lengths takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise GencliError(f"--lengths must be positive integers, got {text!r}")
    return values


@app.command()
def bench(
    arch: ArchOption = None,
    model: ModelOption = None,
    fallback: FallbackOption = None,
    modes: ModesOption = None,
    lengths: Annotated[
        str, typer.Option(help="Total lengths (prompt + new tokens) for the sweep, comma-separated.")
    ] = "64,256,512,1024",
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length of the headline run.")] = 16,
    new_tokens: Annotated[int, typer.Option(help="New tokens in the headline run.")] = 128,
    sweep_new_tokens: Annotated[int, typer.Option(help="New tokens at each sweep length.")] = 16,
    repeats: Annotated[int, typer.Option(help="Measured runs per cell; medians are reported.")] = 3,
    warmup: Annotated[int, typer.Option(help="Unmeasured runs before each cell.")] = 1,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    compare_dtype: Annotated[
        Dtype | None,
        typer.Option(
            help="Also run the headline in this dtype, from the same weights, and report each "
            "mode's decode speed-up over --dtype.",
            metavar="DTYPE",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG of decode tokens/s against length per mode (needs matplotlib).", dir_okay=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Measure each mode: prefill, time to first token, decode tokens/s, p50/p95 per-token latency,
    peak memory, and memory bandwidth achieved against this machine's measured read bandwidth.

    A headline run (--prompt-tokens + --new-tokens) and a sweep over --lengths, where the no-cache
    loop slows down with length and the cached loops do not. Prompts are random token ids and
    generation ignores EOS, so every run decodes exactly as many tokens as asked.
    """
    from gencli import render
    from gencli.bench import run_bench

    chosen = _modes(modes)
    sweep = _int_list(lengths)
    if min(sweep) <= sweep_new_tokens:
        raise GencliError(f"every --lengths value must exceed --sweep-new-tokens ({sweep_new_tokens})")
    if min(repeats, prompt_tokens, new_tokens, sweep_new_tokens) < 1 or warmup < 0:
        raise GencliError(
            "--repeats, --prompt-tokens, --new-tokens and --sweep-new-tokens must be at least 1"
        )
    loaded = _load(model, device, dtype or _DEFAULTS["dtype"], fallback, arch)
    if max(sweep) > loaded.context_length or prompt_tokens + new_tokens > loaded.context_length:
        raise GencliError(f"lengths must fit the model's context of {loaded.context_length} tokens")
    other = None
    if compare_dtype is not None:
        from gencli.loading import resolve_dtype

        if resolve_dtype(compare_dtype, loaded.device) == loaded.dtype:
            raise GencliError(f"--compare-dtype {compare_dtype} is what --dtype runs already; pick another")
        other = _load(model, device, compare_dtype, fallback, arch)
    runs = len(chosen) * repeats * (len(sweep) + 1 + (other is not None))
    with render.progress(runs, "bench") as advance:
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
            other_dtype=other,
        )
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.print_bench(report, render.stdout_console())
    if plot is not None:
        render.save_bench_plot(report, str(plot))
        render.stderr_console().print(f"wrote {plot}")


def _finished_ids(output: Path) -> set[str]:
    """Ids with a result in `output`; the file is rewritten without the rest (errors are retried,
    and a last line cut short by an interruption is dropped)."""
    import json

    kept, ids = [], set()
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "error" not in record and record.get("id") is not None:
            kept.append(line)
            ids.add(str(record["id"]))
    output.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return ids


@app.command()
def batch(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="IN.jsonl",
            help="One JSON object a line: 'prompt', an optional 'id', and optional generation options "
            "(max_new_tokens, sample, temperature, top_k, top_p, repetition_penalty, seed, stop, "
            "ignore_eos). '-' reads stdin.",
            dir_okay=False,
            allow_dash=True,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write results here instead of stdout.", dir_okay=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts decoded together, left-padded.")] = 8,
    resume: Annotated[
        bool, typer.Option(help="Skip ids that already have a result in --output, and append the rest.")
    ] = False,
    max_new_tokens: MaxNewTokensOption = None,
    sample: SampleOption = None,
    temperature: TemperatureOption = None,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    repetition_penalty: RepetitionPenaltyOption = None,
    no_repeat_ngram_size: NoRepeatNgramOption = None,
    seed: SeedOption = None,
    stop: StopOption = None,
    ignore_eos: IgnoreEosOption = None,
    model: ModelOption = None,
    fallback: FallbackOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    config: ConfigOption = None,
) -> None:
    """Generate for every prompt of a JSONL file, in batches; write JSONL results in input order.

    Each result: id, text, token_ids, finish_reason. A bad line gets {"id", "line", "error"} and
    the others go on; the exit status is then 1. Options given here are defaults that each line
    may override. Greedy results equal generating each prompt alone; sampled batches draw from
    one random stream, so they differ from single runs with the same seed.
    """
    settings = _settings(locals())
    if batch_size < 1:
        raise GencliError(f"--batch-size must be at least 1, got {batch_size}")
    if resume and output is None:
        raise GencliError("--resume needs --output FILE, the results to resume from")
    try:
        lines = (sys.stdin.read() if str(input_path) == "-" else input_path.read_text("utf-8")).splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GencliError(f"cannot read {input_path}: {error}; check the path") from None
    skip = _finished_ids(output) if resume and output.exists() else set()

    from gencli import render
    from gencli.batch import run_batch

    loaded = _load(settings.model, settings.device, settings.dtype, settings.fallback)
    target = open(output, "a" if resume else "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    failures = 0
    try:
        with render.progress(sum(1 for line in lines if line.strip()), "prompts") as advance:
            for record in run_batch(loaded, lines, settings.decoding, batch_size, skip, advance):
                failures += "error" in record
                target.write(render.json_line(record))
                target.flush()
    finally:
        if output:
            target.close()
    if failures:
        _notice(f"{failures} line(s) failed; their error records say why")
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="Prompts to check with; several make the padded batch.", show_default=False),
    ] = None,
    model: ModelOption = None,
    arch: ArchOption = None,
    fallback: FallbackOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove the from-scratch attention and GPT-2 equal Hugging Face's, layer by layer, in float32.

    (a) one causal sequence; (b) a left-padded batch with its attention mask (padded positions
    skipped); (c) incremental decoding with a cache; (d) end-to-end logits and 32 greedy tokens.
    Exits 1 if any check fails.
    """
    from gencli import render
    from gencli.scratch.verify import verify

    for prompt in prompts or []:
        check_prompt(prompt)
    loaded = _load(model, device, "float32", fallback, arch)
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
    fallback: FallbackOption = None,
    device: DeviceOption = None,
) -> None:
    """Draw one head's attention weights as a heatmap: rows are tokens, columns what they attend to.

    The weights come from the from-scratch attention (verified equal to Hugging Face's). Long
    prompts show their last tokens, as many as fit the terminal; --png draws them all.
    """
    text = _read_prompt(prompt)
    check_prompt(text)
    from gencli import render
    from gencli.scratch.probe import attention_map

    loaded = _load(model, device, "float32", fallback)
    amap = attention_map(loaded, text, layer, head)
    render.print_attention_heatmap(amap, render.stdout_console())
    if png is not None:
        render.save_attention_png(amap, str(png))
        render.stderr_console().print(f"wrote {png}")


@app.command()
def models(as_json: JsonOption = False) -> None:
    """List the models gencli can run here: the bundled demo model and the local Hugging Face cache."""
    from gencli import render
    from gencli.catalog import list_models

    entries = list_models()
    if as_json:
        render.print_json([entry.to_dict() for entry in entries])
    else:
        render.print_models(entries, render.stdout_console())


def main() -> None:
    app(prog_name="gencli")
