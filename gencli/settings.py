"""One settings schema, and the layers it is read from.

Every source of a setting goes through `Settings`, weakest first:

    built-in defaults < the checkpoint's generation_config.json < the user config file
    < --config FILE or --preset NAME < GENCLI_* environment variables < flags (and -o KEY VALUE)

A layer is a mapping of keys to values from one source. Typed sources (TOML files, JSONL lines,
flags) must give values of the right type; text sources (environment variables, `-o`, chat's
`/set`) are parsed. Errors carry the key and its requirement; the layer that read the value says
how the user wrote the key (`--top-p`, `'top_p' in FILE`, `GENCLI_TOP_P`).

Importing this module must stay cheap (no torch, no transformers): `gencli --help` imports it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gencli.errors import GencliError

Mode = Literal["generate", "greedy", "kv-cache", "scratch"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8"]
KernelName = Literal[
    "auto",
    "bmm-split",
    "linear",
    "linear-no-onednn",
    "linear-float16",
    "onednn-packed",
    "compiled",
    "int8pack",
]
Speculation = Literal["none", "ngram", "draft"]
MODES: tuple[str, ...] = get_args(Mode)
# The modes that keep a KV cache (greedy re-runs the whole sequence every step).
CACHED_MODES = ("generate", "kv-cache", "scratch")
ENV_PREFIX = "GENCLI_"


def _setting(default: Any, requirement: str, help: str, **constraints: Any) -> Any:
    """A field with its help text (for flags and `config show`) and the requirement an error quotes."""
    return Field(default, description=help, json_schema_extra={"requirement": requirement}, **constraints)


# Logits divided by less (a temperature, a repetition penalty) can leave float32's range: the
# sampling probabilities then turn into NaN. Below it, temperature 0 (greedy) is what is meant.
SMALLEST_DIVISOR = 1e-6


class DecodingOptions(BaseModel):
    """How the next token is chosen, when generation stops and how its text is written; identical
    for every mode."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_new_tokens: int = _setting(64, "must be an integer, at least 1", "Most tokens to generate.", ge=1)
    min_new_tokens: int = _setting(
        0, "must be an integer, 0 (off) or more", "Never end (EOS) before this many new tokens.", ge=0
    )
    sample: bool = _setting(False, "must be true or false", "Sample instead of taking the most likely token.")
    temperature: float = _setting(
        1.0,
        f"must be a number, 0 (greedy) or at least {SMALLEST_DIVISOR:g}",
        "Sampling temperature; 0 means greedy.",
        ge=0,
    )
    top_k: int = _setting(
        0, "must be an integer, 0 (off) or more", "Sample among the k most likely tokens; 0 is off.", ge=0
    )
    top_p: float = _setting(
        1.0,
        "must be a number in (0, 1]; 1 turns it off",
        "Sample among the most likely tokens whose probabilities sum to p; 1 is off.",
        gt=0,
        le=1,
    )
    min_p: float = _setting(
        0.0,
        "must be a number in [0, 1]; 0 turns it off",
        "Drop tokens less likely than min_p times the most likely one; 0 is off.",
        ge=0,
        le=1,
    )
    typical_p: float = _setting(
        1.0,
        "must be a number in (0, 1]; 1 turns it off",
        "Locally typical sampling: keep this mass of the most typical tokens; 1 is off.",
        gt=0,
        le=1,
    )
    epsilon_cutoff: float = _setting(
        0.0,
        "must be a number in [0, 1); 0 turns it off",
        "Drop tokens whose probability is below this; 0 is off.",
        ge=0,
        lt=1,
    )
    eta_cutoff: float = _setting(
        0.0,
        "must be a number in [0, 1); 0 turns it off",
        "Eta sampling: an entropy-dependent cutoff; 0 is off.",
        ge=0,
        lt=1,
    )
    repetition_penalty: float = _setting(
        1.0,
        f"must be a number, at least {SMALLEST_DIVISOR:g}; 1 turns it off",
        "Divide the logits of tokens already in the text by this; 1 is off. Applies with and "
        "without sampling.",
        ge=SMALLEST_DIVISOR,
    )
    no_repeat_ngram_size: int = _setting(
        0,
        "must be an integer, 0 (off) or more",
        "Never repeat a sequence of this many tokens; 0 is off.",
        ge=0,
    )
    frequency_penalty: float = _setting(
        0.0,
        "must be a number in [-2, 2]; 0 turns it off",
        "Subtract this times the number of times a token was generated so far from its logit "
        "(OpenAI's frequency_penalty; the prompt does not count); 0 is off.",
        ge=-2,
        le=2,
    )
    presence_penalty: float = _setting(
        0.0,
        "must be a number in [-2, 2]; 0 turns it off",
        "Subtract this from the logit of every token generated so far (OpenAI's presence_penalty; "
        "the prompt does not count); 0 is off.",
        ge=-2,
        le=2,
    )
    logit_bias: dict[int, float] = _setting(
        {},
        'must be a map of token ids to numbers in [-100, 100], e.g. {"50256": -100}',
        "Add a number to token ids' logits before any other processing (OpenAI's logit_bias); "
        "-100 all but bans a token.",
    )
    suppress_tokens: tuple[int, ...] = _setting(
        (), "must be a list of token ids (integers in [0, 2**63))", "Token ids never to generate."
    )
    seed: int | None = _setting(
        None,
        "must be an integer in [0, 2**64)",
        "Random seed; the same seed gives the same tokens in every mode.",
        ge=0,
        lt=2**64,
    )
    stop: tuple[str, ...] = _setting(
        (),
        "must be a string or a list of non-empty strings",
        "Stop once the text ends with this string; it is kept in the output.",
    )
    stop_token_ids: tuple[int, ...] = _setting(
        (),
        "must be a list of token ids (integers in [0, 2**63))",
        "Stop once one of these token ids is generated; it is kept in the output.",
    )
    ignore_eos: bool = _setting(False, "must be true or false", "Keep generating past the end-of-text token.")
    skip_special_tokens: bool = _setting(
        True,
        "must be true or false",
        "Leave special tokens (<|endoftext|>) out of the text; false writes them (the token ids are "
        "the same either way).",
    )
    # Structured output (gencli.constraints): at most one of these shapes the answer.
    choice: tuple[str, ...] = _setting(
        (),
        "must be a list of non-empty strings",
        "Answer with exactly one of these strings (--choice yes --choice no).",
    )
    regex: str | None = _setting(
        None, "must be a regular expression", "Answer with text this regular expression matches whole."
    )
    json_schema: str | None = _setting(
        None,
        "must be a JSON schema: a JSON object (text, a TOML table, or with --json-schema a file)",
        "Answer with one JSON document that this JSON schema validates (a file, or the JSON inline).",
    )
    json_object: bool = _setting(False, "must be true or false", "Answer with one JSON object.")
    grammar: str | None = _setting(
        None,
        "must be a Lark grammar (text, or with --grammar a file)",
        "Answer with text this Lark grammar derives (llguidance's dialect; a file, or the text).",
    )

    # Speculative decoding (gencli.speculative): how tokens are proposed; never what is chosen.
    speculate: Speculation = _setting(
        "none",
        f"must be one of {', '.join(get_args(Speculation))}",
        "Propose tokens and let the model verify several in one pass, keeping those it would "
        "choose itself (the same tokens, fewer passes). ngram: continue the latest earlier "
        "occurrence of the text's last words (prompt lookup); draft: a smaller model with the same "
        "tokenizer proposes (--draft-model); none is off.",
    )
    draft_model: str | None = _setting(
        None,
        "must be a Hugging Face hub id, a model folder or 'demo'",
        "The model that proposes tokens with --speculate draft: smaller than the model, with the "
        "same tokenizer (distilgpt2 for gpt2, say).",
        min_length=1,
    )
    speculative_tokens: int = _setting(
        4,
        "must be an integer, at least 1",
        "Tokens proposed per verification pass with --speculate.",
        ge=1,
    )

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, value: float) -> float:
        if 0 < value < SMALLEST_DIVISOR:
            raise ValueError(f"a temperature below {SMALLEST_DIVISOR:g} overflows the scores")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_more_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = (value,)
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) and item for item in value):
                raise ValueError("stop strings must be non-empty strings")
            return tuple(value)
        return value

    @field_validator("suppress_tokens", "stop_token_ids", mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        if isinstance(value, str):  # from text: "13, 198"
            try:
                value = [int(part) for part in value.replace(",", " ").split()]
            except ValueError:
                raise ValueError("token ids must be integers") from None
        if isinstance(value, list | tuple):
            if not all(_is_token_id(item) for item in value):
                raise ValueError("token ids must be integers in [0, 2**63)")
            return tuple(value)
        return value

    @field_validator("choice", mode="before")
    @classmethod
    def _choices(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = (value,)
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) and item for item in value):
                raise ValueError("choices must be non-empty strings")
            return tuple(value)
        return value

    @field_validator("regex", "grammar", mode="before")
    @classmethod
    def _some_text(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("empty")
        return value

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> Any:
        """A schema as compact JSON text, whether it came as text or as a table (TOML, JSONL)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("not JSON") from None
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False)
        if value is None:
            return value
        raise ValueError("not a JSON object")

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _biases(cls, value: Any) -> Any:
        """Token ids (JSON and TOML keys are strings) to numbers in [-100, 100], as OpenAI takes them."""
        if isinstance(value, str):  # from text: '{"50256": -100}'
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("logit_bias must be a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError("logit_bias must be a map of token ids to numbers")
        biases = {}
        for key, bias in value.items():
            token = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if not _is_token_id(token):
                raise ValueError(f"logit_bias key {key!r} is not a token id")
            if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
                raise ValueError(f"logit_bias value {bias!r} is not a number in [-100, 100]")
            biases[token] = float(bias)
        return biases

    def __hash__(self) -> int:  # options are grouped by (batch): logit_bias is a dict, so hash the values
        return hash(self.model_dump_json())

    @property
    def samples(self) -> bool:
        """Temperature 0 means greedy decoding, even with `sample`."""
        return self.sample and self.temperature > 0


def _is_token_id(item: Any) -> bool:
    # torch holds ids as int64: a larger one would fail in every mode, past validation.
    return isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**63


class Settings(DecodingOptions):
    """Everything a run is configured by: the decoding options, plus what to run them on."""

    model: str = _setting(
        "gpt2",
        "must be a Hugging Face hub id, a model folder or 'demo'",
        "Hugging Face hub id, local model folder, or 'demo' (bundled).",
        min_length=1,
    )
    mode: Mode = _setting(
        "kv-cache",
        f"must be one of {', '.join(MODES)}",
        "kv-cache (the default: the fastest, and it batches in serve): hand-written loop that feeds "
        "one token plus the cache. generate: Hugging Face model.generate. greedy: hand-written loop "
        "that re-runs the whole sequence every step (no cache). scratch: the from-scratch GPT-2 "
        "(gencli.scratch) with its own preallocated cache.",
    )
    device: Device = _setting("auto", f"must be one of {', '.join(get_args(Device))}", "Where to run.")
    dtype: Dtype = _setting(
        "auto",
        f"must be one of {', '.join(get_args(Dtype))}",
        "Weight dtype; auto is the checkpoint's own (as in Hugging Face), float32 when it names none.",
    )
    quantize: Quantization = _setting(
        "none",
        f"must be one of {', '.join(get_args(Quantization))}",
        "int8: every projection's weights stored as int8 with a scale per output channel "
        "(activations stay in dtype), a quarter of float32's bytes; none: as loaded.",
    )
    kernels: KernelName = _setting(
        "auto",
        f"must be one of {', '.join(get_args(KernelName))}",
        "The kernel of a decode step's one-row products. auto: the fastest measured on this machine "
        "(at a model's first load; kept in ~/.cache/gencli/kernels.json, `gencli bench` shows the "
        "table); a name forces it for every weight it runs, for comparisons.",
    )
    fallback: bool = _setting(
        True,
        "must be true or false",
        "When the hub model is neither cached nor reachable, use the bundled demo model (with a notice "
        "on stderr) instead of failing.",
    )
    log: bool = _setting(True, "must be true or false", "Append every run to the history (gencli logs).")
    keep_alive: str = _setting(
        "0",
        "must be a duration: seconds, or a number with s, m or h (300, 30s, 5m, 1h); 0 turns it off",
        "Keep the model loaded in a background gencli for this long after a call, and answer later "
        "calls with the same model and load settings through it (as ollama's keep_alive); 0 is off.",
    )

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = f"{value:g}"
        if isinstance(value, str) and duration_seconds(value) is None:
            raise ValueError("not a duration")
        return value

    @property
    def decoding(self) -> DecodingOptions:
        return DecodingOptions(**{key: getattr(self, key) for key in DECODING_KEYS})


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float | None:
    """`300`, `30s`, `5m`, `1.5h` in seconds; None for anything else."""
    number = text.strip().rstrip("smh")
    unit = text.strip()[len(number) :]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (ValueError, KeyError):
        return None
    return seconds if seconds >= 0 and seconds != float("inf") else None


DECODING_KEYS: tuple[str, ...] = tuple(DecodingOptions.model_fields)
SETTING_KEYS: tuple[str, ...] = tuple(Settings.model_fields)

# gencli's default preset: greedy decoding that does not loop. Without these two, small models
# (the bundled demo one especially) repeat a phrase within a few dozen tokens.
BUILT_IN_DEFAULTS: dict[str, Any] = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}


def requirement(key: str) -> str:
    return Settings.model_fields[key].json_schema_extra["requirement"]


def help_text(key: str) -> str:
    return Settings.model_fields[key].description or ""


def default_value(key: str) -> Any:
    return BUILT_IN_DEFAULTS.get(key, Settings.model_fields[key].default)


class SettingError(GencliError):
    """A value the schema refuses. `name` is how the user wrote the key (`--top-p`, `GENCLI_TOP_P`)."""

    def __init__(self, key: str, value: Any, name: str | None = None):
        self.key, self.value, self.name = key, value, name or repr(key)
        super().__init__(f"{self.name} {requirement(key)}, got {value!r}")


class UnknownSettingError(GencliError):
    def __init__(self, keys: Iterable[str], where: str, known: Iterable[str] = SETTING_KEYS):
        self.keys = sorted(keys)
        unknown = ", ".join(map(repr, self.keys))
        super().__init__(f"{where} has unknown key(s) {unknown}; known keys are: {', '.join(known)}")


def check_values(
    values: Mapping[str, Any], *, from_text: bool = False, name: Callable[[str], str] = repr
) -> dict[str, Any]:
    """`values` as the schema's types: typed values must already be of the key's type, text is parsed.

    Raises SettingError for the first refused key (named by `name`); keys must be known."""
    try:
        checked = Settings.model_validate(dict(values), strict=not from_text)
    except ValidationError as error:
        key = str(error.errors()[0]["loc"][0])
        raise SettingError(key, values.get(key), name(key)) from None
    return {key: getattr(checked, key) for key in values}


@dataclass(frozen=True)
class Layer:
    """The values one source sets; `describe(key)` says where a value came from, as the user wrote it."""

    values: dict[str, Any]
    describe: Callable[[str], str] = field(repr=False)


@dataclass(frozen=True)
class ResolvedSettings:
    settings: Settings
    origins: dict[str, str]  # key -> where its value came from ("default" when no layer set it)
    # Generation options the checkpoint sets that gencli cannot honour identically in every mode.
    ignored_checkpoint_keys: tuple[str, ...] = ()


def resolve(layers: Iterable[Layer] = (), checkpoint_folder: Path | None = None) -> ResolvedSettings:
    """Merge layers, weakest first, onto the built-in defaults; with `checkpoint_folder`, the
    checkpoint's generation_config.json comes right above the defaults, as in Hugging Face."""
    ignored: tuple[str, ...] = ()
    if checkpoint_folder is not None:
        checkpoint, ignored = checkpoint_layer(checkpoint_folder)
        layers = [checkpoint, *layers]
    values = {key: default_value(key) for key in SETTING_KEYS}
    origins = dict.fromkeys(SETTING_KEYS, "default")
    for layer in layers:
        values.update(layer.values)
        origins.update({key: layer.describe(key) for key in layer.values})
    return ResolvedSettings(Settings(**values), origins, ignored)


def gather_layers(
    *,
    config: Path | None = None,
    preset: str | None = None,
    command_line: Iterable[Layer] = (),
    environ: Mapping[str, str] | None = None,
) -> list[Layer]:
    """The layers above the checkpoint's, weakest first: the user config file (if there is one),
    --config FILE or --preset NAME, GENCLI_* variables, then the command line's own layers."""
    if config is not None and preset is not None:
        raise GencliError("--config and --preset both name a settings file; give one of them")
    layers = []
    user_file = user_config_path()
    if user_file.exists():
        layers.append(toml_layer(user_file, "user config"))
    if config is not None:
        layers.append(toml_layer(config, "--config"))
    if preset is not None:
        layers.append(toml_layer(preset_path(preset), f"--preset {preset}", f"preset {preset!r}"))
    return [*layers, env_layer(environ), *command_line]


# --- Sources -----------------------------------------------------------------------------------------


def user_config_path() -> Path:
    """The user's config file in the platform's config directory (honours XDG_CONFIG_HOME)."""
    from platformdirs import user_config_path as platform_config_dir

    return platform_config_dir("gencli") / "config.toml"


def user_data_dir() -> Path:
    """Where gencli keeps the run history (honours XDG_DATA_HOME)."""
    from platformdirs import user_data_path

    return user_data_path("gencli")


def user_cache_dir() -> Path:
    """Where gencli keeps what it measured on this machine (honours XDG_CACHE_HOME)."""
    from platformdirs import user_cache_path

    return user_cache_path("gencli")


def preset_names() -> tuple[str, ...]:
    folder = resources.files("gencli.presets")
    return tuple(
        sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml"))
    )


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise GencliError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
    return Path(str(resources.files("gencli.presets") / f"{name}.toml"))


def toml_layer(path: Path, source: str, describe: str | None = None) -> Layer:
    """A TOML file's keys; `source` names the file's role ('--config', 'user config', 'preset x')."""
    where = describe or f"{source} {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GencliError(f"{where} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GencliError(f"cannot read {where}: {error}; check the path") from None
    except tomllib.TOMLDecodeError as error:
        raise GencliError(f"{where} is not valid TOML ({error}); fix the syntax") from None
    unknown = set(data) - set(SETTING_KEYS)
    if unknown:
        raise UnknownSettingError(unknown, where)
    values = check_values(data, name=lambda key: f"{key!r} in {where}")
    return Layer(values, lambda key: where)


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """GENCLI_<KEY> variables, e.g. GENCLI_MAX_NEW_TOKENS=32; an unknown GENCLI_ name is refused."""
    environ = os.environ if environ is None else environ
    names = {ENV_PREFIX + key.upper(): key for key in SETTING_KEYS}
    given = {
        name: value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and name not in NON_SETTING_VARIABLES
    }
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise GencliError(
            f"unknown environment variable(s) {', '.join(unknown)}; gencli reads "
            f"{ENV_PREFIX}<KEY> for the keys: {', '.join(SETTING_KEYS)}"
        )
    values = check_values(
        {names[name]: parse_text(value) for name, value in given.items()}, from_text=True, name=env_name
    )
    return Layer(values, env_name)


def parse_text(value: str) -> Any:
    """A value given as text: a JSON string or list when it is written as one (so that
    `["\\n\\n", "END"]` gives two stop strings, newlines included), else the text itself."""
    if value[:1] in ('"', "["):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


# Variables read by one command's option, not settings: they never go in a config file.
NON_SETTING_VARIABLES = {"GENCLI_SERVER", "GENCLI_API_KEY"}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


# generation_config.json names that map onto gencli's keys.
_CHECKPOINT_KEYS = {
    "do_sample": "sample",
    **{key: key for key in DECODING_KEYS if key not in ("seed", "stop")},
}
# Keys of generation_config.json that are not decoding choices.
_CHECKPOINT_BOOKKEEPING = {
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict_in_generate",
}


def checkpoint_layer(model_folder: Path) -> tuple[Layer, tuple[str, ...]]:
    """The decoding options a checkpoint's generation_config.json sets, as Hugging Face's
    `generate` would take them, and the keys in it that gencli cannot honour in every mode.

    Only values the file sets take part; for the rest gencli's defaults hold (not Hugging Face's,
    whose top_k is 50)."""
    path = model_folder / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    taken = {_CHECKPOINT_KEYS[key]: value for key, value in data.items() if key in _CHECKPOINT_KEYS}
    ignored = tuple(sorted(set(data) - set(_CHECKPOINT_KEYS) - _CHECKPOINT_BOOKKEEPING))
    where = str(path)
    # HF writes null for options it resets; those set nothing.
    taken = {key: value for key, value in taken.items() if value is not None}
    values = check_values(taken, name=lambda key: f"{key!r} in {where}")
    return Layer(values, lambda key: where), ignored


def text_values(pairs: Iterable[tuple[str, str]], name: Callable[[str], str]) -> dict[str, Any]:
    """`-o KEY VALUE` pairs (or chat's `/set KEY VALUE`) as checked decoding options.

    Hugging Face's own name `do_sample` is accepted for `sample`. Other Hugging Face generation
    options are refused by name: gencli's hand-written loops could not honour them identically."""
    values: dict[str, str] = {}
    for key, value in pairs:
        key = "sample" if key == "do_sample" else key
        if key not in DECODING_KEYS:
            raise GencliError(_unsupported_option(key, name(key)))
        values[key] = parse_text(value)
    return check_values(values, from_text=True, name=name)


def _unsupported_option(key: str, written: str) -> str:
    known = ", ".join(DECODING_KEYS)
    if key in SETTING_KEYS:
        return f"{written}: {key!r} is not a generation option; use --{key.replace('_', '-')}"
    from transformers import GenerationConfig  # only on this error path: it is slow to import

    if hasattr(GenerationConfig(), key):
        return (
            f"{written}: {key!r} is a Hugging Face generation option that gencli's modes cannot all "
            f"honour identically; gencli takes: {known}"
        )
    return f"{written}: unknown generation option {key!r}; gencli takes: {known}"


def check_prompt(prompt: str) -> None:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as problem:  # bytes that were not UTF-8, carried in as surrogates
        raise GencliError(
            f"the prompt is not valid UTF-8 text (a byte that is not UTF-8 at character {problem.start}); "
            "gencli reads text, not binary data"
        ) from None
    if not prompt.strip():
        raise GencliError("the prompt is empty; pass PROMPT as an argument, -f FILE, or pipe text on stdin")
