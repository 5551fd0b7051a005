"""Settings: built-in defaults < TOML config file < command-line flags.

Pure data and validation; importing this module must stay cheap (no torch, no transformers),
because `gencli --help` imports it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from gencli.errors import GencliError

Mode = Literal["generate", "greedy", "kv-cache", "scratch"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MODES: tuple[str, ...] = get_args(Mode)
DEVICES: tuple[str, ...] = get_args(Device)
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True)
class DecodingOptions:
    """How the next token is chosen and when generation stops; identical for every mode."""

    max_new_tokens: int = 64
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def samples(self) -> bool:
        """Temperature 0 means greedy decoding, even with --sample."""
        return self.sample and self.temperature > 0


# The CLI's default preset: greedy decoding that does not loop. Without these two, small models
# (the bundled demo one especially) repeat a phrase within a few dozen tokens.
DEFAULT_DECODING = DecodingOptions(repetition_penalty=1.2, no_repeat_ngram_size=3)


@dataclass(frozen=True)
class Settings:
    model: str = "gpt2"
    mode: str = "generate"
    device: str = "auto"
    dtype: str = "auto"
    # Use the bundled demo model when the hub model is neither cached nor reachable.
    fallback: bool = True
    decoding: DecodingOptions = DEFAULT_DECODING

    def as_flat_dict(self) -> dict[str, Any]:
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "decoding"}
        flat.update(dataclasses.asdict(self.decoding))
        return flat


_DECODING_KEYS = {f.name for f in fields(DecodingOptions)}
# The type each config key must have in a TOML file (`None` means the key may be left out).
_KEY_TYPES: dict[str, type] = {
    "model": str,
    "mode": str,
    "device": str,
    "dtype": str,
    "fallback": bool,
    "max_new_tokens": int,
    "sample": bool,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "no_repeat_ngram_size": int,
    "seed": int,
    "stop": list,
    "ignore_eos": bool,
}
KNOWN_KEYS = tuple(_KEY_TYPES)


def check_type(key: str, value: Any, where: str) -> Any:
    """`value` as the type config key `key` takes; GencliError names `where` it came from."""
    expected = _KEY_TYPES[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise GencliError(f"{where}: '{key}' must be a string or a list of strings, got {value!r}")
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[expected]
        raise GencliError(f"{where}: '{key}' must be {kind}, got {value!r}")
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into flat settings, refusing unknown keys and wrong types."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GencliError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GencliError(f"cannot read config file {path}: {error}; check the --config path") from None
    except tomllib.TOMLDecodeError as error:
        raise GencliError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None
    unknown = sorted(set(data) - set(_KEY_TYPES))
    if unknown:
        raise GencliError(
            f"config file {path} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are: {', '.join(KNOWN_KEYS)}"
        )
    values = {key: check_type(key, value, f"config file {path}") for key, value in data.items()}
    validate(values, lambda key: f"'{key}' in {path}")
    return values


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate(values: Mapping[str, Any], name: Callable[[str], str] = flag_name) -> None:
    """Check value ranges; `name` turns a key into how the user wrote it (flag or config key)."""
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "max_new_tokens": (lambda v: v >= 1, "must be at least 1"),
        "temperature": (lambda v: v >= 0, "must be 0 (greedy) or more"),
        "top_k": (lambda v: v >= 0, "must be 0 (off) or more"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]; 1 turns it off"),
        "repetition_penalty": (lambda v: v > 0, "must be greater than 0; 1 turns it off"),
        "no_repeat_ngram_size": (lambda v: v >= 0, "must be 0 (off) or more"),
        "mode": (lambda v: v in MODES, f"must be one of {', '.join(MODES)}"),
        "device": (lambda v: v in DEVICES, f"must be one of {', '.join(DEVICES)}"),
        "dtype": (lambda v: v in DTYPES, f"must be one of {', '.join(DTYPES)}"),
        "stop": (lambda v: all(v), "must not be an empty string"),
    }
    for key, value in values.items():
        if key in rules and value is not None:
            is_valid, requirement = rules[key]
            if not is_valid(value):
                raise GencliError(f"{name(key)} {requirement}, got {value!r}")


def resolve_settings(config_path: Path | None, flags: Mapping[str, Any]) -> Settings:
    """Merge defaults < config file < flags; a flag left at None was not given."""
    merged = Settings().as_flat_dict()
    if config_path is not None:
        merged.update(load_config_file(config_path))
    given = {key: value for key, value in flags.items() if value is not None}
    validate(given)
    merged.update(given)
    decoding = DecodingOptions(**{key: merged.pop(key) for key in _DECODING_KEYS})
    return Settings(**merged, decoding=decoding)


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise GencliError("the prompt is empty; pass PROMPT as an argument or pipe text on stdin")
