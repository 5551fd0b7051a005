"""Option sets shared by several commands, declared once, and how their values become settings.

A command takes a set with `@with_options(MODEL, DECODING, ...)`: the set's parameters join the
command's signature (typer reads signatures), and the command receives their values as one
`flags` dict. Every flag that names a setting defaults to None, so that weaker sources (the
environment, config files, the checkpoint) fill what the command line leaves out.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from gencli.cli.edge import split_key_values
from gencli.errors import GencliError
from gencli.settings import (
    Device,
    Dtype,
    KernelName,
    Layer,
    Mode,
    Quantization,
    Settings,
    Speculation,
    check_prompt,
    check_values,
    default_value,
    gather_layers,
    help_text,
    preset_names,
    resolve,
    text_values,
)

if TYPE_CHECKING:
    from gencli.loading import LoadedModel

OptionSet = tuple[inspect.Parameter, ...]


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _help(key: str) -> str:
    value = default_value(key)
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{help_text(key)}  [default: {'none' if value in (None, ()) else shown}]"


def _parameter(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation
    )


def _setting(
    python_type: Any,
    key: str,
    *declarations: str,
    metavar: str | None = None,
    autocompletion: Callable[[], list[str]] | None = None,
) -> inspect.Parameter:
    """A flag for setting `key`: None when not given."""
    option = typer.Option(
        *(declarations or (flag_name(key),)),
        help=_help(key),
        show_default=False,
        metavar=metavar,
        autocompletion=autocompletion,
    )
    return _parameter(key, Annotated[python_type | None, option])


def _model_names() -> list[str]:
    from gencli.catalog import list_models

    return [entry.name for entry in list_models() if entry.runnable]


MODEL: OptionSet = (
    _setting(str, "model", "--model", "-m", autocompletion=_model_names),
    _setting(Device, "device"),
    _setting(bool, "fallback", "--fallback/--no-fallback"),
)
DTYPE: OptionSet = (
    _setting(Dtype, "dtype"),
    _setting(Quantization, "quantize"),
    _setting(KernelName, "kernels"),
)
MODE: OptionSet = (_setting(Mode, "mode"),)
SPECULATION: OptionSet = (
    _setting(Speculation, "speculate"),
    _setting(str, "draft_model", metavar="MODEL"),
    _setting(int, "speculative_tokens", metavar="K"),
)
DECODING: OptionSet = (
    _setting(int, "max_new_tokens", "--max-new-tokens", "-n"),
    _setting(bool, "sample", "--sample/--no-sample"),
    _setting(float, "temperature"),
    _setting(int, "top_k"),
    _setting(float, "top_p"),
    _setting(float, "repetition_penalty"),
    _setting(int, "no_repeat_ngram_size"),
    _setting(float, "frequency_penalty"),
    _setting(float, "presence_penalty"),
    _setting(int, "seed"),
    _setting(list[str], "stop", metavar="TEXT"),
    _setting(bool, "ignore_eos", "--ignore-eos/--stop-at-eos"),
    _setting(list[str], "choice", metavar="TEXT"),
    _setting(str, "regex", metavar="PATTERN"),
    _setting(str, "json_schema", metavar="FILE|JSON"),
    _setting(bool, "json_object", "--json-object"),
    _setting(str, "grammar", metavar="FILE|LARK"),
    *SPECULATION,
    _parameter(
        "option",
        Annotated[
            list[str] | None,
            typer.Option(
                "--option",
                "-o",
                metavar="KEY VALUE",
                help="Any other generation option gencli runs identically in every mode, e.g. "
                "-o min_p 0.05 (also: min_new_tokens, typical_p, epsilon_cutoff, eta_cutoff, "
                "suppress_tokens, logit_bias '{\"50256\": -100}', stop_token_ids 13,198, "
                "skip_special_tokens false). Repeatable.",
                show_default=False,
            ),
        ],
    ),
)
SOURCES: OptionSet = (
    _parameter(
        "config",
        Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="A TOML settings file (keys as in 'gencli config show'). Environment variables "
                "and flags override it.",
                show_default=False,
                dir_okay=False,
            ),
        ],
    ),
    _parameter(
        "preset",
        Annotated[
            str | None,
            typer.Option(
                "--preset",
                help=f"A settings file shipped with gencli: {', '.join(preset_names())}.",
                show_default=False,
                autocompletion=lambda: list(preset_names()),
            ),
        ],
    ),
)
LOG: OptionSet = (_setting(bool, "log", "--log/--no-log"),)
KEEP_ALIVE: OptionSet = (_setting(str, "keep_alive", "--keep-alive", metavar="DURATION"),)


def with_options(*sets: OptionSet) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the option sets to a command; it receives their values as `flags`."""
    added = [parameter for option_set in sets for parameter in option_set]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        # The command's own annotations, evaluated where it was written (they may be strings).
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            parameter.replace(annotation=hints[parameter.name])
            for parameter in signature.parameters.values()
            if parameter.name != "flags"
        ]

        @functools.wraps(command)
        def wrapper(**arguments: Any) -> Any:
            flags = {parameter.name: arguments.pop(parameter.name) for parameter in added}
            return command(**arguments, flags=flags)

        parameters = own + added
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return wrapper

    return decorate


def command_line_layers(flags: dict[str, Any]) -> list[Layer]:
    """Every settings layer of a run: files and environment (see `gather_layers`), then `-o`
    pairs and the flags themselves. A key set both by a flag and by `-o` is refused."""
    pairs = split_key_values(flags.get("option"))
    options = text_values(pairs, name=lambda key: f"-o {key}")
    given = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in flags.items()
        if key not in ("option", "config", "preset") and value is not None
    }
    for key in FILE_OR_TEXT & given.keys():
        given[key] = file_or_text(given[key], flag_name(key))
    for key in options.keys() & given.keys():
        raise GencliError(f"{flag_name(key)} and -o {key} both set {key!r}; give one of them")
    command_line = [
        Layer(options, lambda key: f"-o {key}"),
        Layer(check_values(given, name=flag_name), flag_name),
    ]
    return gather_layers(config=flags.get("config"), preset=flags.get("preset"), command_line=command_line)


# Flags that take a file's contents, or the text itself (a schema written inline).
FILE_OR_TEXT = {"json_schema", "grammar"}


def file_or_text(value: str, flag: str) -> str:
    """The contents of the file `value` names, or `value` itself when it names none."""
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else value
    except (OSError, UnicodeDecodeError) as problem:
        raise GencliError(f"cannot read {flag} {value}: {problem}; check the path") from None


def read_prompt(argument: str | None, file: Path | None) -> str:
    """The prompt from `-f FILE` or piped stdin, then PROMPT, joined by a newline.

    Piped text comes first and PROMPT after it, as in llm and ollama
    (`cat notes.txt | gencli generate "Summary:"`). PROMPT '-' means stdin alone."""
    parts = []
    if file is not None:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as problem:
            raise GencliError(f"cannot read the prompt file {file}: {problem}; check the -f path") from None
    elif sys.stdin is not None and not sys.stdin.isatty():
        parts.append(read_stdin())
    elif argument in (None, "-"):
        raise GencliError("no prompt given; pass PROMPT as an argument, -f FILE, or pipe text on stdin")
    if argument not in (None, "-"):
        parts.append(argument)
    # A trailing newline from `echo` or a file is not part of the prompt.
    return "\n".join(part.removesuffix("\n") for part in parts if part.strip())


def read_stdin() -> str:
    """All of stdin as UTF-8 text; anything else is refused in one line."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as problem:
        raise GencliError(
            f"stdin is not UTF-8 text (byte {data[problem.start]:#04x} at offset {problem.start}); "
            "gencli reads text, not binary data"
        ) from None


PromptArgument = Annotated[
    str | None,
    typer.Argument(
        help="Text to continue. Piped stdin (or -f FILE) comes first, then PROMPT, joined by a newline.",
        metavar="[PROMPT]",
        show_default=False,
    ),
]
PromptFileOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Read the prompt from this file.", dir_okay=False, show_default=False),
]
TopLogprobsOption = Annotated[
    int | None,
    typer.Option(
        help="Each new token's log-probability and the N most likely alternatives, under the "
        "processed scores it was chosen from (generate: in --json, or a table on stderr; batch: "
        "'logprobs' in each record).",
        min=1,
        max=20,
        metavar="N",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Do not print timings on stderr.")]
ArchOption = Annotated[
    str | None,
    typer.Option(
        help="Use this architecture with seeded random weights instead of --model: gpt2 = GPT-2 124M "
        "(speed and numerics do not depend on the weight values).",
        show_default=False,
    ),
]
ServerApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="GENCLI_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health (or GENCLI_API_KEY).",
        show_default=False,
        show_envvar=False,
    ),
]
ClientApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="GENCLI_API_KEY",
        help="The key the --server requires, sent as 'Authorization: Bearer KEY' (or GENCLI_API_KEY).",
        show_default=False,
        show_envvar=False,
    ),
]
# Layers and heads as `attention` and `explain` take them; check_index counts negatives from the end.
LayerOption = Annotated[
    int, typer.Option("--layer", "-l", help="Layer, from 0; negative counts from the end (-1 is the last).")
]
HeadOption = Annotated[
    int, typer.Option("--head", "-H", help="Attention head, from 0; negative counts from the end.")
]
ModesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--modes", metavar="MODE", help="Modes to run (repeatable).  [default: all]", show_default=False
    ),
]


def chosen_modes(modes: list[str] | None) -> tuple[str, ...]:
    from gencli.settings import MODES

    for mode in modes or []:
        if mode not in MODES:
            raise GencliError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return tuple(dict.fromkeys(modes)) if modes else MODES


def weights_settings(spec: str, flag: str) -> dict[str, str]:
    """WEIGHTS as `--compare` and `--against` take it (a dtype, int8, or DTYPE+int8) -> the
    settings it changes; dtype "auto" where it names none (the caller's dtype applies)."""
    dtype, _, quantize = spec.partition("+") if "+" in spec else ("", "", spec)
    if spec in get_args(Dtype):
        return {"dtype": spec, "quantize": "none"}
    if quantize in get_args(Quantization) and quantize != "none" and (not dtype or dtype in get_args(Dtype)):
        return {"dtype": dtype or "auto", "quantize": quantize}
    raise GencliError(f"{flag} takes a dtype, int8 or DTYPE+int8 (bfloat16+int8), got {spec!r}")


def load_other_weights(
    settings: Settings, spec: str, flag: str, step: Callable[[str], None], arch: str | None
) -> LoadedModel:
    """The model of `settings` again, with its weights stored as WEIGHTS says."""
    from gencli.cli.edge import load

    other = settings.model_copy(update=weights_settings(spec, flag))
    if other.dtype == "auto":
        other = other.model_copy(update={"dtype": settings.dtype})
    return load(other, step, arch)


TokenIdsOption = Annotated[
    bool,
    typer.Option(
        "--token-ids",
        help="The prompt is token ids separated by spaces (as tokenize --ids prints them), not text: "
        "a sequence exactly, where decoding and encoding it again could merge tokens otherwise.",
    ),
]


def inspection_inputs(
    prompt: str | None, file: Path | None, flags: dict[str, Any] | None, token_ids: bool = False
) -> tuple[Settings, str | list[int]]:
    """For the commands that look inside the model (attention, explain): the settings in float32,
    whose numbers they compare with Hugging Face's, and the prompt, checked: its text, or with
    `token_ids` the ids it lists."""

    settings = resolve(command_line_layers(flags)).settings.model_copy(update={"dtype": "float32"})
    text = read_prompt(prompt, file)
    check_prompt(text)
    if not token_ids:
        return settings, text
    words = text.split()
    bad = next((word for word in words if not word.isdigit()), None)
    if bad is not None:
        raise GencliError(f"--token-ids takes token ids (integers) separated by spaces, got {bad!r}")
    return settings, [int(word) for word in words]
